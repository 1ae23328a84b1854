"""The forms our graphs take so that each runtime fuses them (issue 16).

TensorFlow: the MLP traces as MatMul + BiasAdd + erf GELU, which the oneDNN remapper
fuses into one ``_FusedMatMul`` (``GeluExact``) when ``TF_ENABLE_ONEDNN_OPTS`` is on;
inside ``mlp_as_convs()`` (the exporters) it traces as its 1x1 convs; both compute the
same function. onnxruntime: our ONNX export's GELU and norms become ``Gelu`` and
``InstanceNormalization`` kernels in onnxruntime's optimised graph, as the PyTorch
reference's do, and the pixels' normalisation folds into the stem. A change that
breaks a pattern fails here, not only in the benchmark. Training: the GELU's and MLN's
gradients, written out so that the backward pass keeps less, equal autodiff's and
TensorFlow's own GELU gradient.
"""

import collections
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras_poolformer as kp
from keras_poolformer import export
from keras_poolformer.layers import mlp_as_convs

DEPTHS, DIMS, SIZE = (1, 1, 2, 1), (8, 16, 16, 16), 32


@pytest.fixture(scope="module")
def tiny():
    return kp.PoolFormer(depths=DEPTHS, dims=DIMS, input_shape=(SIZE, SIZE, 3))


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 3)).astype(np.float32)


def test_mlp_as_matrix_products_computes_what_the_convs_do(tiny, pixels):
    import tensorflow as tf

    as_matmuls = tf.function(lambda x: tiny(x, training=False))
    as_convs = tf.function(lambda x: tiny(x, training=False))
    with mlp_as_convs():
        expected = as_convs(pixels).numpy()
    got = as_matmuls(pixels).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    ops = {op.type for op in as_matmuls.get_concrete_function(pixels).graph.get_operations()}
    assert "MatMul" in ops and "BiasAdd" in ops
    with mlp_as_convs():
        convs = as_convs.get_concrete_function(pixels).graph.get_operations()
    assert [op.type for op in convs].count("MatMul") == 1  # the head's Dense alone


_GRAPPLER = textwrap.dedent(
    """
    import collections, json, sys
    import tensorflow as tf
    import keras_poolformer as kp
    from tensorflow.core.protobuf import config_pb2
    from tensorflow.python.grappler import tf_optimizer

    depths, dims, size = json.loads(sys.argv[1])
    model = kp.PoolFormer(depths=depths, dims=dims, input_shape=(size, size, 3))
    function = tf.function(lambda x: model(x, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec([2, size, size, 3], tf.float32))
    graph_def = concrete.graph.as_graph_def()
    for node in graph_def.node:  # the remapper rewrites only nodes placed on a CPU
        node.device = "/job:localhost/replica:0/task:0/device:CPU:0"
    meta = tf.compat.v1.train.export_meta_graph(graph_def=graph_def, graph=concrete.graph)
    fetches = meta.collection_def["train_op"].node_list.value
    fetches.extend(t.name.split(":")[0] for t in concrete.outputs)
    optimised = tf_optimizer.OptimizeGraph(config_pb2.ConfigProto(), meta)
    nodes = list(optimised.node) + [n for f in optimised.library.function for n in f.node_def]
    kinds = collections.Counter(
        n.op + "+".join([""] + [s.decode() for s in n.attr["fused_ops"].list.s])
        for n in nodes
    )
    print(json.dumps(kinds))
    """
)


@pytest.mark.parametrize("onednn", ["1", "0"])
def test_onednn_fuses_each_mlp_gelu_into_its_matmul(onednn):
    """In a fresh process (the switch is read when TensorFlow loads)."""
    import json

    result = subprocess.run(
        [sys.executable, "-c", _GRAPPLER, json.dumps([DEPTHS, DIMS, SIZE])],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "TF_ENABLE_ONEDNN_OPTS": onednn},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    kinds = json.loads(result.stdout.strip().splitlines()[-1])
    fused = kinds.get("_FusedMatMul+BiasAdd+GeluExact", 0)
    if onednn == "1":
        assert fused == sum(DEPTHS), kinds
        assert "Erf" not in kinds, kinds
    else:  # without oneDNN TensorFlow has no fused GELU: the pattern is left alone
        assert fused == 0 and kinds.get("Erf") == sum(DEPTHS), kinds


