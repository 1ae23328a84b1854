"""Rewrites of a tf2onnx graph into the forms onnxruntime runs fastest.

tf2onnx writes our exact GELU, our MetaFormer norm (MLN: one group over height, width
and channels) and the input normalisation op by op. onnxruntime's graph optimiser
fuses the first two into one kernel each, but only when they are spelled as PyTorch's
exporter spells them:

- GELU: ``x * 0.5 * (1 + erf(x / sqrt(2)))`` with a *division* by sqrt(2) and scalar
  constants; tf2onnx writes a multiplication by 1 / sqrt(2) and (1, 1, 1, 1) constants,
  which the fusion does not recognise. Rewritten, onnxruntime runs one ``Gelu`` kernel
  instead of five element-wise passes over the MLP's widest tensor.
- MLN: two means (over height and width, then channels) of ``x`` and of the squared
  deviation, ``Sqrt``, ``Reciprocal`` and two multiplications; rewritten as
  ``InstanceNormalization`` of ``x`` reshaped to ``(batch, 1, -1)`` (exactly the
  normalisation over all of a sample's values, which is what PyTorch's ``GroupNorm(1,
  C)`` exports to), and reshaped back.

The third needs no fusion, only algebra:

- The pixels' normalisation: ``(x / 255 - mean) / std``, three passes over the
  channels-last input, folds into the first convolution's kernel and one per-channel
  addition after the transpose to channels-first (the PyTorch export takes normalised
  pixels and has neither).

Each pass matches a pattern node by node, checks the constants' values, rewires, and
drops the nodes nothing reads any more; whatever does not match stays as it was. The
first two are exact; the third is exact algebra with float32 rounding aside. The
result is standard ONNX (opset 17, no vendor ops), so other runtimes still run it.
"""

import collections

import numpy as np

__all__ = [
    "drop_unused_initializers",
    "fold_input_normalisation",
    "for_onnxruntime",
    "fuse_gelu",
    "fuse_group_norm",
]


