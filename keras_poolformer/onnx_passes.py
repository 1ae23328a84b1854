"""Rewrites of a tf2onnx graph into the forms onnxruntime fuses, each exact.

tf2onnx writes our exact GELU and our MetaFormer norm (MLN: one group over height, width
and channels) op by op. onnxruntime's graph optimiser fuses the same functions into one
kernel each, but only when they are spelled as PyTorch's exporter spells them:

- GELU: ``x * 0.5 * (1 + erf(x / sqrt(2)))`` with a *division* by sqrt(2) and scalar
  constants; tf2onnx writes a multiplication by 1 / sqrt(2) and (1, 1, 1, 1) constants,
  which the fusion does not recognise. Rewritten, onnxruntime runs one ``Gelu`` kernel
  instead of five element-wise passes over the MLP's widest tensor.
- MLN: two means (over height and width, then channels) of ``x`` and of the squared
  deviation, ``Sqrt``, ``Reciprocal`` and two multiplications; rewritten as
  ``InstanceNormalization`` of ``x`` reshaped to ``(batch, 1, -1)`` (exactly the
  normalisation over all of a sample's values, which is what PyTorch's ``GroupNorm(1,
  C)`` exports to), and reshaped back.

Each pass matches a pattern node by node, checks the constants' values, rewires, and
drops the nodes nothing reads any more; whatever does not match stays as it was. The
result is standard ONNX (opset 17, no vendor ops), so other runtimes still run it.
"""

import collections

import numpy as np

__all__ = ["for_onnxruntime", "fuse_gelu", "fuse_group_norm"]


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


def for_onnxruntime(model):
    """Both rewrites; returns ``{"gelu": n, "group_norm": m}``, how many of each."""
    return {"gelu": fuse_gelu(model), "group_norm": fuse_group_norm(model)}
