"""The contenders: each is one loader, run inside the contender's own worker process,
that returns ``predict(images) -> logits`` (numpy in, numpy out), or
``step(images, labels)`` for a training contender.

A loader is registered with one decorator line; a phase takes its contenders by group
(:func:`registered`), in the order they are written here, and binds the options the
phase decides (the model, the device) as keyword arguments::

    @contender("inference", "our TFLite fp32, LiteRT")
    def tflite_fp32(settings, model=S12):
        return litert(settings, "tflite_fp32", model)

The groups: ``inference`` (S12), ``training`` (S12), ``families`` (each baseline
family's model), ``gpu`` and ``gpu_training`` (S12 in half precision, on a device).

Every contender gets the same numpy batch of RGB pixels 0..255 ``(batch, size, size,
3)``: moving data in and out and normalising the pixels are part of every timed call.
Nothing is imported at module level but numpy: a LiteRT worker must not load
TensorFlow, whose memory would count against it.
"""

import contextlib
import dataclasses
import importlib.util
import json
import os
import sys

import numpy as np

from metaformer_bench.settings import LEARNING_RATE, REPO, S12, SIZE, WEIGHT_DECAY


@dataclasses.dataclass(frozen=True)
class Contender:
    """One row of the benchmark: ``load(settings, **options)`` returns
    ``predict(images) -> logits``, or ``step(images, labels)`` for a training contender."""

    name: str
    label: str
    load: object
    training: bool = False
    precision: str = "fp32"
    size: int = SIZE
    options: dict = dataclasses.field(default_factory=dict)

    def bound(self, **options):
        """This contender with more keyword arguments for its loader."""
        return dataclasses.replace(self, options={**self.options, **options})


REGISTRY = {}  # group -> [Contender], in the order they were registered


def contender(group, label, name=None, training=False, precision="fp32"):
    """Registers the decorated loader in ``group`` under ``name`` (default: the
    function's name), and returns the loader unchanged.

    The loader must be a module-level function: the worker process finds it by name.
    """

    def register(load):
        entry = Contender(name or load.__name__, label, load, training, precision)
        members = REGISTRY.setdefault(group, [])
        if any(c.name == entry.name for c in members):
            raise ValueError(f"group {group!r} has a contender named {entry.name!r} already")
        members.append(entry)
        return load

    return register


def registered(group, names=None, **options):
    """The contenders of ``group`` (those in ``names`` if given), each with ``options``
    bound to its loader."""
    members = REGISTRY[group]
    if names is not None:
        unknown = set(names) - {c.name for c in members}
        if unknown:
            raise ValueError(f"no contenders {sorted(unknown)} in group {group!r}")
        members = [c for c in members if c.name in names]
    return [c.bound(**options) for c in members]


# --- The runtimes, configured as every worker is -----------------------------------------


def configured_tensorflow(settings, device="cpu"):
    """TensorFlow with the thread pools set, which must happen before it initialises.

    ``device="cpu"`` hides any GPU, so that the CPU phases compare CPU runtimes alone;
    ``"gpu"`` lets TensorFlow's memory grow as it needs instead of taking the whole GPU,
    which the torch contenders share.
    """
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(settings.threads)
    tf.config.threading.set_inter_op_parallelism_threads(settings.inter_op_threads)
    gpus = tf.config.list_physical_devices("GPU")
    if device == "cpu":
        tf.config.set_visible_devices([], "GPU")
    else:
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
    return tf


def configured_torch(settings):
    if not settings.spin:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # read when torch loads OpenMP
    import torch

    torch.set_num_threads(settings.threads)
    if torch.get_num_interop_threads() != settings.inter_op_threads:
        torch.set_num_interop_threads(settings.inter_op_threads)
    return torch


def keras_model(settings, model=S12, arch=None, size=SIZE, ported=True, **kwargs):
    """The Keras model ``model`` (a registry name or alias) with the prepared weights;
    ``arch`` (``depths``, ``dims``) builds a PoolFormer of that shape instead."""
    import keras_poolformer as kp

    weights = settings.artifact("weights", model) if ported else None
    if arch is not None:
        constructor = kp.PoolFormer
        kwargs = {**arch, **kwargs}
    else:
        constructor = getattr(kp, kp.registry.resolve(model).constructor)
    return constructor(weights=weights, input_shape=(size, size, 3), **kwargs)


