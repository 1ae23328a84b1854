"""Deployment of the MetaFormer baselines: folding, the SavedModel in a TensorFlow-only
process, TFLite (float32 and int8) and ONNX for CAFormer-S18 and ConvFormer-S18, and
Grad-CAM and the feature extractor on a baseline.

The S18 models carry the timm reference's seeded, non-trivial weights (res scales,
StarReLU scales and biases, norm weights all away from their start values), so a
folding or export step that dropped one would show in the logits. Each family is built,
folded and exported once per module (``artifacts``) and shared by the tests.
"""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import imagenet_val_files
from timm_reference import official_state_dict, reference_model

import keras_poolformer as kp
from keras_poolformer import export, registry
from keras_poolformer.baselines import MetaFormerBaseline, deploy, layout

pytest.importorskip("ai_edge_litert")
pytest.importorskip("onnxruntime")
pytest.importorskip("tensorflow_serving")

FAMILIES = ["caformer_s18", "convformer_s18"]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def jpegs():
    """Four real ImageNet JPEGs (skips without the shared data, fails in CI)."""
    return [path.read_bytes() for path, _ in imagenet_val_files(4)]


@pytest.fixture(scope="module")
def pixels(jpegs):
    """The same images through the library's evaluation transform (crop 1.0, as the
    baselines' checkpoints are evaluated)."""
    decoded = [kp.decode_image(tf.constant(j)) for j in jpegs]
    return np.stack([kp.eval_transform(image, 224, 1.0).numpy() for image in decoded])


@pytest.fixture(scope="module", params=FAMILIES)
def artifacts(request, pixels, tmp_path_factory):
    """One family's model with the reference's weights, its folded copy and its
    exports (SavedModel, TFLite float32, ONNX), all written from the folded model as
    ``keras-poolformer export`` writes them."""
    name = request.param
    spec = registry.get(name)
    state = official_state_dict(name, reference_model(name, seed=0, head_norm_eps=1e-5))
    model = getattr(kp, spec.constructor)(weights=None, classifier_activation=None)
    layout.load_state_dict(model, state)
    folded = export.fold(model)
    folder = tmp_path_factory.mktemp(name)
    saved_model = export.export_saved_model(folded, folder / "serving", crop_pct=1.0)
    export.export_tflite(folded, folder / "fp32.tflite")
    export.export_onnx(folded, folder / "model.onnx")
    return {
        "name": name,
        "model": model,
        "folded": folded,
        "logits": model(pixels).numpy(),
        "saved_model": saved_model,
        "folder": folder,
    }


def test_folding_computes_the_same_function(artifacts, pixels):
    logits, folded = artifacts["logits"], artifacts["folded"]
    assert logits.std() > 0.5  # non-trivial weights: the logits carry signal
    assert np.abs(folded(pixels).numpy() - logits).max() <= TOLERANCE
    assert folded.count_params() < artifacts["model"].count_params()
    kinds = {type(layer).__name__ for layer in folded.layers}
    assert "FoldedBaselineBlock" in kinds and "BaselineBlock" not in kinds
    # the original is untouched
    np.testing.assert_array_equal(artifacts["model"](pixels).numpy(), logits)


def test_saved_model_serves_in_a_process_without_keras_poolformer(artifacts, jpegs, tmp_path):
    np.save(tmp_path / "jpegs.npy", np.array(jpegs, dtype=object), allow_pickle=True)
    script = f"""
import json, sys
import keras
import numpy as np
import tensorflow as tf
served = tf.saved_model.load({artifacts["saved_model"]!r})
jpegs = list(np.load({str(tmp_path / "jpegs.npy")!r}, allow_pickle=True))
out = served.signatures["serving_default"](image_bytes=tf.constant(jpegs))
np.save({str(tmp_path / "probs.npy")!r}, out["probabilities"].numpy())
print(json.dumps({{
    "keras_poolformer": [m for m in sys.modules if m.startswith("keras_poolformer")],
    "classes": out["classes"].numpy()[:, 0].tolist(),
}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["keras_poolformer"] == []
    expected = tf.nn.softmax(artifacts["logits"]).numpy()
    assert np.abs(np.load(tmp_path / "probs.npy") - expected).max() <= TOLERANCE
    assert report["classes"] == expected.argmax(1).tolist()


def test_saved_model_pixel_signature_gives_the_keras_logits(artifacts, pixels):
    served = tf.saved_model.load(artifacts["saved_model"]).signatures["predict_pixels"]
    logits = served(images=tf.constant(pixels))["logits"].numpy()
    assert np.abs(logits - artifacts["logits"]).max() <= TOLERANCE


def test_tflite_fp32_and_onnx_match_keras(artifacts, pixels):
    expected = artifacts["logits"]
    tflite = export.run_tflite(artifacts["folder"] / "fp32.tflite", pixels)
    onnx = export.run_onnx(artifacts["folder"] / "model.onnx", pixels)
    print(json.dumps({
        "model": artifacts["name"],
        "tflite_fp32_max_diff": float(np.abs(tflite - expected).max()),
        "onnx_max_diff": float(np.abs(onnx - expected).max()),
    }))  # fmt: skip
    assert np.abs(tflite - expected).max() <= TOLERANCE
    assert np.abs(onnx - expected).max() <= TOLERANCE
    # float32 runs wholly inside XNNPACK (the unfolded attention's q/k/v slices did not)
    assert export.ops_outside_xnnpack(artifacts["folder"] / "fp32.tflite") == {}
    # and every depthwise kernel in XNNPACK's one-pass path (SepConv's 7x7s in rows)
    taps = depthwise_taps(artifacts["folder"] / "fp32.tflite")
    assert taps and max(taps) <= deploy.XNNPACK_DEPTHWISE_TAPS, taps
    if artifacts["name"] == "convformer_s18":  # 18 blocks, 3 dilated 3x7 convs each
        assert sorted(set(taps)) == [21] and len(taps) == 3 * 18


def depthwise_taps(path):
    """Kernel height x width of each DEPTHWISE_CONV_2D in a TFLite file."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    shapes = {t["index"]: t["shape"] for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    return [
        int(shapes[op["inputs"][1]][1] * shapes[op["inputs"][1]][2])
        for op in ops
        if op["op_name"] == "DEPTHWISE_CONV_2D"
    ]


