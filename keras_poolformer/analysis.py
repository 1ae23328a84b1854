"""Counting what a model costs: parameters and multiply-accumulates (MACs).

MACs are read off the TensorFlow graph the model traces to, not worked out from
the architecture, so the count checks the model that actually runs: every
``Conv2D``, depthwise conv, matrix product and einsum in it, at a batch of one. Like
fvcore (which the paper's figures come from) it counts the multiply-accumulates of
these ops and leaves out element-wise work (norms, pooling, activations), which is
well under 1% of a PoolFormer's total.
"""

import math


def count_macs(model, image_size=None):
    """Multiply-accumulates of one forward pass of ``model`` on one image.

    Args:
        model: a Keras model with one image input, channels last.
        image_size: ``(height, width)`` to count at; needed when the model's
            input size is not fixed, otherwise the model's own.

    Returns:
        An ``int``.

    Example:
    >>> count_macs(keras_poolformer.PoolFormerS12(weights=None))  # about 1.8e9
    1812267008
    """
    import tensorflow as tf

    _, height, width, channels = model.inputs[0].shape
    if image_size is not None:
        height, width = image_size
    if height is None or width is None:
        raise ValueError(
            f"Model '{model.name}' takes images of any size; pass image_size=(height, width)."
        )
    spec = tf.TensorSpec((1, height, width, channels), model.inputs[0].dtype)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph

    total = 0
    for op in graph.get_operations():
        if op.type in ("Conv2D", "DepthwiseConv2dNative"):
            out = op.outputs[0].shape.as_list()
            kh, kw, cin, _ = op.inputs[1].shape.as_list()
            per_output = kh * kw * (cin if op.type == "Conv2D" else 1)
            total += math.prod(out[1:]) * per_output
        elif op.type in ("MatMul", "BatchMatMulV2", "BatchMatMulV3"):
            a = op.inputs[0].shape.as_list()
            transpose_a = op.get_attr("transpose_a" if op.type == "MatMul" else "adj_x")
            inner = a[-2] if transpose_a else a[-1]
            total += math.prod(op.outputs[0].shape.as_list()) * inner
        elif op.type == "Einsum":
            total += _einsum_macs(op)
    return total


def _einsum_macs(op):
    """An ``Einsum``'s multiply-accumulates: its outputs times the sizes of the indices
    summed over (RandFormer's ``mn,bnc->bmc`` token mixing)."""
    equation = op.get_attr("equation").decode().replace(" ", "")
    inputs, output = equation.split("->")
    sizes = {}
    for letters, tensor in zip(inputs.split(","), op.inputs, strict=True):
        for letter, size in zip(letters, tensor.shape.as_list(), strict=False):
            sizes[letter] = size
    summed = [sizes[letter] for letter in sizes if letter not in output]
    return math.prod(op.outputs[0].shape.as_list()) * math.prod(summed)


def baseline_params(config, classes=1000):
    """Parameters of the MetaFormer baseline ``config`` describes (a
    :class:`~keras_poolformer.registry.ModelSpec`'s ``config``), without building it:
    the sizes of its official-layout tensors (RandFormer's frozen matrices at 224
    included, as Keras' ``count_params`` and timm count them)."""
    from keras_poolformer.baselines.layout import official_shapes

    return sum(math.prod(shape) for shape in official_shapes(config, classes).values())


def baseline_macs(config, image_size=224, classes=1000):
    """Multiply-accumulates of the MetaFormer baseline ``config`` describes, on one
    ``image_size`` square image, worked out from the architecture: what
    :func:`count_macs` reads off the built model's graph (convolutions and matrix
    products: the stem, the downsamplings, SepConv's three maps, attention's
    projections and its two token-by-token products, the random mixers' token
    matrices, the MLPs and the head), without building it."""
    depths, dims = config["depths"], config["dims"]
    mixers = config["token_mixers"]
    mixers = [mixers] * 4 if isinstance(mixers, str) else list(mixers)
    ratio = config.get("mlp_ratio", 4.0)
    side = (image_size + 2 * 2 - 7) // 4 + 1  # the 7x7 stride-4 stem, padding 2
    total = side * side * dims[0] * 7 * 7 * 3
    for s, (depth, dim, mixer) in enumerate(zip(depths, dims, mixers, strict=True)):
        if s > 0:
            side = (side + 2 - 3) // 2 + 1  # 3x3 stride 2, padding 1
            total += side * side * dim * 9 * dims[s - 1]
        tokens = side * side
        per_block = 2 * tokens * dim * int(ratio * dim)  # the MLP
        if mixer == "sepconv":
            per_block += tokens * (2 * dim * dim + 2 * dim * 7 * 7 + 2 * dim * dim)
        elif mixer == "attention":
            per_block += tokens * 4 * dim * dim + 2 * tokens * tokens * dim
        elif mixer == "random":
            per_block += tokens * tokens * dim
        total += depth * per_block
    last = dims[-1]
    if config.get("head") == "mlp":
        total += last * 4 * last + 4 * last * classes
    else:
        total += last * classes
    return total