def keras_predict(settings, model=S12, jit_compile=False, folded=False, size=SIZE, ported=True):
    """Our Keras model's logits through a ``tf.function`` (optionally XLA-compiled, or
    after ``export.fold``)."""
    tf = configured_tensorflow(settings)
    from keras_poolformer.export import fold, logits_model

    net = keras_model(settings, model, size=size, ported=ported)
    net = logits_model(fold(net) if folded else net)
    forward = tf.function(lambda images: net(images, training=False), jit_compile=jit_compile)
    return lambda images: forward(tf.convert_to_tensor(images)).numpy()


def litert_interpreter(path, threads, batch):
    """A LiteRT interpreter of the TFLite file ``path`` allocated for ``batch`` images,
    or ``None`` where the graph does not resize to it: ``export_tflite`` writes one image
    (``[1, size, size, 3]``), and a reshape that keeps that 1 (CAFormer's attention) makes
    XNNPACK refuse any other batch."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    (source,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(source["index"], [batch, *source["shape"][1:]])
    try:
        interpreter.allocate_tensors()
    except RuntimeError:
        return None
    return interpreter


def litert(settings, kind, model=S12):
    """Our TFLite file on the LiteRT interpreter, one interpreter resized per batch size;
    where the graph does not resize (:func:`litert_interpreter`), a batch is one call per
    image, as ``export.run_tflite`` runs it.

    Quantized inputs and outputs are handled by ``keras_poolformer.tflite_io`` (as in
    ``export.run_tflite``), inside the timed call. That module is loaded from its file:
    importing it through the package would import TensorFlow, and its memory would count
    against LiteRT.
    """
    path = REPO / "keras_poolformer" / "tflite_io.py"
    spec = importlib.util.spec_from_file_location("tflite_io", path)
    tflite_io = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tflite_io)

    interpreters = {}

    def interpreter_for(batch):
        if batch not in interpreters:
            path = settings.artifact(kind, model)
            interpreters[batch] = litert_interpreter(path, settings.threads, batch)
        return interpreters[batch]

    def predict(images):
        interpreter = interpreter_for(len(images))
        if interpreter is not None:
            return tflite_io.invoke_tflite(interpreter, images)
        single = interpreter_for(1)
        return np.concatenate(
            [tflite_io.invoke_tflite(single, images[i : i + 1]) for i in range(len(images))]
        )

    return predict


def onnxruntime_session(settings, kind, model=S12):
    """An ONNX file on onnxruntime's CPU provider."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if settings.spin else "0"
    )
    session = onnxruntime.InferenceSession(
        settings.artifact(kind, model), options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images})[0]