@pytest.mark.parametrize("size", [3, 5, 7, 9])
def test_depthwise_in_rows_is_the_same_convolution(size):
    """LiteRT's form of a large depthwise kernel: dilated three-row convolutions whose
    sum is the one "same"-padded convolution (odd sizes; 3 and 5 stay as they are)."""
    rng = np.random.default_rng(size)
    x = rng.normal(size=(2, 13, 11, 6)).astype("float32")
    kernel = rng.normal(size=(size, size, 6, 1)).astype("float32")
    expected = keras.ops.depthwise_conv(x, kernel, padding="same")
    got = deploy.depthwise_rows(x, kernel)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=2e-5)
    with pytest.raises(ValueError, match="odd square kernel"):
        deploy.depthwise_rows(x, kernel[:, :-1])


# What stays outside XNNPACK in the folded int8 files (LiteRT 2.x): per LayerNorm the
# ADD of epsilon and the RSQRT, both on one number per token, and a SUB in some;
# the uint8 -> int8 QUANTIZE of the input. Attention's BATCH_MATMUL and SOFTMAX are
# left in float32 (export.INT8_FLOAT_OPS), where XNNPACK runs them; in int8 they ran
# outside it, single-threaded. (Unfolded, CAFormer-S18 also left out 42
# SQUARED_DIFFERENCEs, one per LayerNorm, and 36 STRIDED_SLICEs, attention's q/k/v.)
INT8_OUTSIDE = {"ADD", "RSQRT", "SUB", "QUANTIZE"}


INT8_FLOOR = {"caformer_s18": 0.95, "convformer_s18": 0.75}


def test_int8_tflite_reports_its_agreement_and_what_leaves_xnnpack(artifacts, pixels):
    path = artifacts["folder"] / "int8.tflite"
    size = export.export_tflite(artifacts["folded"], path, "int8", pixels)
    quantized = export.run_tflite(path, pixels)
    expected = artifacts["logits"]
    cosine = np.sum(quantized * expected, 1) / (
        np.linalg.norm(quantized, axis=1) * np.linalg.norm(expected, axis=1)
    )
    outside = export.ops_outside_xnnpack(path)
    print(json.dumps({
        "model": artifacts["name"],
        "size_mb": round(size / 1e6, 2),
        "top1_agreement": float(np.mean(quantized.argmax(1) == expected.argmax(1))),
        "min_cosine": round(float(cosine.min()), 4),
        "ops_outside_xnnpack": outside,
    }))  # fmt: skip
    # Sanity floors; the figures themselves are reported. Measured on these four images
    # (calibrated on the same): CAFormer-S18 top-1 agreement 3/4, cosines >= 0.979;
    # ConvFormer-S18 1/4, >= 0.82, folded or not: per-tensor int8 loses the squared
    # StarReLU activations before its 7x7 depthwise convs (a known limit, see INT8_FLOOR).
    assert cosine.min() > INT8_FLOOR[artifacts["name"]]
    assert set(outside) <= INT8_OUTSIDE, outside
    assert outside.get("RSQRT", 0) <= 42  # one per norm
    ops = _op_types(path)
    if artifacts["name"] == "caformer_s18":  # attention in float32, the rest int8
        assert ops["BATCH_MATMUL"] == 24 and ops["SOFTMAX"] == 12 and ops["DEQUANTIZE"] >= 12
    assert _io_types(path) == ("uint8", "int8")


def _op_types(path):
    from collections import Counter

    from ai_edge_litert.interpreter import Interpreter

    return Counter(op["op_name"] for op in Interpreter(model_path=str(path))._get_ops_details())


