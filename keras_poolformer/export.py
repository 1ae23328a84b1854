"""Deployment artifacts: a TF Serving SavedModel, TFLite flatbuffers and ONNX.

The SavedModel needs TensorFlow alone to serve (no ``keras_poolformer`` import):

- ``serving_default``: ``image_bytes`` (a batch of encoded JPEG/PNG/BMP/GIF images,
  grey, RGB or RGBA) -> ``probabilities`` (batch x classes), ``classes`` (top-5
  indices) and ``labels`` (top-5 names). The evaluation transform (bicubic resize of
  the shorter side to ``int(size / crop_pct)``, centre crop) runs in the graph. Each
  image's header is checked against :class:`~keras_poolformer.imagenet.ImageLimits`
  before it is decoded, and the images of a batch are decoded one at a time, so a
  request's memory stays bounded; a refused image fails its request with
  InvalidArgument.
- ``predict_pixels``: ``images`` (batch x size x size x 3, RGB 0..255) -> ``logits`` and
  ``probabilities``.
- ``assets.extra/tf_serving_warmup_requests``: one warm-up request per signature.

It is written in TF Serving's layout, ``DIR/<version>/``, under a temporary name that is
renamed when complete, readable by other users (folders 0755, files 0644 under umask
022, as ``cp`` makes them) so that a TF Serving process under another user can load it.
"""

import os
import shutil
import tempfile

import numpy as np

from keras_poolformer.imagenet import DEFAULT_IMAGE_LIMITS, decode_image, eval_transform
from keras_poolformer.imagenet import class_names as imagenet_class_names
from keras_poolformer.tflite_io import invoke_tflite

TOP_K = 5
QUANTIZATIONS = ("none", "fp16", "dynamic", "int8")


def fold(model):
    """An inference-optimised copy of ``model`` that computes the same function.

    Per block, by algebra that holds exactly:

    - norm1's affine commutes with ``pool(x) - x`` (the average of a constant is that
      constant when padding is left out, so its bias cancels; its per-channel weight
      passes through), and merges into LayerScale 1: ``s1 = ls1 * w1``;
    - norm2's affine merges into the first 1x1 conv: ``W1' = diag(w2) W1``,
      ``b1' = b1 + b2n W1``;
    - LayerScale 2 merges into the second 1x1 conv: ``W2' = W2 diag(ls2)``,
      ``b2' = ls2 * b2``.

    The folded blocks have no norm affines and no second LayerScale: three
    element-wise multiplications and two additions fewer per block.

    A MetaFormer baseline (PoolFormerV2 ... CAFormer) folds as well, each step exact
    algebra (float32 rounding aside):

    - norm1's weight goes into SepConv's ``pwconv1`` or attention's ``qkv`` (other
      mixers keep it), norm2's into ``fc1``;
    - the MLP's StarReLU ``s * relu(x) ** 2 + b`` goes into ``fc2``: kernel times
      ``s``, and ``b`` times the kernel's column sums as a new bias;
    - SepConv's StarReLU scale goes into the depthwise kernel (its bias, divided by
      the scale, stays an addition before it: a bias through a zero-padded depthwise
      conv is not a per-channel bias at the borders);
    - attention's ``qkv`` becomes three projections, the query's ``head_dim ** -0.5``
      in its kernel (no slicing of one ``qkv`` tensor);
    - each downsampling norm's weight goes into the conv after it, the final norm's
      weight and bias into the head's first linear map, the MLP head's norm's into
      its second;
    - every channel LayerNorm is written as ``c = x - mean(x)``,
      ``c * rsqrt(mean(c * c) + eps)``, which int8 TFLite keeps in XNNPACK
      (Keras' own form gives SQUARED_DIFFERENCE and a float NEG).

    The folded copy is for inference only (no drop path, no official-layout export).
    """
    import keras

    from keras_poolformer.baselines.layout import is_baseline
    from keras_poolformer.layers import PoolFormerBlock

    if is_baseline(model):
        return _fold_baseline(model)

    config = model.get_config()
    for layer_config in config["layers"]:
        if layer_config["class_name"].endswith("PoolFormerBlock"):
            layer_config["config"]["folded"] = True
    folded = keras.Model.from_config(config)
    for new in folded.layers:
        old = model.get_layer(new.name)
        if not isinstance(old, PoolFormerBlock):
            new.set_weights(old.get_weights())
            continue
        w1 = old.norm1.gamma.numpy()  # norm1's bias cancels in pool(x) - x
        w2, b2n = old.norm2.gamma.numpy(), old.norm2.beta.numpy()
        k1, c1 = old.mlp.fc1.kernel.numpy(), old.mlp.fc1.bias.numpy()
        k2, c2 = old.mlp.fc2.kernel.numpy(), old.mlp.fc2.bias.numpy()
        ls1, ls2 = old.layer_scale_1.scale.numpy(), old.layer_scale_2.scale.numpy()
        new.layer_scale_1.scale.assign(ls1 * w1)
        new.mlp.fc1.kernel.assign(k1 * w2[None, None, :, None])
        new.mlp.fc1.bias.assign(c1 + b2n @ k1[0, 0])
        new.mlp.fc2.kernel.assign(k2 * ls2[None, None, None, :])
        new.mlp.fc2.bias.assign(c2 * ls2)
    return folded