def pixels_module(model, mean, std):
    """A torch classifier behind our contract: NHWC RGB pixels 0..255 in, logits out.
    ``model`` takes normalised NCHW images (a transformers model or a timm one)."""
    import torch

    class Pixels(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

        def forward(self, images):
            x = images.permute(0, 3, 1, 2) / 255.0
            out = self.model((x - self.mean) / self.std)
            return getattr(out, "logits", out)  # transformers wraps its logits

    return Pixels()


def _reference_config(settings, model):
    with open(settings.artifact("normalisation", model)) as f:
        return json.load(f)


def transformers_reference(settings, model=S12):
    """The ported transformers PoolFormer, without importing TensorFlow."""
    from transformers import PoolFormerForImageClassification

    net = PoolFormerForImageClassification.from_pretrained(settings.artifact("reference", model))
    config = _reference_config(settings, model)
    return pixels_module(net, config["mean"], config["std"])


def timm_reference():
    """``tests/timm_reference.py``, which imports timm as the parity tests do (timm's few
    torchvision imports answered by ``tests/stand_ins`` when torchvision does not load)
    and builds the baselines by their timm names, checking their shapes."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.append(tests)  # last, so that nothing there shadows an installed module
    import timm_reference as reference

    return reference


def timm_module(model, head_norm_eps=None):
    """timm's model of the baseline ``model`` (``"caformer_s18"``), timm's own init;
    ``head_norm_eps`` sets the MLP head's LayerNorm epsilon (ours and the official code
    use 1e-5, timm's port 1e-6)."""
    reference = timm_reference()
    net = reference.build_model(model)
    if head_norm_eps is not None and reference.uses_mlp_head(model):
        net.head.fc.norm.eps = head_norm_eps
    return net


def timm_ported(settings, model):
    """timm's model holding our Keras weights (written by ``prepare``), as pixels in."""
    import torch

    config = _reference_config(settings, model)
    net = timm_module(model, config.get("head_norm_eps"))
    net.load_state_dict(torch.load(settings.artifact("timm_state", model)), strict=True)
    return pixels_module(net, config["mean"], config["std"])


def torch_eager(torch, module):
    module.eval()

    def predict(images):
        with torch.inference_mode():
            return module(torch.from_numpy(images)).numpy()

    return predict


def torch_train_step(torch, module, device="cpu", dtype=None):
    """One AdamW step with cross-entropy on ``module``; under ``torch.autocast(dtype)``
    when ``dtype`` is given, with loss scaling for float16."""
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    scaler = torch.amp.GradScaler(device) if dtype == torch.float16 else None

    def step(images, labels):
        optimizer.zero_grad(set_to_none=True)
        x, y = torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device)
        with torch.autocast(device, dtype=dtype) if dtype else contextlib.nullcontext():
            logits = module(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return loss.item()

    return step


def keras_train_step(settings, jit_compile=False, model=S12, arch=None, device="cpu", policy=None):
    """One Keras training step: ``compile`` (AdamW, cross-entropy) + ``train_on_batch``;
    ``policy`` is a Keras dtype policy (mixed precision scales the loss by itself)."""
    configured_tensorflow(settings, device)
    import keras

    if policy:
        keras.mixed_precision.set_global_policy(policy)
    net = keras_model(settings, model, arch, classifier_activation=None)
    net.compile(
        optimizer=keras.optimizers.AdamW(LEARNING_RATE, weight_decay=WEIGHT_DECAY),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return lambda images, labels: net.train_on_batch(images, labels)


# --- Inference on S12 (and on the baseline families, where a line says so) --------------


@contender("inference", "Keras, tf.function graph")
@contender("families", "Keras, tf.function graph")
def keras(settings, model=S12, size=SIZE, ported=True):
    return keras_predict(settings, model, size=size, ported=ported)


@contender("inference", "Keras, tf.function graph, folded")
def keras_folded(settings, model=S12):
    return keras_predict(settings, model, folded=True)


@contender("inference", "Keras, tf.function XLA")
def keras_xla(settings, model=S12):
    return keras_predict(settings, model, jit_compile=True)


@contender("inference", "our SavedModel (predict_pixels)")
@contender("families", "our SavedModel (predict_pixels)")
def saved_model(settings, model=S12):
    """The ``predict_pixels`` signature of our SavedModel, loaded by TensorFlow alone."""
    tf = configured_tensorflow(settings)
    loaded = tf.saved_model.load(settings.artifact("saved_model", model))
    signature = loaded.signatures["predict_pixels"]
    return lambda images: signature(images=tf.convert_to_tensor(images))["logits"].numpy()


def onednn_on():
    """Turns on TensorFlow's oneDNN graph rewrites in this worker (``TF_ENABLE_ONEDNN_OPTS
    =1``), as a user or a TF Serving deployment sets it. TensorFlow reads the switch
    once, when it loads, and turns it on by itself only on CPUs with AVX-512 VNNI or
    BF16, AVX-VNNI or AMX; on others (this machine's AVX2 among them) it stays off."""
    if "tensorflow" in sys.modules:
        raise RuntimeError("TensorFlow is loaded already: TF_ENABLE_ONEDNN_OPTS comes too late.")
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"


@contender("inference", "Keras, tf.function graph, oneDNN on")
@contender("families", "Keras, tf.function graph, oneDNN on")
def keras_onednn(settings, model=S12):
    onednn_on()
    return keras_predict(settings, model)


@contender("inference", "our SavedModel (predict_pixels), oneDNN on")
@contender("families", "our SavedModel (predict_pixels), oneDNN on")
def saved_model_onednn(settings, model=S12):
    onednn_on()
    return saved_model(settings, model)


@contender("inference", "our TFLite fp32, LiteRT")
@contender("families", "our TFLite fp32, LiteRT")
def tflite_fp32(settings, model=S12):
    return litert(settings, "tflite_fp32", model)


@contender("inference", "our TFLite int8, LiteRT", precision="int8")
@contender("families", "our TFLite int8, LiteRT", precision="int8")
def tflite_int8(settings, model=S12):
    return litert(settings, "tflite_int8", model)


@contender("inference", "our ONNX (tf2onnx), onnxruntime", name="onnx")
def our_onnx(settings, model=S12):
    return onnxruntime_session(settings, "onnx", model)


@contender("inference", "PyTorch reference, eager", name="torch")
def transformers_eager(settings, model=S12):
    """transformers' PoolFormer, eager, under ``torch.inference_mode()``."""
    torch = configured_torch(settings)
    return torch_eager(torch, transformers_reference(settings, model))


@contender("families", "timm, eager", name="torch")
def timm_eager(settings, model):
    """timm's model with our weights, eager, under ``torch.inference_mode()``."""
    torch = configured_torch(settings)
    return torch_eager(torch, timm_ported(settings, model))


@contender("inference", "PyTorch reference, ONNX, onnxruntime")
@contender("families", "timm, ONNX, onnxruntime")
def torch_onnx(settings, model=S12):
    return onnxruntime_session(settings, "reference_onnx", model)


# --- Training on S12 ----------------------------------------------------------------------


@contender("training", "Keras train step", training=True)
def keras_train(settings):
    return keras_train_step(settings)


@contender("training", "Keras train step, oneDNN on", training=True)
def keras_train_onednn(settings):
    onednn_on()
    return keras_train_step(settings)


@contender("training", "Keras train step, XLA", training=True)
def keras_train_xla(settings):
    return keras_train_step(settings, jit_compile=True)


@contender("training", "PyTorch reference train step, eager", training=True)
def torch_train(settings):
    torch = configured_torch(settings)
    return torch_train_step(torch, transformers_reference(settings))


# --- S12 in half precision on a device (the gpu phase) ------------------------------------
# Options: device ("gpu", or "cpu" to run this phase's code on a machine without one),
# model and arch (a smaller PoolFormer for tests). Half precision is float16 on a GPU
# and bfloat16 on a CPU, which has few float16 kernels (torch's CPU autocast is bf16).


def half_precision(device):
    return "float16" if device == "gpu" else "bfloat16"


def keras_on_device(settings, device, model, arch, policy, jit_compile=False):
    """Our Keras logits in a ``tf.function`` under the dtype policy ``policy``."""
    tf = configured_tensorflow(settings, device)
    import keras

    from keras_poolformer.export import logits_model

    keras.mixed_precision.set_global_policy(policy)
    net = logits_model(keras_model(settings, model, arch))
    forward = tf.function(lambda images: net(images, training=False), jit_compile=jit_compile)
    return lambda images: np.asarray(forward(tf.convert_to_tensor(images)), np.float32)


def torch_on_device(settings, device, model, compiled, training=False):
    """The transformers reference on ``device`` under ``torch.autocast`` (half
    precision), eager or through ``torch.compile``."""
    torch = configured_torch(settings)
    where = "cuda" if device == "gpu" else "cpu"
    dtype = getattr(torch, half_precision(device))
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    module = transformers_reference(settings, model).to(where).train(training)
    forward = torch.compile(module) if compiled else module
    if training:
        return torch_train_step(torch, forward, where, dtype)

    def predict(images):
        with torch.inference_mode(), torch.autocast(where, dtype=dtype):
            return forward(torch.from_numpy(images).to(where)).float().cpu().numpy()

    return predict


@contender("gpu", "Keras fp32, tf.function graph", name="keras")
def keras_fp32_on_device(settings, device, model=S12, arch=None):
    return keras_on_device(settings, device, model, arch, "float32")


@contender("gpu", "Keras mixed precision, tf.function graph", precision="half")
def keras_mixed(settings, device, model=S12, arch=None):
    policy = f"mixed_{half_precision(device)}"
    return keras_on_device(settings, device, model, arch, policy)


@contender("gpu", "Keras mixed precision, tf.function XLA", precision="half")
def keras_mixed_xla(settings, device, model=S12, arch=None):
    policy = f"mixed_{half_precision(device)}"
    return keras_on_device(settings, device, model, arch, policy, jit_compile=True)


@contender("gpu", "PyTorch reference, autocast, eager", precision="half")
def torch_autocast(settings, device, model=S12, arch=None):
    return torch_on_device(settings, device, model, compiled=False)


@contender("gpu", "PyTorch reference, autocast, torch.compile", precision="half")
def torch_autocast_compiled(settings, device, model=S12, arch=None):
    return torch_on_device(settings, device, model, compiled=True)


@contender("gpu_training", "Keras mixed precision train step", training=True, precision="half")
def keras_mixed_train(settings, device, model=S12, arch=None):
    policy = f"mixed_{half_precision(device)}"
    return keras_train_step(settings, False, model, arch, device, policy)


@contender("gpu_training", "Keras mixed precision train step, XLA", training=True, precision="half")
def keras_mixed_train_xla(settings, device, model=S12, arch=None):
    policy = f"mixed_{half_precision(device)}"
    return keras_train_step(settings, True, model, arch, device, policy)


@contender(
    "gpu_training", "PyTorch reference train step, autocast", training=True, precision="half"
)
def torch_autocast_train(settings, device, model=S12, arch=None):
    return torch_on_device(settings, device, model, compiled=False, training=True)


@contender(
    "gpu_training",
    "PyTorch reference train step, autocast, torch.compile",
    training=True,
    precision="half",
)
def torch_autocast_train_compiled(settings, device, model=S12, arch=None):
    return torch_on_device(settings, device, model, compiled=True, training=True)
