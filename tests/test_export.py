"""Deployment: the SavedModel in a fresh TensorFlow-only process, TFLite, ONNX, folding."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import imagenet_val_files, reference
from reference import reference_logits

import keras_poolformer as kp
from keras_poolformer import export
from keras_poolformer.tflite_io import invoke_tflite

pytest.importorskip("ai_edge_litert")
pytest.importorskip("onnxruntime")
pytest.importorskip("tensorflow_serving")


@pytest.fixture(scope="module")
def model():
    """S12 with the reference's random, non-trivial weights (every affine matters)."""
    _, state = reference("s12")
    model = kp.PoolFormerS12(weights=None, classifier_activation=None)
    kp.porting.load_state_dict(model, state)
    return model


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """Six real ImageNet JPEGs (skips without the shared data, fails in CI)."""
    return [path.read_bytes() for path, _ in imagenet_val_files(6)]


@pytest.fixture(scope="module")
def pixels(jpegs):
    """The same images through the library's evaluation transform (Pillow's pixels)."""
    decoded = [kp.decode_image(tf.constant(j)) for j in jpegs]
    return np.stack([kp.eval_transform(image, 224, 0.9).numpy() for image in decoded])


@pytest.fixture(scope="module")
def saved_model(model, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving") / "poolformer"
    return export.export_saved_model(export.fold(model), base, version=3, crop_pct=0.9)


def test_fold_computes_the_same_function(model, pixels):
    folded = export.fold(model)
    assert folded.count_params() < model.count_params()
    assert not any(w.name == "layer_scale_2" for w in folded.weights)
    np.testing.assert_allclose(folded(pixels).numpy(), model(pixels).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="folded for inference"):
        kp.porting.export_state_dict(folded)


def test_saved_model_serves_jpeg_bytes_in_a_process_without_keras_poolformer(
    saved_model, model, jpegs, pixels, tmp_path
):
    np.save(tmp_path / "jpegs.npy", np.array(jpegs, dtype=object), allow_pickle=True)
    script = f"""
import json, sys
import numpy as np
import tensorflow as tf
served = tf.saved_model.load({saved_model!r})
jpegs = list(np.load({str(tmp_path / "jpegs.npy")!r}, allow_pickle=True))
out = served.signatures["serving_default"](image_bytes=tf.constant(jpegs))
np.save({str(tmp_path / "probs.npy")!r}, out["probabilities"].numpy())
print(json.dumps({{
    "keras_poolformer": [m for m in sys.modules if m.startswith("keras_poolformer")],
    "labels": out["labels"].numpy()[0].astype(str).tolist(),
    "classes": out["classes"].numpy()[0].tolist(),
}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["keras_poolformer"] == []
    served = np.load(tmp_path / "probs.npy")
    expected = tf.nn.softmax(model(pixels)).numpy()
    assert np.abs(served - expected).max() <= 1e-4
    names = [name for _, name in kp.imagenet.class_names()]
    assert report["classes"] == list(np.argsort(-expected[0])[:5])
    assert report["labels"] == [names[i] for i in report["classes"]]


def test_saved_model_cli_lists_both_signatures(saved_model):
    cli = subprocess.run(
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--dir",
         saved_model, "--all"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-2000:]
    for expected in ("signature_def['serving_default']", "signature_def['predict_pixels']",
                     "image_bytes", "probabilities", "labels", "logits"):  # fmt: skip
        assert expected in cli.stdout
    assert saved_model.endswith("/3")  # TF Serving's DIR/<version>/ layout


def test_every_warmup_request_runs_through_its_signature(saved_model, model):
    """TF Serving replays these requests before it serves: each must run through its
    signature and give what the model itself gives on the same input (the JPEG
    decoded by the Python evaluation transform), so a warm-up exercises the real
    serving path, not a stand-in."""
    from tensorflow_serving.apis import prediction_log_pb2

    served = tf.saved_model.load(saved_model)
    names = [name for _, name in kp.imagenet.class_names()]
    records = f"{saved_model}/assets.extra/tf_serving_warmup_requests"
    signatures = []
    for record in tf.data.TFRecordDataset(records).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(record)
        request = log.predict_log.request
        signature = request.model_spec.signature_name
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        outputs = {k: v.numpy() for k, v in served.signatures[signature](**inputs).items()}
        if signature == "predict_pixels":
            images = inputs["images"].numpy()
        else:
            images = np.stack(
                [
                    kp.eval_transform(kp.decode_image(tf.constant(data)), 224, 0.9).numpy()
                    for data in inputs["image_bytes"].numpy()
                ]
            )
        logits = model(images).numpy()
        assert outputs["probabilities"].shape == (len(images), 1000) == logits.shape
        # Log-probabilities are the logits less a constant: the logits' 1e-4 bound.
        log_probabilities = tf.nn.log_softmax(logits).numpy()
        assert np.abs(np.log(outputs["probabilities"]) - log_probabilities).max() <= 1e-4
        if signature == "predict_pixels":
            assert np.abs(outputs["logits"] - logits).max() <= 1e-4
        else:
            top = np.argsort(-logits, axis=1)[:, :5]
            np.testing.assert_array_equal(outputs["classes"], top)
            assert outputs["labels"].astype(str).tolist() == [[names[i] for i in t] for t in top]
        signatures.append(signature)
    assert sorted(signatures) == ["predict_pixels", "serving_default"]


@pytest.mark.parametrize("bad", [b"", b"\xff\xd8\xff\xe0 truncated jpeg", b"not an image"])
def test_a_bad_image_fails_its_request_and_the_model_keeps_answering(saved_model, jpegs, bad):
    serve = tf.saved_model.load(saved_model).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError):
        serve(image_bytes=tf.constant([jpegs[0], bad]))
    assert serve(image_bytes=tf.constant(jpegs[:2]))["probabilities"].shape == (2, 1000)


def test_pixel_signature_gives_logits(saved_model, model, pixels):
    out = tf.saved_model.load(saved_model).signatures["predict_pixels"](images=tf.constant(pixels))
    assert np.abs(out["logits"].numpy() - model(pixels).numpy()).max() <= 1e-4


def test_tflite_fp32_and_onnx_match_keras(model, pixels, tmp_path):
    expected = model(pixels).numpy()
    export.export_tflite(export.fold(model), tmp_path / "s12.tflite")
    assert np.abs(export.run_tflite(tmp_path / "s12.tflite", pixels) - expected).max() <= 1e-4
    export.export_onnx(export.fold(model), tmp_path / "s12.onnx")
    assert np.abs(export.run_onnx(tmp_path / "s12.onnx", pixels) - expected).max() <= 1e-4


def cosines(a, b):
    """The cosine similarity of each row of ``a`` with the same row of ``b``."""
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def float_dtypes_of_ops(path):
    """``{(op, input float dtypes, output float dtypes)}`` of a TFLite file's ops."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    dtypes = {t["index"]: np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}

    def floats(indices):
        return tuple(sorted({dtypes[i].name for i in indices if i >= 0 and dtypes[i].kind == "f"}))

    return {
        (op["op_name"], floats(op["inputs"]), floats(op["outputs"]))
        for op in interpreter._get_ops_details()
        if op["op_name"] != "DELEGATE"
    }


def test_fp16_tflite_stores_weights_in_half_and_computes_in_float32(model, pixels, tmp_path):
    """fp16 TFLite rounds the stored constants to float16 and nothing else: it must agree
    with the float32 Keras model to a cosine of 0.9999 on every image (measured on S12
    with the reference's weights and the real images: 0.999999; int8 weights, the
    "dynamic" export, give 0.9998), in a file of two bytes per weight, and every op
    but the DEQUANTIZEs that widen the weights must compute in float32."""
    folded = export.fold(model)
    size = export.export_tflite(folded, tmp_path / "fp16.tflite", "fp16")
    quantized = export.run_tflite(tmp_path / "fp16.tflite", pixels)
    expected = model(pixels).numpy()
    agreement = cosines(quantized, expected)
    print(json.dumps({
        "quantize": "fp16", "size_mb": round(size / 1e6, 2),
        "min_cosine_vs_keras_fp32": round(float(agreement.min()), 7),
        "max_logit_difference": float(np.abs(quantized - expected).max()),
    }))  # fmt: skip
    assert expected.std() > 0.3  # non-trivial weights: the logits carry signal
    assert agreement.min() >= 0.9999
    np.testing.assert_array_equal(quantized.argmax(1), expected.argmax(1))
    assert 2 * folded.count_params() <= size <= 2 * folded.count_params() + 500_000
    # At run time too: XNNPACK (the default) gives what TFLite's float32 reference
    # kernels give (measured 2e-6); float16 arithmetic (Keras mixed_float16) moves
    # these logits by 3e-3.
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    plain = Interpreter(
        model_path=str(tmp_path / "fp16.tflite"),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    plain.allocate_tensors()
    float32_kernels = np.stack([invoke_tflite(plain, image[None])[0] for image in pixels[:2]])
    assert np.abs(quantized[:2] - float32_kernels).max() <= 1e-4
    ops = float_dtypes_of_ops(tmp_path / "fp16.tflite")
    assert ("DEQUANTIZE", ("float16",), ("float32",)) in ops
    for op in ops:
        if op[0] != "DEQUANTIZE":
            assert op[1:] in {(("float32",), ("float32",)), ((), ("float32",))}, op


@pytest.mark.parametrize("quantize", ["dynamic", "int8"])
def test_quantized_tflite_reports_its_agreement(model, pixels, tmp_path, quantize):
    folded = export.fold(model)
    export.export_tflite(folded, tmp_path / "fp32.tflite")
    fp32 = export.run_tflite(tmp_path / "fp32.tflite", pixels)
    size = export.export_tflite(folded, tmp_path / f"{quantize}.tflite", quantize, pixels)
    quantized = export.run_tflite(tmp_path / f"{quantize}.tflite", pixels)
    agreement = float(np.mean(quantized.argmax(1) == fp32.argmax(1)))
    report = {
        "quantize": quantize,
        "size_mb": round(size / 1e6, 2),
        "fp32_size_mb": round((tmp_path / "fp32.tflite").stat().st_size / 1e6, 2),
        "top1_agreement": agreement,
        "cosine": round(float(np.mean(cosines(quantized, fp32))), 6),
    }
    print(json.dumps(report))
    assert size < (tmp_path / "fp32.tflite").stat().st_size
    assert report["cosine"] > 0.95  # a sanity floor; the figures themselves are reported


# What XNNPACK runs in int8 (LiteRT 2.3). Everything else falls back to TFLite's own
# kernels, one thread, with a copy out of and back into the delegate around it.
XNNPACK_INT8 = {"QUANTIZE", "PAD", "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "SUB", "MUL"}
XNNPACK_INT8 |= {"MEAN", "FULLY_CONNECTED"}
# Left outside: one RSQRT per norm works on a single number per sample; GELU on int8 is
# a 256-entry table.
ALLOWED_OUTSIDE = {"RSQRT", "GELU"}


def test_int8_tflite_keeps_the_heavy_work_in_xnnpack(tmp_path):
    """The int8 speed (S12 31 -> ~150 img/s on 2 cores) rests on the graph's form:
    pooling as a depthwise sum, MLN's statistics as means over at most two axes
    and no SQUARED_DIFFERENCE. A change that brings back AVERAGE_POOL_2D, a
    three-axis MEAN or another fallback op fails here, not only in the benchmark."""
    from ai_edge_litert.interpreter import Interpreter

    tiny = kp.PoolFormer(depths=(1, 1, 1, 1), dims=(8, 16, 16, 16), input_shape=(64, 64, 3))
    calibration = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
    path = tmp_path / "tiny_int8.tflite"
    export.export_tflite(export.fold(tiny), path, "int8", calibration)
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
    kinds = {op["op_name"] for op in ops}
    assert kinds - XNNPACK_INT8 - ALLOWED_OUTSIDE == set()
    assert {"DEPTHWISE_CONV_2D", "MEAN", "CONV_2D"} <= kinds
    for op in ops:
        if op["op_name"] == "MEAN":
            axes = np.atleast_1d(interpreter.get_tensor(op["inputs"][1]))
            assert len(axes) <= 2, f"a MEAN over axes {axes.tolist()} runs outside XNNPACK"


def test_export_refuses_bad_arguments(model, tmp_path):
    with pytest.raises(ValueError, match="quantize must be one of"):
        export.export_tflite(model, tmp_path / "x.tflite", "int4")
    with pytest.raises(ValueError, match="calibration images"):
        export.export_tflite(model, tmp_path / "x.tflite", "int8")
    with pytest.raises(ValueError, match="version must be a positive integer"):
        export.export_saved_model(model, tmp_path, version=0)
    with pytest.raises(ValueError, match="fixed square input"):
        export.export_saved_model(
            kp.PoolFormerS12(weights=None, input_shape=(None, None, 3)), tmp_path
        )


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["s24", "s36", "m36", "m48"])
def test_other_variants_export_and_load(variant, tmp_path, pixels):
    """With the reference's non-trivial weights (layer scales about 0.1, where fresh
    ones of 1e-5 or 1e-6 make every block nearly the identity), the folded SavedModel
    gives the logits of the Keras model and of the independent PyTorch reference."""
    torch_model, state = reference(variant)
    model = kp.VARIANTS[variant](weights=None, classifier_activation=None)
    kp.porting.load_state_dict(model, state)
    crop = kp.MODEL_CONFIGS[variant]["crop_pct"]
    path = export.export_saved_model(export.fold(model), tmp_path / variant, crop_pct=crop)
    images = pixels[:2]
    out = tf.saved_model.load(path).signatures["predict_pixels"](images=tf.constant(images))
    served = out["logits"].numpy()
    theirs = reference_logits(torch_model, kp.preprocess_input(images, include_preprocessing=False))
    assert theirs.std() > 0.3  # every branch of every block contributes
    assert np.abs(served - model(images).numpy()).max() <= 1e-4
    assert np.abs(served - theirs).max() <= 1e-4