def logits_model(model):
    """``model`` up to its classifier's logits (before any softmax)."""
    import keras

    return keras.Model(model.input, model.get_layer("head").output, name=f"{model.name}_logits")


def _image_size(model):
    size = model.input_shape[1]
    if size is None or model.input_shape[2] != size:
        raise ValueError(
            f"export needs a model with a fixed square input; '{model.name}' takes "
            f"{model.input_shape[1:3]}. Build it with input_shape=(224, 224, 3)."
        )
    return size


def _names(model, class_names):
    classes = int(model.get_layer("head").output.shape[-1])  # a Dense or an MlpHead
    if class_names is None:
        if classes != 1000:
            raise ValueError(f"pass class_names for a model with {classes} classes.")
        class_names = [name for _, name in imagenet_class_names()]
    if len(class_names) != classes:
        raise ValueError(f"{len(class_names)} class names for a model with {classes} classes.")
    return list(class_names)


def serving_functions(model, class_names=None, crop_pct=0.9, image_limits=None):
    """The two serving ``tf.function``\\ s of a classifier (see the module docstring).

    ``image_limits``: the :class:`~keras_poolformer.imagenet.ImageLimits` of
    ``serving_default`` (``None``: the defaults).
    """
    import tensorflow as tf

    limits = DEFAULT_IMAGE_LIMITS if image_limits is None else image_limits

    size = _image_size(model)
    names = tf.constant(_names(model, class_names))
    logits_of = logits_model(model)
    top_k = min(TOP_K, len(_names(model, class_names)))

    def decode(data):
        return eval_transform(decode_image(data, limits), size, crop_pct)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_bytes(image_bytes):
        # One image at a time: a batch of large images never holds several decoded
        # images (and their resize buffers) at once.
        images = tf.map_fn(
            decode,
            image_bytes,
            fn_output_signature=tf.TensorSpec((size, size, 3), tf.float32),
            parallel_iterations=1,
        )
        probabilities = tf.nn.softmax(tf.cast(logits_of(images, training=False), tf.float32))
        top = tf.math.top_k(probabilities, top_k)
        return {
            "probabilities": probabilities,
            "classes": top.indices,
            "labels": tf.gather(names, top.indices),
        }

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="images")])
    def serve_pixels(images):
        logits = tf.cast(logits_of(images, training=False), tf.float32)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    return serve_bytes, serve_pixels


