"""Counting what a model costs: parameters and multiply-accumulates (MACs).

MACs are read off the TensorFlow graph the model traces to, not worked out from
the architecture, so the count checks the model that actually runs: every
``Conv2D``, depthwise conv and matrix product in it, at a batch of one. Like
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
    return total