class _Graph:
    """Producers, consumers and scalar constants of a ``GraphProto``'s nodes."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self.graph = graph
        self.nodes = list(graph.node)
        self.constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.producer = {out: node for node in self.nodes for out in node.output}
        self.consumers = collections.defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                self.consumers[name].append(node)
        self.outputs = {o.name for o in graph.output}

    def made_by(self, name, op_type):
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def is_scalar(self, name, value, tolerance=1e-6):
        array = self.constants.get(name)
        if array is None or array.size != 1:
            return False
        return abs(float(array.ravel()[0]) - value) < tolerance

    def scalar_value(self, name):
        array = self.constants.get(name)
        return None if array is None or array.size != 1 else float(array.ravel()[0])

    def only_reader(self, name):
        """The one node that reads ``name``, or None (several, none, a graph output)."""
        readers = self.consumers.get(name, [])
        return readers[0] if len(readers) == 1 and name not in self.outputs else None

    def add_constant(self, name, array):
        from onnx import numpy_helper

        if name not in self.constants:
            self.graph.initializer.append(numpy_helper.from_array(array, name))
            self.constants[name] = array
        return name

    def set_constant(self, name, array):
        """Replaces the value of the initializer ``name``."""
        from onnx import numpy_helper

        initializer = next(i for i in self.graph.initializer if i.name == name)
        initializer.CopyFrom(numpy_helper.from_array(array, name))
        self.constants[name] = array

    def commit(self, removed=()):
        """Writes the node list back in its (still topological) order, less ``removed``."""
        gone = {id(node) for node in removed}
        kept = [node for node in self.nodes if id(node) not in gone]
        del self.graph.node[:]
        self.graph.node.extend(kept)


def _other(node, name):
    """The input of a two-input node that is not ``name``."""
    first, second = node.input
    return second if first == name else first


def fuse_gelu(model):
    """Spells every exact GELU as onnxruntime's ``GeluFusion`` expects. In place;
    returns how many it rewrote."""
    g = _Graph(model.graph)
    count = 0
    for erf in [node for node in g.nodes if node.op_type == "Erf"]:
        scale = g.made_by(erf.input[0], "Mul")
        add = g.only_reader(erf.output[0])
        if scale is None or add is None or add.op_type != "Add":
            continue
        constant = next((i for i in scale.input if g.is_scalar(i, 0.5**0.5)), None)
        if constant is None or not g.is_scalar(_other(add, erf.output[0]), 1.0):
            continue
        x = _other(scale, constant)
        product = g.only_reader(add.output[0])
        if product is None or product.op_type != "Mul":
            continue
        half = g.made_by(_other(product, add.output[0]), "Mul")
        if half is None or x not in half.input or not g.is_scalar(_other(half, x), 0.5):
            continue
        if g.only_reader(half.output[0]) is not product:
            continue
        if g.only_reader(scale.output[0]) is not erf:
            continue
        scale.op_type = "Div"
        del scale.input[:]
        scale.input.extend([x, g.add_constant("gelu_sqrt_two", np.array(2**0.5, np.float32))])
        del add.input[:]
        add.input.extend([erf.output[0], g.add_constant("gelu_one", np.array(1.0, np.float32))])
        del half.input[:]
        half.input.extend([x, g.add_constant("gelu_half", np.array(0.5, np.float32))])
        count += 1
    g.commit()
    return count


def _mean_of(g, name):
    """``x`` when ``name`` is tf2onnx's mean of ``x`` over all but the batch axis:
    ``ReduceMean(GlobalAveragePool(x), axes=[1], keepdims=1)``, maybe reshaped."""
    node = g.producer.get(name)
    chain = []
    if node is not None and node.op_type == "Reshape":
        chain.append(node)
        node = g.producer.get(node.input[0])
    if node is None or node.op_type != "ReduceMean" or len(node.input) != 1:
        return None, []
    attributes = {a.name: a for a in node.attribute}
    if "axes" not in attributes or list(attributes["axes"].ints) != [1]:
        return None, []
    if "keepdims" in attributes and attributes["keepdims"].i != 1:
        return None, []
    pool = g.made_by(node.input[0], "GlobalAveragePool")
    if pool is None:
        return None, []
    return pool.input[0], [pool, node, *chain]


def fuse_group_norm(model):
    """Rewrites every MLN (a normalisation over a sample's height, width and channels,
    without its affine, as tf2onnx writes it) as ``InstanceNormalization`` over the
    sample reshaped to one row. In place; returns how many it rewrote."""
    from onnx import helper

    g = _Graph(model.graph)
    removed, count = [], 0
    for product in [node for node in g.nodes if node.op_type == "Mul"]:
        if len(product.input) != 2:
            continue
        centred = next((g.made_by(i, "Sub") for i in product.input if g.made_by(i, "Sub")), None)
        inverse = next(
            (g.made_by(i, "Reciprocal") for i in product.input if g.made_by(i, "Reciprocal")), None
        )
        if centred is None or inverse is None:
            continue
        x, mean_nodes = _mean_of(g, centred.input[1])
        if x is None or x != centred.input[0]:
            continue
        root = g.made_by(inverse.input[0], "Sqrt")
        shifted = root and g.made_by(root.input[0], "Add")
        if shifted is None:
            continue
        variance_name = next((i for i in shifted.input if i not in g.constants), None)
        epsilon = g.scalar_value(_other(shifted, variance_name)) if variance_name else None
        squared_of, variance_nodes = _mean_of(g, variance_name)
        square = g.made_by(squared_of, "Mul") if squared_of else None
        if epsilon is None or square is None or list(square.input) != [centred.output[0]] * 2:
            continue
        inner = [*mean_nodes, centred, square, *variance_nodes, shifted, root, inverse]
        # Everything but the product must be read only inside the pattern.
        members = {id(node) for node in (*inner, product)}
        if any(
            out in g.outputs or any(id(r) not in members for r in g.consumers.get(out, []))
            for node in inner
            for out in node.output
        ):
            continue
        stem = product.output[0].replace(":", "_")
        one_row = g.add_constant("norm_one_row", np.array([0, 1, -1], np.int64))
        scale = g.add_constant("norm_scale", np.ones(1, np.float32))
        bias = g.add_constant("norm_bias", np.zeros(1, np.float32))
        new = [
            helper.make_node("Reshape", [x, one_row], [stem + "_rows"]),
            helper.make_node(
                "InstanceNormalization",
                [stem + "_rows", scale, bias],
                [stem + "_normed"],
                epsilon=epsilon,
            ),
            helper.make_node("Shape", [x], [stem + "_shape"]),
            helper.make_node("Reshape", [stem + "_normed", stem + "_shape"], [product.output[0]]),
        ]
        at = g.nodes.index(product)
        g.nodes[at : at + 1] = new
        removed += inner
        count += 1
    g.commit(removed)
    return count


def _per_channel_affine(g, node, x, channels):
    """``(scale, shift)`` when ``node`` computes ``x * scale + shift`` with one constant
    (a scalar or ``channels`` values) as its other input, else None."""
    if node.op_type not in ("Mul", "Div", "Add", "Sub") or len(node.input) != 2:
        return None
    other = _other(node, x)
    value = g.constants.get(other)
    if value is None or value.size not in (1, channels) or value.ndim > 1:
        return None
    value = np.broadcast_to(value.astype(np.float64).ravel(), (channels,))
    ones, zeros = np.ones(channels), np.zeros(channels)
    if node.op_type == "Mul":
        return value, zeros
    if node.op_type == "Add":
        return ones, value
    if node.op_type == "Div":
        return (1.0 / value, zeros) if other == node.input[1] else None
    return (ones, -value) if other == node.input[1] else (-ones, value)  # Sub


def fold_input_normalisation(model):
    """Folds the per-channel normalisation of the pixels into the first convolution.

    tf2onnx writes ``(x / 255 - mean) / std`` as three element-wise passes over the
    channels-last input (onnxruntime's broadcast over a last axis of 3 is its slow
    path: about 3% of S12's run at batch 32), then transposes to channels-first for
    the stem. With ``y = a * x + b`` per channel, ``a = 1 / (255 std)``,
    ``b = -mean / std``, and the stem's zero padding: ``conv_W(pad(y)) =
    conv_{W a}(pad(x + b / a))`` (a padded zero of ``x + b / a`` is a padded zero of
    ``y``, divided by ``a``). So the rewrite transposes the raw pixels, adds ``b / a``
    per channel (one pass, channels-first) and scales the kernel's input channels by
    ``a``: exact algebra, float32 rounding aside. In place; returns 1 when it folded.
    """
    from onnx import helper

    g = _Graph(model.graph)
    inputs = {i.name for i in model.graph.input} - set(g.constants)
    for conv in [node for node in g.nodes if node.op_type == "Conv"]:
        attributes = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        kernel = g.constants.get(conv.input[1]) if len(conv.input) > 1 else None
        transpose = g.made_by(conv.input[0], "Transpose")
        if kernel is None or attributes.get("group", 1) != 1 or transpose is None:
            continue
        if attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        perm = [list(a.ints) for a in transpose.attribute if a.name == "perm"]
        if perm != [[0, 3, 1, 2]]:
            continue
        if (
            g.only_reader(transpose.output[0]) is not conv
            or g.only_reader(conv.input[1]) is not conv
        ):
            continue
        channels = kernel.shape[1]
        scale, shift = np.ones(channels), np.zeros(channels)
        chain, name = [], transpose.input[0]
        while name not in inputs:
            node = g.producer.get(name)
            x = next((i for i in node.input if i not in g.constants), None) if node else None
            affine = _per_channel_affine(g, node, x, channels) if x else None
            if affine is None or g.only_reader(name) is not (chain[-1] if chain else transpose):
                break
            a, b = affine  # y = a * x + b, and the chain so far maps y to scale * y + shift
            scale, shift = scale * a, scale * b + shift
            chain.append(node)
            name = x
        if not chain or name not in inputs or not np.all(scale != 0):
            continue
        folded_kernel = kernel.astype(np.float64) * scale[None, :, None, None]
        g.set_constant(conv.input[1], folded_kernel.astype(kernel.dtype))
        del transpose.input[:]
        transpose.input.append(name)
        offset = (shift / scale).astype(np.float32).reshape(1, channels, 1, 1)
        shifted = transpose.output[0] + "_shifted"
        add = helper.make_node(
            "Add", [transpose.output[0], g.add_constant("input_shift", offset)], [shifted]
        )
        conv.input[0] = shifted
        g.nodes.insert(g.nodes.index(conv), add)
        g.commit(chain)
        return 1
    return 0


def drop_unused_initializers(model):
    """Removes the constants no node reads any more (the rewrites leave the old ones
    behind, which onnxruntime warns about at every load). In place; returns how many."""
    from onnx import AttributeProto

    def reads(graph):  # a subgraph (If, Loop, Scan) may read an outer constant by name
        for node in graph.node:
            yield from node.input
            for attribute in node.attribute:
                if attribute.type == AttributeProto.GRAPH:
                    yield from reads(attribute.g)
                elif attribute.type == AttributeProto.GRAPHS:
                    for subgraph in attribute.graphs:
                        yield from reads(subgraph)

    read = set(reads(model.graph))
    read |= {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    unused = [i for i in model.graph.initializer if i.name not in read]
    for initializer in unused:
        model.graph.initializer.remove(initializer)
    return len(unused)


def for_onnxruntime(model):
    """The three rewrites, then the constants they freed; returns ``{"gelu": n,
    "group_norm": m, "input_norm": k}``, how many of each."""
    counts = {
        "gelu": fuse_gelu(model),
        "group_norm": fuse_group_norm(model),
        "input_norm": fold_input_normalisation(model),
    }
    drop_unused_initializers(model)
    return counts