def _warmup_records(path, model_name, size):
    """Writes TF Serving's warm-up requests, one per signature, built with its protos."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    jpeg = tf.io.encode_jpeg(tf.cast(tf.fill((256, 320, 3), 128), tf.uint8)).numpy()
    requests = {
        "serving_default": {"image_bytes": tf.make_tensor_proto([jpeg])},
        "predict_pixels": {
            "images": tf.make_tensor_proto(np.full((1, size, size, 3), 128.0, np.float32))
        },
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests.items():
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
            )
            for key, proto in inputs.items():
                request.inputs[key].CopyFrom(proto)
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())


def export_saved_model(
    model,
    directory,
    version=1,
    class_names=None,
    crop_pct=0.9,
    model_name=None,
    image_limits=None,
):
    """Writes ``model`` as a TF Serving SavedModel at ``directory/<version>/``.

    Args:
        model: a classifier built by this package (fixed square input).
        directory: the model's base folder (TF Serving's ``--model_base_path``).
        version: the integer version folder.
        class_names: names for the ``labels`` output (ImageNet's for 1000 classes).
        crop_pct: the evaluation crop of the weights.
        model_name: the name in the warm-up requests (TF Serving's ``--model_name``).
        image_limits: the :class:`~keras_poolformer.imagenet.ImageLimits` that
            ``serving_default`` holds requests to (``None``: the defaults, 2**24
            pixels, 8192 a side, aspect ratio 20).

    Returns:
        The path of the version folder.
    """
    import keras

    if not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a positive integer, got {version!r}.")
    serve_bytes, serve_pixels = serving_functions(model, class_names, crop_pct, image_limits)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve_bytes)
    archive.add_endpoint("predict_pixels", serve_pixels)

    final = os.path.join(os.fspath(directory), str(version))
    os.makedirs(os.path.dirname(final), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{version}.", dir=os.path.dirname(final))
    try:
        archive.write_out(staging, verbose=False)
        records = os.path.join(staging, "assets.extra", "tf_serving_warmup_requests")
        _warmup_records(records, model_name or model.name, _image_size(model))
        _make_readable(staging)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)
    return final


def _make_readable(folder):
    """Gives ``folder`` and everything in it the modes ``cp`` would: ``0o777`` for
    folders and ``0o666`` for files, less the umask. ``tempfile.mkdtemp`` makes the
    folder 0700, which a server under another user cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for root, folders, names in os.walk(folder):
        for name in folders:
            os.chmod(os.path.join(root, name), 0o777 & ~umask)
        for name in names:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


# --- TFLite ------------------------------------------------------------------------------


def export_tflite(model, path, quantize="none", calibration_images=None):
    """Writes a TFLite flatbuffer of ``model``'s logits for one image of pixels (0..255).

    Args:
        quantize: ``"none"`` (float32), ``"fp16"`` (float16 weights),
            ``"dynamic"`` (int8 weights, float activations) or ``"int8"`` (full
            integer: uint8 pixels in, int8 logits out, calibrated on
            ``calibration_images``).
        calibration_images: float32 ``(n, size, size, 3)`` RGB 0..255, for int8.

    Export the folded model (:func:`fold`, as ``keras-poolformer export`` does by
    default) for speed, int8 above all: its pooling is a depthwise sum, which int8
    TFLite runs inside XNNPACK, where an int8 ``AVERAGE_POOL_2D`` is not (S12 int8:
    about 150 img/s folded on 2 cores, about 95 unfolded). The baselines gain too
    (2 threads, ms per image unfolded -> folded: CAFormer-S18 float32 47 -> 40, int8
    95 -> 63; ConvFormer-S18 float32 50 -> 51, int8 67 -> 41, on an AVX-512 host);
    :func:`ops_outside_xnnpack` lists what still leaves the delegate. Traced here, a
    folded ConvFormer's 7x7 depthwise convs are three dilated 3x7 ones
    (``baselines.deploy.depthwise_rows``: XNNPACK's one-pass kernels take at most 25
    taps), and an int8 file of a model with attention keeps attention's
    ``BATCH_MATMUL`` and ``SOFTMAX`` in float32 (:data:`INT8_FLOAT_OPS`). On an AVX2
    host: ConvFormer-S18 float32 90 -> 55 ms, int8 231 -> 62; CAFormer-S18 float32
    76 -> 55, int8 211 -> 63.

    Returns:
        The size of the file in bytes.
    """
    import tensorflow as tf

    from keras_poolformer import files

    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}.")
    if quantize == "int8" and (calibration_images is None or len(calibration_images) == 0):
        raise ValueError("int8 quantization needs calibration images.")
    import keras

    from keras_poolformer.baselines.deploy import depthwise_in_rows
    from keras_poolformer.layers import mlp_as_convs

    size = _image_size(model)
    logits_of = logits_model(model)
    # Converting through a SavedModel reads Keras 3's variables correctly; converting
    # the concrete function directly does not.
    archive = keras.export.ExportArchive()
    archive.track(logits_of)
    staging = tempfile.mkdtemp(prefix="keras_poolformer_tflite_")
    try:
        # Traced here: LiteRT's graph keeps its 1x1 convs, and a folded ConvFormer's
        # 7x7 depthwise convs are three dilated 3x7 ones, each in XNNPACK's fast path.
        with mlp_as_convs(), depthwise_in_rows():
            archive.add_endpoint(
                "logits",
                tf.function(
                    lambda images: logits_of(images, training=False),
                    input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32, name="images")],
                ),
            )
            archive.write_out(staging, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(staging, signature_keys=["logits"])
        float_ops = INT8_FLOAT_OPS if _has_attention(model) else ()
        flatbuffer = _convert(converter, quantize, calibration_images, float_ops)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    with files.atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(flatbuffer)
    return len(flatbuffer)


# Left in float32 in an int8 file: XNNPACK has no int8 kernel for attention's products
# of two activations nor its softmax, and TFLite's own run single-threaded. CAFormer-S18
# (LiteRT, 2 threads, AVX2): 112 ms all int8, 63 ms with these in float32, fp32 55 ms.
INT8_FLOAT_OPS = ("BATCH_MATMUL", "SOFTMAX")


def _has_attention(model):
    """Whether ``model`` holds a self-attention mixer (its scores are a BATCH_MATMUL)."""
    layers = model._flatten_layers(include_self=False, recursive=True)
    return any(type(layer).__name__ in ("Attention", "SplitAttention") for layer in layers)


def _convert(converter, quantize, calibration_images, float_ops=()):
    import tensorflow as tf

    if quantize == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize == "int8":
        images = np.asarray(calibration_images, np.float32)

        def representative():
            for image in images:
                yield [image[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.int8
        if float_ops:
            return _quantize_keeping_float(converter, float_ops)
    return converter.convert()


def _quantize_keeping_float(converter, float_ops):
    """The converter's full-integer quantization with the ops ``float_ops`` left in
    float32 (QUANTIZE and DEQUANTIZE around them): calibration alone first, then
    TensorFlow's MLIR quantizer with them denied (the route of TensorFlow's own
    ``QuantizationDebugger``), whose int8 input and output then take the converter's
    types as the converter itself sets them."""
    from tensorflow.lite.python import convert, util

    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    # Float32 input and output first (a QUANTIZE and a DEQUANTIZE at the ends), which
    # modify_model_io_type then turns into the converter's types.
    quantized = convert.mlir_quantize(
        calibrated, fully_quantize=False, denylisted_ops=list(float_ops)
    )
    return util.modify_model_io_type(
        quantized, converter.inference_input_type, converter.inference_output_type
    )


def run_tflite(path, images):
    """Logits of a TFLite file from :func:`export_tflite` on float32 images (0..255),
    run with the LiteRT interpreter one image at a time."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=os.fspath(path))
    interpreter.allocate_tensors()
    images = np.asarray(images, np.float32)
    return np.stack([invoke_tflite(interpreter, image[None])[0] for image in images])


# --- ONNX --------------------------------------------------------------------------------


def export_onnx(model, path, opset=17):
    """Writes an ONNX model of ``model``'s logits (input ``images``: batch x size x
    size x 3, RGB 0..255) through tf2onnx. Returns the file size in bytes.

    The graph is then respelled where onnxruntime fuses a function only in one
    spelling (:mod:`keras_poolformer.onnx_passes`: the exact GELU and the one-group
    norm, as PyTorch's exporter writes them), and the pixels' normalisation is folded
    into the stem's kernel; the file stays standard ONNX.
    """
    import onnx
    import tensorflow as tf
    import tf2onnx

    from keras_poolformer import files, onnx_passes
    from keras_poolformer.layers import mlp_as_convs

    size = _image_size(model)
    logits_of = logits_model(model)
    function = tf.function(lambda images: logits_of(images, training=False))
    signature = [tf.TensorSpec([None, size, size, 3], tf.float32, name="images")]
    with mlp_as_convs():  # traced here: 1x1 convs keep onnxruntime's layout
        proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=opset)
    onnx_passes.for_onnxruntime(proto)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    with files.atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return len(data)


def run_onnx(path, images):
    """Logits of an ONNX file from :func:`export_onnx`, run with onnxruntime on CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.asarray(images, np.float32)})[0]


# --- Folding the MetaFormer baselines ---------------------------------------------------


def _fold_baseline(model):
    """:func:`fold` for a MetaFormer baseline (see there)."""
    import keras

    from keras_poolformer.baselines import deploy
    from keras_poolformer.baselines.layers import BaselineBlock, MlpHead

    channel_norms = {"stem_norm", "norm"} | {f"downsample{s}_norm" for s in (1, 2, 3)}
    has_head = "head" in {layer.name for layer in model.layers}

    def clone(layer):
        if isinstance(layer, BaselineBlock):
            return deploy.FoldedBaselineBlock(
                layer.dim,
                layer.token_mixer_kind,
                layer.norm_kind,
                layer.mlp_ratio,
                layer.res_scale_1 is not None,
                layer.seed,
                name=layer.name,
            )
        if isinstance(layer, MlpHead):
            return deploy.FoldedMlpHead(
                layer.classes, layer.fc1.units, layer.epsilon, name=layer.name
            )
        if layer.name in channel_norms and isinstance(layer, keras.layers.LayerNormalization):
            # A downsampling norm's weight goes into the next conv; the final norm's
            # affine into the head's first linear map (when there is a head).
            keep = layer.name == "stem_norm" or (layer.name == "norm" and not has_head)
            return deploy.ChannelNorm(
                layer.epsilon,
                scale=keep,
                center=keep and layer.center,
                name=layer.name,
            )
        return layer.__class__.from_config(layer.get_config())

    folded = keras.models.clone_model(model, clone_function=clone)
    for new in folded.layers:
        old = model.get_layer(new.name)
        if isinstance(old, BaselineBlock):
            _fold_block(old, new)
        elif isinstance(new, deploy.ChannelNorm):
            if new.scale:
                new.gamma.assign(old.gamma)
            if new.center:
                new.beta.assign(old.beta)
        elif new.name.startswith("downsample") and isinstance(new, keras.layers.Conv2D):
            gamma = model.get_layer(f"{new.name}_norm").gamma.numpy()
            new.kernel.assign(old.kernel.numpy() * gamma[None, None, :, None])
            new.bias.assign(old.bias)
        elif new.name == "head":
            mlp = isinstance(old, MlpHead)
            first, last = (old.fc1, old.fc2) if mlp else (old, None)
            _fold_affine(model.get_layer("norm"), first, new.fc1 if mlp else new)
            if mlp:  # the head's own norm into fc2
                _fold_affine(old.norm, last, new.fc2)
        else:
            new.set_weights(old.get_weights())
    return folded


def _fold_affine(norm, dense, target):
    """``target`` (a Dense with bias) becomes ``dense`` after ``norm``'s affine:
    ``dense(gamma * x + beta) = x @ (diag(gamma) W) + (beta @ W + b)``."""
    kernel, bias = dense.kernel.numpy(), dense.bias.numpy()
    gamma = norm.gamma.numpy()
    beta = norm.beta.numpy() if norm.center else np.zeros_like(gamma)
    target.kernel.assign(gamma[:, None] * kernel)
    target.bias.assign(bias + beta @ kernel)


def _fold_block(old, new):
    g1 = old.norm1.gamma.numpy()
    g2 = old.norm2.gamma.numpy()
    mixer, kind = old.token_mixer, old.token_mixer_kind
    if kind == "sepconv":
        scale, bias = float(mixer.act.scale.numpy()[0]), float(mixer.act.bias.numpy()[0])
        if scale == 0.0:
            raise ValueError(f"{old.name}: SepConv's StarReLU scale is 0; it cannot be folded.")
        new.token_mixer.pwconv1.kernel.assign(g1[:, None] * mixer.pwconv1.kernel.numpy())
        new.token_mixer.act_bias.assign([bias / scale])
        new.token_mixer.dwconv.kernel.assign(scale * mixer.dwconv.kernel.numpy())
        new.token_mixer.pwconv2.kernel.assign(mixer.pwconv2.kernel)
    elif kind == "attention":
        dim, kernel = old.dim, g1[:, None] * mixer.qkv.kernel.numpy()
        new.token_mixer.q.kernel.assign(kernel[:, :dim] * mixer.head_dim**-0.5)
        new.token_mixer.k.kernel.assign(kernel[:, dim : 2 * dim])
        new.token_mixer.v.kernel.assign(kernel[:, 2 * dim :])
        new.token_mixer.proj.kernel.assign(mixer.proj.kernel)
    else:
        new.norm1.gamma.assign(g1)
        new.token_mixer.set_weights(mixer.get_weights())
    new.fc1.kernel.assign(g2[:, None] * old.mlp.fc1.kernel.numpy())
    scale, bias = old.mlp.act.scale.numpy()[0], old.mlp.act.bias.numpy()[0]
    kernel = old.mlp.fc2.kernel.numpy()
    new.fc2.kernel.assign(scale * kernel)
    new.fc2.bias.assign(bias * kernel.sum(axis=0))
    if old.res_scale_1 is not None:
        new.res_scale_1.scale.assign(old.res_scale_1.scale)
        new.res_scale_2.scale.assign(old.res_scale_2.scale)


def ops_outside_xnnpack(path):
    """``{op name: count}`` of the ops of a TFLite file that the LiteRT interpreter
    runs outside its default XNNPACK delegate (each one a hand-off out of the
    delegate and back, on TFLite's own single-threaded kernels).

    Read off the delegated graph: an op whose outputs leave a delegate partition was
    delegated; one whose outputs feed a partition, the graph's outputs or another
    op outside, was not."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=os.fspath(path))
    interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    delegated_outputs = {t for op in delegates for t in op["outputs"]}
    needed = {t for op in delegates for t in op["inputs"]}
    needed |= {t["index"] for t in interpreter.get_output_details()}
    if not delegates:  # nothing delegated: every op is outside
        return _count(op["op_name"] for op in ops)
    outside = []
    for op in reversed([op for op in ops if op["op_name"] != "DELEGATE"]):
        outputs = set(op["outputs"])
        if outputs & delegated_outputs or not outputs & needed:
            continue
        outside.append(op["op_name"])
        needed |= {t for t in op["inputs"] if t >= 0}
    return _count(outside)


def _count(names):
    counts = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))