def test_onnx_export_becomes_fused_kernels_in_onnxruntime(tiny, pixels, tmp_path):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    folded = export.fold(tiny)
    path = tmp_path / "tiny.onnx"
    export.export_onnx(folded, path)
    written = collections.Counter(node.op_type for node in onnx.load(path).graph.node)
    assert written["InstanceNormalization"] == 2 * sum(DEPTHS) + 1  # and the final norm
    assert written["Erf"] == sum(DEPTHS) and written["Div"] == sum(DEPTHS)
    assert not {"Reciprocal", "Sqrt"} & set(written)
    assert written["GlobalAveragePool"] == 1  # the head's pooling; no norm's means left
    graph = onnx.load(path).graph
    # The pixels' normalisation is folded: the input goes straight to the stem's
    # transpose, one per-channel addition, then the stem's conv.
    readers = [node for node in graph.node if "images" in node.input]
    assert [node.op_type for node in readers] == ["Transpose"], readers
    after = [node for node in graph.node if readers[0].output[0] in node.input]
    assert [node.op_type for node in after] == ["Add"]
    assert [n.op_type for n in graph.node if after[0].output[0] in n.input] == ["Conv"]
    read = {name for node in graph.node for name in node.input}
    assert all(i.name in read for i in graph.initializer)  # none left behind

    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    optimised = collections.Counter(
        node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node
    )
    assert optimised["Gelu"] == sum(DEPTHS) and optimised["Erf"] == 0, optimised
    logits = session.run(None, {"images": pixels})[0]
    np.testing.assert_allclose(logits, export.logits_model(tiny)(pixels).numpy(), atol=1e-4)