def _io_types(path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    return (
        interpreter.get_input_details()[0]["dtype"].__name__,
        interpreter.get_output_details()[0]["dtype"].__name__,
    )


def test_every_baseline_family_folds_exactly(tmp_path):
    """The mixers with no foldable first map (identity, random, pooling) keep norm1's
    weight; every family folds to the same function on a tiny, randomised model, and
    the folded model survives a `.keras` round trip (its layers are registered when
    keras_poolformer is imported)."""
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    for mixers, norm, head in [
        (("identity", "identity", "random", "random"), "mln", "linear"),
        ("pooling", "mln", "linear"),
        (("sepconv", "sepconv", "attention", "attention"), "channel", "mlp"),
    ]:
        model = tiny(mixers, norm, head, rng)
        expected = model(images).numpy()
        assert expected.std() > 0.1
        folded = export.fold(model)
        assert np.abs(folded(images).numpy() - expected).max() <= 1e-5
    # The last (CAFormer-like) folded model loads in a fresh process that only imports
    # keras_poolformer: the folded layers are registered on import, not by fold().
    path, inputs, outputs = tmp_path / "folded.keras", tmp_path / "in.npy", tmp_path / "out.npy"
    folded.save(path)
    np.save(inputs, images)
    code = (
        "import sys, keras, numpy as np, keras_poolformer; "
        "model = keras.models.load_model(sys.argv[1]); "
        "np.save(sys.argv[3], model(np.load(sys.argv[2])).numpy())"
    )
    subprocess.run([sys.executable, "-c", code, str(path), str(inputs), str(outputs)], check=True)
    np.testing.assert_allclose(np.load(outputs), folded(images).numpy(), atol=1e-6)


def tiny(mixers, norm="channel", head="mlp", rng=None, **kwargs):
    """A small baseline with every weight random and non-trivial."""
    model = MetaFormerBaseline(
        depths=(1, 1, 2, 1),
        dims=(32, 32, 64, 64),
        token_mixers=mixers,
        norm=norm,
        head=head,
        input_shape=(64, 64, 3),
        classes=10,
        classifier_activation=None,
        **kwargs,
    )
    rng = rng or np.random.default_rng(0)
    for weight in model.weights:
        shape = tuple(weight.shape)
        if "random_matrix" in weight.path or "matrix" in weight.path:
            continue
        if len(shape) >= 2:
            value = rng.normal(0, 1 / np.sqrt(np.prod(shape[:-1])), shape)
        elif weight.path.endswith(("gamma", "scale")):
            value = rng.uniform(0.8, 1.2, shape)
        else:
            value = rng.normal(0, 0.1, shape)
        weight.assign(value.astype(np.float32))
    return model


def test_feature_extractor_gives_the_four_stage_outputs_of_a_baseline():
    trunk = MetaFormerBaseline(
        depths=(1, 1, 2, 1),
        dims=(32, 32, 64, 64),
        token_mixers=("sepconv", "sepconv", "attention", "attention"),
        norm="channel",
        include_top=False,
        input_shape=(128, 96, 3),
    )
    features = kp.feature_extractor(trunk)
    assert [tuple(t.shape) for t in features.outputs] == [
        (None, 32, 24, 32),
        (None, 16, 12, 32),
        (None, 8, 6, 64),
        (None, 4, 3, 64),
    ]
    image = np.random.default_rng(0).uniform(0, 255, (1, 128, 96, 3)).astype(np.float32)
    np.testing.assert_allclose(features(image)[3].numpy(), trunk(image).numpy(), atol=1e-6)


def test_gradcam_on_caformer_is_the_gradient_weighted_feature_map():
    """``kp.gradcam`` on a (tiny, randomised) CAFormer with a softmax output equals
    Grad-CAM written out here with a GradientTape on the logits, at the default layer:
    the last stage's output (stride 32), within 1e-5."""
    mixers = ("sepconv", "sepconv", "attention", "attention")
    logits_model = tiny(mixers)
    with_softmax = keras.Model(
        logits_model.input,
        keras.layers.Activation("softmax", name="predictions")(logits_model.output),
    )
    images = np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    maps, classes = kp.gradcam(with_softmax, images)
    logits = logits_model(images).numpy()
    np.testing.assert_array_equal(classes, logits.argmax(1))

    last = logits_model.get_layer("stage3_block0").output
    probe = keras.Model(logits_model.input, [last, logits_model.output])
    for image, heatmap, top in zip(images, maps, classes, strict=True):
        with tf.GradientTape() as tape:
            features, scores = probe(tf.constant(image[None]))
            score = scores[0, top]
        gradients = tape.gradient(score, features)[0].numpy()
        features = features[0].numpy()
        cam = np.maximum(np.tensordot(features, gradients.mean(axis=(0, 1)), ([2], [0])), 0)
        centres = 32 * np.arange(cam.shape[0]) + 1  # cell i of a stride-32 map: pixel 32i+1
        tall = np.stack([np.interp(np.arange(64), centres, cam[:, j]) for j in range(2)], 1)
        full = np.stack([np.interp(np.arange(64), centres, row) for row in tall])
        expected = (full - full.min()) / (full.max() - full.min())
        assert expected.std() > 0.05
        assert np.abs(heatmap - expected).max() <= 1e-5