def _normalising_stem(group=1, shared_transpose=False):
    """A hand-made ONNX graph as tf2onnx writes our input: ``(x / 255 - mean) / std``
    channels-last (a scalar Mul, a Sub and a Div per channel), then a transpose and a
    zero-padded stride-4 conv."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    constants = {
        "inv255": np.array(1 / 255, np.float32),
        "mean": np.array([0.485, 0.456, 0.406], np.float32),
        "std": np.array([0.229, 0.224, 0.225], np.float32),
        "kernel": rng.normal(0, 0.1, (6, 3 // group, 7, 7)).astype(np.float32),
        "bias": rng.normal(0, 0.1, (6,)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Mul", ["images", "inv255"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["normed"]),
        helper.make_node("Transpose", ["normed"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "Conv", ["nchw", "kernel", "bias"], ["out"], strides=[4, 4], pads=[2, 2, 2, 2],
            kernel_shape=[7, 7], group=group,
        ),
    ]  # fmt: skip
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 6, 8, 8])]
    if shared_transpose:  # the transposed input is read twice: no fold
        nodes.append(helper.make_node("Relu", ["nchw"], ["also"]))
        outputs.append(helper.make_tensor_value_info("also", TensorProto.FLOAT, [None, 3, 32, 32]))
    graph = helper.make_graph(
        nodes,
        "stem",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [None, 32, 32, 3])],
        outputs,
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_input_normalisation_folds_into_the_stem_on_onnxruntime():
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    from keras_poolformer import onnx_passes

    def run(model, pixels):
        session = onnxruntime.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        return session.run(None, {"images": pixels})

    pixels = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    original = _normalising_stem()
    model = _normalising_stem()
    assert onnx_passes.fold_input_normalisation(model) == 1
    assert onnx_passes.drop_unused_initializers(model) == 3  # 1 / 255, mean, std
    onnx.checker.check_model(model)
    assert [node.op_type for node in model.graph.node] == ["Transpose", "Add", "Conv"]
    expected, folded = run(original, pixels)[0], run(model, pixels)[0]
    assert np.abs(expected).max() > 1.0  # the borders, where the padding matters, included
    np.testing.assert_allclose(folded, expected, rtol=1e-5, atol=1e-5)
    for untouched in (_normalising_stem(group=3), _normalising_stem(shared_transpose=True)):
        ops = [node.op_type for node in untouched.graph.node]
        assert onnx_passes.fold_input_normalisation(untouched) == 0
        assert [node.op_type for node in untouched.graph.node] == ops


def test_dropping_unused_constants_keeps_those_a_subgraph_reads():
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from keras_poolformer import onnx_passes

    def branch(name):  # reads the outer constant "c" by name, as If/Loop bodies may
        out = helper.make_tensor_value_info(name, TensorProto.FLOAT, [1])
        return helper.make_graph([helper.make_node("Identity", ["c"], [name])], name, [], [out])

    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch("t"), else_branch=branch("e"))],
        "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.ones(1, np.float32), n) for n in ("c", "unused")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert onnx_passes.drop_unused_initializers(model) == 1
    assert [i.name for i in model.graph.initializer] == ["c"]


# --- Training: the gradients written out ------------------------------------------------


def _gradient(fn, x, upstream):
    import tensorflow as tf

    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return y.numpy(), tape.gradient(y, x, output_gradients=tf.constant(upstream)).numpy()


def test_gelu_gradient_written_out_is_tensorflows():
    import tensorflow as tf

    from keras_poolformer import mixers

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(4, 3, 3, 64)) * 3).astype(np.float32)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    y, grad = _gradient(mixers.gelu_with_gradient, x, upstream)
    y_tf, grad_tf = _gradient(lambda t: tf.nn.gelu(t, approximate=False), x, upstream)
    np.testing.assert_allclose(y, mixers.activate(x, "gelu"), atol=0)  # forward unchanged
    np.testing.assert_allclose(y, y_tf, atol=1e-5)
    np.testing.assert_allclose(grad, grad_tf, atol=1e-5)


def test_norm_gradient_written_out_is_autodiffs():
    from keras_poolformer import norms

    rng = np.random.default_rng(1)
    x = (rng.normal(size=(3, 5, 5, 16)) * 4 + 2).astype(np.float32)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    y, grad = _gradient(lambda t: norms._normalise_with_gradient(t, 1e-5), x, upstream)
    y_auto, grad_auto = _gradient(lambda t: norms._normalise(t, 1e-5), x, upstream)
    np.testing.assert_array_equal(y, y_auto)
    np.testing.assert_allclose(grad, grad_auto, atol=1e-5)
    assert np.abs(grad).max() > 0.1  # not trivially zero


def test_training_step_gradients_equal_autodiffs(monkeypatch, pixels):
    """A whole PoolFormer's gradients in training (the written-out GELU and MLN
    gradients) against the same model's by autodiff, with norm weights away from 1."""
    import keras
    import tensorflow as tf

    from keras_poolformer import mixers, norms

    keras.utils.set_random_seed(0)
    model = kp.PoolFormer(
        depths=DEPTHS, dims=DIMS, input_shape=(SIZE, SIZE, 3), classifier_activation=None
    )
    rng = np.random.default_rng(2)
    for weight in model.weights:
        if weight.path.endswith(("gamma", "beta", "scale")):
            weight.assign(rng.normal(1.0, 0.5, weight.shape).astype(np.float32))
    labels = rng.integers(0, 1000, len(pixels))

    def gradients():
        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                loss = keras.losses.sparse_categorical_crossentropy(labels, logits, True)
            return logits, tape.gradient(loss, model.trainable_weights)

        logits, grads = step(pixels)
        return logits.numpy(), [g.numpy() for g in grads]

    calls = collections.Counter()

    def counted(name, fn):
        def wrapper(*args):
            calls[name] += 1
            return fn(*args)

        return wrapper

    monkeypatch.setattr(mixers, "gelu_with_gradient", counted("gelu", mixers.gelu_with_gradient))
    monkeypatch.setattr(
        norms, "_normalise_with_gradient", counted("norm", norms._normalise_with_gradient)
    )
    logits, grads = gradients()
    # training takes them: each block's GELU, its two norms and the final norm
    assert calls == {"gelu": sum(DEPTHS), "norm": 2 * sum(DEPTHS) + 1}
    monkeypatch.setattr(mixers, "gelu_with_gradient", lambda x: mixers.activate(x, "gelu"))
    monkeypatch.setattr(norms, "_normalise_with_gradient", norms._normalise)
    logits_auto, grads_auto = gradients()
    np.testing.assert_allclose(logits, logits_auto, atol=1e-5)
    largest = max(np.abs(g).max() for g in grads_auto)
    for weight, got, expected in zip(model.trainable_weights, grads, grads_auto, strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-4 * largest, err_msg=weight.path)
