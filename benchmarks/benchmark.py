"""Speed and memory of keras_poolformer against the PyTorch reference, in one run (issue 7).

    python benchmarks/benchmark.py             # full run: about 16 minutes on 2 cores
    python benchmarks/benchmark.py --quick     # smoke run of every part: about 4 minutes
    python benchmarks/benchmark.py --output DIR --threads 2 --phases inference --no-spin

What it measures, on PoolFormer-S12 at 224x224 with seeded random weights (speed does
not depend on the values; ``--weights`` takes real ones, e.g. ``imagenet`` or a
checkpoint file, which makes the int8 agreement meaningful):

1. Inference images/s at batch 1 and 32 of each contender in ``CONTENDERS``: our Keras
   model through a ``tf.function`` (graph mode as built, graph mode after
   ``export.fold``, and XLA), and the files ``keras-poolformer export`` writes (folded,
   its default): our SavedModel's
   ``predict_pixels`` signature, our TFLite fp32 and int8 files on the LiteRT
   interpreter, our ONNX file on onnxruntime, the PyTorch reference (transformers'
   ``PoolFormerForImageClassification``) eager under ``torch.inference_mode()``, and the
   reference exported to ONNX on onnxruntime. Every contender gets the same numpy batch
   of RGB pixels 0..255 (batch, 224, 224, 3) and returns numpy logits: moving data in and
   out and normalising the pixels are part of every timed call.
2. Training images/s of one AdamW step (cross-entropy, random labels) at batch 32: Keras
   (``compile`` + ``train_on_batch``, with and without XLA) against PyTorch eager.
3. Peak memory of each contender: the VmHWM of its own worker process (the most resident
   memory it held at any moment, framework and interpreter included), over its whole life
   and over the timed rounds alone. Not ``ru_maxrss``: a spawned child inherits its
   parent's peak in that figure on Linux.
4. How cost grows: the five variants in Keras graph mode against their MACs, and S12 over
   input sizes 160 to 384 (batch 8).

How it keeps the comparison fair:

- Every contender lives in its own worker process, loaded once; the rounds then
  alternate: round r times every (contender, batch) once, starting at a place rotated by
  r, before round r + 1 begins. Machine drift and other load hit all contenders alike;
  the spread over rounds (min..max next to the median) shows how much there was.
- Every runtime is given the same thread count (default: every core this process may
  use): TensorFlow's intra- and inter-op pools (set before TensorFlow initialises),
  ``torch.set_num_threads``, onnxruntime's ``intra_op_num_threads`` and LiteRT's
  ``num_threads``; LiteRT runs fp32 through its default XNNPACK delegate. The output
  records them, with the environment variables that change them.
- Every contender computes the same function: the Keras weights are ported into the
  reference, and each contender's logits are compared with the Keras model's on the same
  images (fp32 must agree within 1e-4). int8 is judged by its top-1 agreement with fp32
  on real ImageNet images and the cosine similarity of its logits: random weights give
  small class margins, so top-1 agreement understates int8.

How to read the output (``benchmark.{json,md,png}``, or ``benchmark_quick.*``, in the
output folder; worker logs in ``*_logs/``): img/s is the median over rounds of
``batch * calls / seconds`` of one measurement (back-to-back calls for at least the
mode's seconds, after one untimed call), with the slowest and fastest round beside it.
Run it on an otherwise idle machine: other load shows up as a wide min..max, and hits
runtimes whose idle threads spin (torch's OpenMP, onnxruntime) far harder than the
others. On a machine you must share, ``--no-spin`` makes those threads sleep instead.
"""

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import traceback
from functools import partial
from importlib import metadata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "results"
DEFAULT_IMAGES = HERE.parent.parent / "shared" / "data" / "imagenet-val-1300"

SIZE = 224
SEED = 0
TOLERANCE = 1e-4  # fp32 contenders must match the Keras logits this closely
CROP_PCT = 0.9  # S12's evaluation crop, for the real images
LEARNING_RATE, WEIGHT_DECAY = 1e-4, 0.05  # the optimizer step, same for both frameworks
SETTLE_SECONDS = 0.1  # lets the previous worker's spinning threads go to sleep


@dataclasses.dataclass(frozen=True)
class Mode:
    """How long and how wide a run is."""

    name: str
    rounds: int  # inference rounds
    seconds: float  # least time of back-to-back calls in one measurement
    batches: tuple
    train_batch: int
    train_rounds: int
    train_seconds: float
    scaling_variants: tuple
    scaling_sizes: tuple
    scaling_batch: int
    scaling_rounds: int
    check_images: int  # images every contender's logits are compared on
    calibration_images: int  # int8 calibration set, disjoint from the check images


FULL = Mode(
    name="full",
    rounds=7,
    seconds=3.0,
    batches=(1, 32),
    train_batch=32,
    train_rounds=5,
    train_seconds=10.0,
    scaling_variants=("s12", "s24", "s36", "m36", "m48"),
    scaling_sizes=(160, 192, 224, 256, 320, 384),
    scaling_batch=8,
    scaling_rounds=3,
    check_images=128,
    calibration_images=128,
)
QUICK = Mode(
    name="quick",
    rounds=2,
    seconds=0.5,
    batches=(1, 4),
    train_batch=4,
    train_rounds=2,
    train_seconds=0.0,
    scaling_variants=("s12", "s24"),
    scaling_sizes=(160, 224),
    scaling_batch=1,
    scaling_rounds=2,
    check_images=8,
    calibration_images=8,
)
PHASES = ("inference", "training", "scaling")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every worker is told: its thread counts and where the artifacts are.

    ``spin=False`` makes idle torch (OpenMP) and onnxruntime threads sleep instead of
    spin-waiting: on a machine that other work shares, spinning threads that lose their
    core stall each other (torch S12 at batch 1 fell from 26 to 0.7 img/s here).
    """

    threads: int
    inter_op_threads: int
    workdir: str
    spin: bool = True

    def artifact(self, name):
        return os.path.join(self.workdir, ARTIFACTS[name])


# The files ``prepare`` writes into the work folder, by name.
ARTIFACTS = {
    "weights": "s12.weights.h5",
    "saved_model": "saved_model/1",
    "tflite_fp32": "s12_fp32.tflite",
    "tflite_int8": "s12_int8.tflite",
    "onnx": "s12.onnx",
    "reference": "reference",  # transformers' save_pretrained folder
    "reference_onnx": "reference.onnx",
    "normalisation": "reference/normalisation.json",
}


# --- Contenders: each loader runs inside the contender's worker process -------------------


def configured_tensorflow(settings):
    """TensorFlow with the thread pools set, which must happen before it initialises."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(settings.threads)
    tf.config.threading.set_inter_op_parallelism_threads(settings.inter_op_threads)
    return tf


def configured_torch(settings):
    if not settings.spin:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # read when torch loads OpenMP
    import torch

    torch.set_num_threads(settings.threads)
    if torch.get_num_interop_threads() != settings.inter_op_threads:
        torch.set_num_interop_threads(settings.inter_op_threads)
    return torch


def load_keras(settings, jit_compile=False, folded=False, variant="s12", size=SIZE, ported=True):
    """Our Keras model's logits through a ``tf.function`` (optionally XLA-compiled, or
    after ``export.fold``)."""
    tf = configured_tensorflow(settings)
    import keras_poolformer as kp
    from keras_poolformer.export import fold, logits_model

    weights = settings.artifact("weights") if ported else None
    model = kp.VARIANTS[variant](weights=weights, input_shape=(size, size, 3))
    model = logits_model(fold(model) if folded else model)
    forward = tf.function(lambda images: model(images, training=False), jit_compile=jit_compile)
    return lambda images: forward(tf.convert_to_tensor(images)).numpy()


def load_saved_model(settings):
    """The ``predict_pixels`` signature of our SavedModel, loaded by TensorFlow alone."""
    tf = configured_tensorflow(settings)
    loaded = tf.saved_model.load(settings.artifact("saved_model"))
    signature = loaded.signatures["predict_pixels"]
    return lambda images: signature(images=tf.convert_to_tensor(images))["logits"].numpy()


def load_tflite(settings, kind):
    """Our TFLite file on the LiteRT interpreter, one interpreter resized per batch size.

    Quantized inputs and outputs are handled by ``keras_poolformer.tflite_io`` (as in
    ``export.run_tflite``), inside the timed call. That module is loaded from its file:
    importing it through the package would import TensorFlow, and its memory would count
    against LiteRT.
    """
    import importlib.util

    from ai_edge_litert.interpreter import Interpreter

    path = HERE.parent / "keras_poolformer" / "tflite_io.py"
    spec = importlib.util.spec_from_file_location("tflite_io", path)
    tflite_io = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tflite_io)

    interpreters = {}

    def interpreter_for(batch):
        if batch not in interpreters:
            interpreter = Interpreter(
                model_path=settings.artifact(kind), num_threads=settings.threads
            )
            (source,) = interpreter.get_input_details()
            interpreter.resize_tensor_input(source["index"], [batch, *source["shape"][1:]])
            interpreter.allocate_tensors()
            interpreters[batch] = interpreter
        return interpreters[batch]

    def predict(images):
        return tflite_io.invoke_tflite(interpreter_for(len(images)), images)

    return predict


def load_onnx(settings, kind):
    """An ONNX file on onnxruntime's CPU provider."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if settings.spin else "0"
    )
    session = onnxruntime.InferenceSession(
        settings.artifact(kind), options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images})[0]


def pixels_module(model, mean, std):
    """The reference behind our contract: NHWC RGB pixels 0..255 in, logits out."""
    import torch

    class Pixels(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

        def forward(self, images):
            x = images.permute(0, 3, 1, 2) / 255.0
            return self.model(pixel_values=(x - self.mean) / self.std).logits

    return Pixels()


def _reference(settings):
    """The ported transformers reference, without importing TensorFlow."""
    from transformers import PoolFormerForImageClassification

    model = PoolFormerForImageClassification.from_pretrained(settings.artifact("reference"))
    with open(settings.artifact("normalisation")) as f:
        normalisation = json.load(f)
    return pixels_module(model, normalisation["mean"], normalisation["std"])


def load_torch(settings):
    """The PyTorch reference, eager, under ``torch.inference_mode()``."""
    torch = configured_torch(settings)
    module = _reference(settings).eval()

    def predict(images):
        with torch.inference_mode():
            return module(torch.from_numpy(images)).numpy()

    return predict


def load_keras_train(settings, jit_compile=False):
    """One Keras training step: ``compile`` (AdamW, cross-entropy) + ``train_on_batch``."""
    configured_tensorflow(settings)
    import keras

    import keras_poolformer as kp

    model = kp.PoolFormerS12(weights=settings.artifact("weights"), classifier_activation=None)
    model.compile(
        optimizer=keras.optimizers.AdamW(LEARNING_RATE, weight_decay=WEIGHT_DECAY),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return lambda images, labels: model.train_on_batch(images, labels)


def load_torch_train(settings):
    """One PyTorch training step: AdamW, cross-entropy, eager."""
    torch = configured_torch(settings)
    module = _reference(settings).train()
    optimizer = torch.optim.AdamW(module.parameters(), LEARNING_RATE, weight_decay=WEIGHT_DECAY)

    def step(images, labels):
        optimizer.zero_grad(set_to_none=True)
        logits = module(torch.from_numpy(images))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


@dataclasses.dataclass(frozen=True)
class Contender:
    """One row of the benchmark: ``load(settings)`` returns ``predict(images) -> logits``,
    or ``step(images, labels)`` for a training contender."""

    name: str
    label: str
    load: object
    training: bool = False
    precision: str = "fp32"
    size: int = SIZE


CONTENDERS = (
    Contender("keras", "Keras, tf.function graph", load_keras),
    Contender("keras_folded", "Keras, tf.function graph, folded", partial(load_keras, folded=True)),
    Contender("keras_xla", "Keras, tf.function XLA", partial(load_keras, jit_compile=True)),
    Contender("saved_model", "our SavedModel (predict_pixels)", load_saved_model),
    Contender("tflite_fp32", "our TFLite fp32, LiteRT", partial(load_tflite, kind="tflite_fp32")),
    Contender(
        "tflite_int8",
        "our TFLite int8, LiteRT",
        partial(load_tflite, kind="tflite_int8"),
        precision="int8",
    ),
    Contender("onnx", "our ONNX (tf2onnx), onnxruntime", partial(load_onnx, kind="onnx")),
    Contender("torch", "PyTorch reference, eager", load_torch),
    Contender(
        "torch_onnx",
        "PyTorch reference, ONNX, onnxruntime",
        partial(load_onnx, kind="reference_onnx"),
    ),
    Contender("keras_train", "Keras train step", load_keras_train, training=True),
    Contender(
        "keras_train_xla",
        "Keras train step, XLA",
        partial(load_keras_train, jit_compile=True),
        training=True,
    ),
    Contender(
        "torch_train", "PyTorch reference train step, eager", load_torch_train, training=True
    ),
)


def scaling_contenders(mode):
    """Keras graph mode for each variant at 224, and S12 at each input size."""
    configs = [(variant, SIZE) for variant in mode.scaling_variants]
    configs += [("s12", size) for size in mode.scaling_sizes]
    return [
        Contender(
            f"keras_{variant}_{size}",
            f"Keras {variant.upper()} {size}x{size}, graph",
            partial(load_keras, variant=variant, size=size, ported=False),
            size=size,
        )
        for variant, size in dict.fromkeys(configs)  # S12 at 224 once
    ]


# --- Workers: one process per contender, loaded once, one command at a time -------------


def _redirect_output(log_path):
    """Sends this process's stdout and stderr (C++ logs included) to a log file."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _memory():
    """This process's resident memory now and at its peak (VmRSS, VmHWM), in MiB.

    VmHWM belongs to the process's own address space, unlike ``ru_maxrss``, which a
    spawned child inherits from its parent's peak on Linux.
    """
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return {"rss_mib": fields["VmRSS"], "peak_rss_mib": fields["VmHWM"]}


def _reset_peak():
    """Resets VmHWM to the current RSS; returns the peak before, and whether it worked."""
    before = _memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return {**before, "reset": True}
    except OSError:
        return {**before, "reset": False}


def _time_calls(fn, seconds, warmup):
    """``warmup`` untimed calls, then calls back to back for at least ``seconds``.

    Returns the calls, their wall time and the CPU time this process spent meanwhile
    (CPU / wall is the number of cores it kept busy, spinning included).
    """
    for _ in range(warmup):
        fn()
    calls, start, cpu = 0, time.perf_counter(), time.process_time()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return {"calls": calls, "seconds": elapsed, "cpu_seconds": time.process_time() - cpu}


class _Inputs:
    """The same random pixels (and labels) in every worker, per size and batch."""

    def __init__(self):
        self._cache = {}

    def __call__(self, size, batch):
        if (size, batch) not in self._cache:
            rng = np.random.default_rng(SEED)
            images = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
            labels = rng.integers(0, 1000, batch, dtype=np.int64)
            self._cache[size, batch] = images, labels
        return self._cache[size, batch]


def _serve(conn, contenders, settings, log_path):
    """A worker's life: load its contenders, then answer commands until told to stop."""
    _redirect_output(log_path)
    by_name = {c.name: c for c in contenders}
    functions, errors = {}, {}
    for contender in contenders:
        try:
            functions[contender.name] = contender.load(settings)
        except Exception:
            errors[contender.name] = traceback.format_exc()
            print(errors[contender.name], file=sys.stderr, flush=True)
    conn.send({"errors": errors, "memory": _memory()})
    inputs = _Inputs()

    def call(name, batch):
        images, labels = inputs(by_name[name].size, batch)
        if by_name[name].training:
            return lambda: functions[name](images, labels)
        return lambda: functions[name](images)

    commands = {
        "time": lambda name, batch, seconds, warmup: _time_calls(
            call(name, batch), seconds, warmup
        ),
        "warm_up": lambda name, batch: call(name, batch)(),
        "logits": lambda name, images, chunk: np.concatenate(
            [functions[name](images[i : i + chunk]) for i in range(0, len(images), chunk)]
        ),
        "memory": _memory,
        "reset_peak": _reset_peak,
    }
    while True:
        command, args = conn.recv()
        if command == "stop":
            break
        try:
            conn.send(("ok", commands[command](**args)))
        except Exception:
            message = traceback.format_exc()
            print(message, file=sys.stderr, flush=True)
            conn.send(("error", message))


class WorkerError(RuntimeError):
    pass


class Worker:
    """Handle on a worker process that holds ``contenders``."""

    def __init__(self, contenders, settings, log_path):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.log_path = log_path
        self._process = context.Process(
            target=_serve, args=(child, contenders, settings, str(log_path)), daemon=True
        )
        self._process.start()
        child.close()
        ready = self._receive()
        self.errors, self.loaded_memory = ready["errors"], ready["memory"]

    def _receive(self):
        try:
            return self._conn.recv()
        except EOFError:
            raise WorkerError(f"the worker died; see {self.log_path}") from None

    def __call__(self, command, **args):
        self._conn.send((command, args))
        status, value = self._receive()
        if status == "error":
            raise WorkerError(value.strip().splitlines()[-1])
        return value

    def close(self):
        if self._process.is_alive():
            self._conn.send(("stop", {}))
            self._process.join(30)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()


def call_in_process(log_path, fn, *args):
    """``fn(*args)`` in a fresh process (so that what it loads is freed after)."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        1, mp_context=context, initializer=_redirect_output, initargs=(str(log_path),)
    ) as pool:
        return pool.submit(fn, *args).result()


# --- Preparing the shared model and its exports (in a process of its own) ---------------


def _images(folder, start, count, size=SIZE):
    """``count`` real images from ``folder`` (labels.csv order, from ``start``), or ``None``."""
    import csv

    import keras_poolformer as kp

    labels = Path(folder) / "labels.csv"
    if not labels.is_file():
        return None
    with open(labels, newline="") as f:
        names = [row["filename"] for row in csv.DictReader(f)][start : start + count]
    if len(names) < count:
        return None
    paths = [Path(folder) / "images" / name for name in names]
    return np.stack([kp.load_image(path, size, CROP_PCT) for path in paths])


def _export_reference_onnx(module, path):
    """Exports the reference module to ONNX; returns which exporter wrote it."""
    import importlib.util
    import warnings

    import torch

    example = (torch.zeros(1, SIZE, SIZE, 3),)
    names = {"input_names": ["images"], "output_names": ["logits"]}
    if importlib.util.find_spec("onnxscript") is not None:
        batch = torch.export.Dim("batch")
        torch.onnx.export(module, example, path, dynamic_shapes=({0: batch},), dynamo=True, **names)
        return "torch.onnx.export(dynamo=True)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            example,
            path,
            dynamic_axes={"images": {0: "batch"}},
            opset_version=17,
            dynamo=False,
            **names,
        )
    return "torch.onnx.export(dynamo=False): the TorchScript exporter, as onnxscript is missing"


def prepare(mode, settings, images_folder, weights=None):
    """Builds the S12 every contender runs and writes its artifacts into the work folder.

    ``weights``: anything ``PoolFormerS12(weights=...)`` takes; seeded random weights if
    ``None``. The SavedModel, TFLite and ONNX files are written from the folded model,
    as ``keras-poolformer export`` writes them by default.

    Returns what the report needs to know about them: sizes and export times, where the
    check and calibration images came from, the MACs of the scaling models.
    """
    configured_tensorflow(settings)
    import keras

    import keras_poolformer as kp
    from keras_poolformer import export
    from keras_poolformer.convert.verify import reference_model
    from keras_poolformer.layers import IMAGENET_MEAN, IMAGENET_STD

    work = Path(settings.workdir)
    keras.utils.set_random_seed(SEED)
    model = kp.PoolFormerS12(weights=weights)
    model.save_weights(settings.artifact("weights"))
    deployed = export.fold(model)

    check = _images(images_folder, 0, mode.check_images)
    calibration = _images(images_folder, mode.check_images, mode.calibration_images)
    real = check is not None and calibration is not None
    if not real:
        rng = np.random.default_rng(SEED + 1)
        shape = (SIZE, SIZE, 3)
        check = rng.uniform(0, 255, (mode.check_images, *shape)).astype(np.float32)
        calibration = rng.uniform(0, 255, (mode.calibration_images, *shape)).astype(np.float32)
    np.save(work / "check.npy", check)

    exports = {}

    def timed(name, write):
        start = time.perf_counter()
        write()
        exports[name] = {
            "seconds": round(time.perf_counter() - start, 1),
            "bytes": _size(settings.artifact(name)),
        }

    timed("saved_model", lambda: export.export_saved_model(deployed, work / "saved_model"))
    timed("tflite_fp32", lambda: export.export_tflite(deployed, settings.artifact("tflite_fp32")))
    timed(
        "tflite_int8",
        lambda: export.export_tflite(
            deployed, settings.artifact("tflite_int8"), "int8", calibration_images=calibration
        ),
    )
    timed("onnx", lambda: export.export_onnx(deployed, settings.artifact("onnx")))

    reference = reference_model(kp.porting.export_state_dict(model))
    reference.save_pretrained(settings.artifact("reference"))
    normalisation = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    with open(settings.artifact("normalisation"), "w") as f:
        json.dump(normalisation, f)
    module = pixels_module(reference, **normalisation).eval()
    exporter = []
    timed(
        "reference_onnx",
        lambda: exporter.append(
            _export_reference_onnx(module, settings.artifact("reference_onnx"))
        ),
    )
    exports["reference_onnx"]["exporter"] = exporter[0]

    size_free = kp.PoolFormerS12(weights=None, input_shape=(None, None, 3))
    return {
        "weights": str(weights) if weights else f"random (seed {SEED})",
        "exports": exports,
        "images": "real ImageNet validation images" if real else "random pixels",
        "images_folder": str(images_folder) if real else None,
        "check_images": len(check),
        "calibration_images": len(calibration),
        "macs": {key: config["macs"] for key, config in kp.MODEL_CONFIGS.items()},
        "s12_macs_by_size": {
            size: kp.count_macs(size_free, (size, size)) for size in mode.scaling_sizes
        },
    }


def _size(path):
    if os.path.isdir(path):
        return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    return os.path.getsize(path)


# --- Measuring -------------------------------------------------------------------------


def _summary(timings, batch):
    """images/s of each round's measurement: median, slowest, fastest, all."""
    speeds = [batch * t["calls"] / t["seconds"] for t in timings]
    return {
        "median": float(np.median(speeds)),
        "min": float(np.min(speeds)),
        "max": float(np.max(speeds)),
        "rounds": [round(v, 3) for v in speeds],
        "cores_busy_median": float(np.median([t["cpu_seconds"] / t["seconds"] for t in timings])),
    }


def _agreement(logits, reference, fp32, real_images):
    """How closely ``logits`` follow the Keras model's on the same images."""
    cosine = np.sum(logits * reference, axis=1) / (
        np.linalg.norm(logits, axis=1) * np.linalg.norm(reference, axis=1)
    )
    top1 = float(np.mean(np.argmax(logits, 1) == np.argmax(reference, 1)))
    max_abs_diff = float(np.abs(logits - reference).max())
    return {
        "max_abs_diff": max_abs_diff,
        "within_tolerance": bool(max_abs_diff <= TOLERANCE) if fp32 else None,
        # Top-1 agreement on random pixels says nothing; it is kept for real images only.
        "top1_agreement": top1 if real_images else None,
        "cosine_mean": float(np.mean(cosine)),
        "cosine_min": float(np.min(cosine)),
    }


class Bench:
    """Workers for a group of contenders, and the alternating rounds over them."""

    def __init__(self, groups, settings, log_dir, log):
        self.log = log
        self.workers, self.errors, self.loaded_memory = {}, {}, {}
        for group in groups:
            log(f"loading {', '.join(c.name for c in group)}")
            try:
                worker = Worker(group, settings, Path(log_dir) / f"{group[0].name}.log")
            except WorkerError as error:
                self.errors.update({c.name: str(error) for c in group})
                continue
            for contender in group:
                if contender.name in worker.errors:
                    message = worker.errors[contender.name].strip().splitlines()[-1]
                    self.errors[contender.name] = message
                    log(f"  {contender.name} failed to load: {message}")
                else:
                    self.workers[contender.name] = worker
                    self.loaded_memory[contender.name] = worker.loaded_memory
        self.contenders = [c for group in groups for c in group if c.name in self.workers]

    def _call(self, target, command, **args):
        """One command to ``target``'s worker; a failure drops ``target`` from the rest."""
        try:
            return self.workers[target](command, **args)
        except WorkerError as error:
            self.errors[target] = str(error)
            self.log(f"  {target} failed: {error}")
            del self.workers[target]
            self.contenders = [c for c in self.contenders if c.name != target]
            return None

    def warm_up(self, batches):
        for contender in list(self.contenders):
            for batch in batches:
                self._call(contender.name, "warm_up", name=contender.name, batch=batch)

    def logits(self, images, chunk):
        return {
            c.name: self._call(c.name, "logits", name=c.name, images=images, chunk=chunk)
            for c in list(self.contenders)
        }

    def reset_peaks(self):
        return {c.name: self._call(c.name, "reset_peak") for c in list(self.contenders)}

    def memory(self):
        return {c.name: self._call(c.name, "memory") for c in list(self.contenders)}

    def rounds(self, batches, rounds, seconds, warmup):
        """Round r times every (contender, batch) once, from a start rotated by r."""
        jobs = [(c.name, batch) for batch in batches for c in self.contenders]
        timings = {job: [] for job in jobs}
        for r in range(rounds):
            shift = (r * len(jobs)) // rounds
            for name, batch in jobs[shift:] + jobs[:shift]:
                if name not in self.workers:
                    continue
                timing = self._call(
                    name, "time", name=name, batch=batch, seconds=seconds, warmup=warmup
                )
                if timing is not None:
                    timings[name, batch].append(timing)
                time.sleep(SETTLE_SECONDS)
            line = ", ".join(
                f"{n} b{b} {b * t[-1]['calls'] / t[-1]['seconds']:.2f}"
                for (n, b), t in timings.items()
                if t
            )
            self.log(f"  round {r + 1}/{rounds} img/s: {line}")
        return {(n, b): _summary(t, b) for (n, b), t in timings.items() if t}

    def close(self):
        for worker in {id(w): w for w in self.workers.values()}.values():
            worker.close()


def _records(contenders, bench, speeds, peaks=None, memory=None):
    """One result record per contender, failed ones included."""
    records = []
    for c in contenders:
        record = {"name": c.name, "label": c.label, "precision": c.precision, "size": c.size}
        record["error"] = bench.errors.get(c.name)
        record["speed"] = {str(b): s for (n, b), s in speeds.items() if n == c.name}
        if peaks and memory and peaks.get(c.name) and memory.get(c.name):
            before, after = peaks[c.name], memory[c.name]
            record["memory"] = {
                "loaded_rss_mib": bench.loaded_memory[c.name]["rss_mib"],
                "peak_rss_mib": max(before["peak_rss_mib"], after["peak_rss_mib"]),
                "peak_rss_in_rounds_mib": after["peak_rss_mib"] if before["reset"] else None,
            }
        records.append(record)
    return records


def inference_phase(mode, settings, prepared, log_dir, log):
    contenders = [c for c in CONTENDERS if not c.training]
    bench = Bench([[c] for c in contenders], settings, log_dir, log)
    try:
        log("warming up")
        bench.warm_up(mode.batches)
        log(f"checking logits on {prepared['check_images']} {prepared['images']}")
        check = np.load(Path(settings.workdir) / "check.npy")
        logits = bench.logits(check, chunk=max(mode.batches))
        peaks = bench.reset_peaks()
        log("timing")
        speeds = bench.rounds(mode.batches, mode.rounds, mode.seconds, warmup=1)
        memory = bench.memory()
    finally:
        bench.close()
    records = _records(contenders, bench, speeds, peaks, memory)
    reference = logits.get("keras")
    real = prepared["images"].startswith("real")
    for record in records:
        if reference is not None and logits.get(record["name"]) is not None:
            fp32 = record["precision"] == "fp32"
            record["agreement"] = _agreement(logits[record["name"]], reference, fp32, real)
    return {
        "batches": list(mode.batches),
        "keras_max_abs_logit": float(np.abs(reference).max()) if reference is not None else None,
        "contenders": records,
    }


def training_phase(mode, settings, log_dir, log):
    contenders = [c for c in CONTENDERS if c.training]
    bench = Bench([[c] for c in contenders], settings, log_dir, log)
    try:
        log("warming up (XLA compiles here)")
        bench.warm_up([mode.train_batch])
        peaks = bench.reset_peaks()
        log("timing")
        speeds = bench.rounds([mode.train_batch], mode.train_rounds, mode.train_seconds, 0)
        memory = bench.memory()
    finally:
        bench.close()
    return {
        "batch": mode.train_batch,
        "optimizer": f"AdamW(lr={LEARNING_RATE}, weight_decay={WEIGHT_DECAY})",
        "contenders": _records(contenders, bench, speeds, peaks, memory),
    }


def scaling_phase(mode, settings, prepared, log_dir, log):
    contenders = scaling_contenders(mode)
    bench = Bench([contenders], settings, log_dir, log)  # one worker: memory is shared
    try:
        log("warming up")
        bench.warm_up([mode.scaling_batch])
        log("timing")
        speeds = bench.rounds([mode.scaling_batch], mode.scaling_rounds, mode.seconds, 1)
    finally:
        bench.close()
    records = _records(contenders, bench, speeds)

    def row(record, macs):
        speed = record["speed"].get(str(mode.scaling_batch))
        return {
            "name": record["name"],
            "macs": macs,
            "images_per_s": speed["median"] if speed else None,
            # MACs done per second: flat when time grows in step with the MACs.
            "gmacs_per_s": speed["median"] * macs / 1e9 if speed else None,
            "error": record["error"],
        }

    by_name = {r["name"]: r for r in records}
    return {
        "batch": mode.scaling_batch,
        "variants": [
            {"variant": v, **row(by_name[f"keras_{v}_{SIZE}"], prepared["macs"][v])}
            for v in mode.scaling_variants
        ],
        "sizes": [
            {
                "size": s,
                **row(by_name[f"keras_s12_{s}"], prepared["s12_macs_by_size"][s]),
            }
            for s in mode.scaling_sizes
        ],
    }


# --- The machine, the report -----------------------------------------------------------


def _cpu():
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")
    return model, [flag for flag in wanted if flag in flags]


def _version(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _env(name, default=""):
    value = os.environ.get(name)
    if value is not None:
        return value
    return f"unset ({default})" if default else "unset"


def machine(settings):
    model, flags = _cpu()
    memory = None
    if os.path.exists("/proc/meminfo"):
        with open("/proc/meminfo") as f:
            memory = round(int(f.readline().split()[1]) / 1024**2, 1)
    packages = ["tensorflow", "keras", "torch", "transformers", "onnxruntime", "onnx"]
    packages += ["tf2onnx", "ai-edge-litert", "numpy"]
    return {
        "cpu": model,
        "cpu_flags": flags,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {package: _version(package) for package in packages},
        "load_average_before": os.getloadavg(),
        "threads": {
            "tensorflow": {
                "intra_op": settings.threads,
                "inter_op": settings.inter_op_threads,
                "TF_ENABLE_ONEDNN_OPTS": _env("TF_ENABLE_ONEDNN_OPTS", "oneDNN on by default"),
            },
            "torch": {
                "num_threads": settings.threads,
                "interop_threads": settings.inter_op_threads,
                "OMP_WAIT_POLICY": "PASSIVE" if not settings.spin else _env("OMP_WAIT_POLICY"),
            },
            "onnxruntime": {
                "intra_op_num_threads": settings.threads,
                "inter_op_num_threads": settings.inter_op_threads,
                "allow_spinning": settings.spin,
            },
            "litert": {"num_threads": settings.threads},
        },
    }


def _speed(record, batch):
    speed = record["speed"].get(str(batch))
    if not speed:
        return "failed" if record["error"] else "-"
    return f"{speed['median']:.2f} ({speed['min']:.2f}..{speed['max']:.2f})"


MEMORY_KEYS = ("peak_rss_mib", "peak_rss_in_rounds_mib", "loaded_rss_mib")


def _mib(memory, key):
    value = (memory or {}).get(key)
    return f"{value:.0f}" if value is not None else "-"


def _check(agreement):
    if not agreement:
        return "-", "-", "-"
    diff = f"{agreement['max_abs_diff']:.1e}"
    if agreement["within_tolerance"] is not None:
        diff += " ok" if agreement["within_tolerance"] else " FAIL"
    top1 = agreement["top1_agreement"]
    top1 = f"{100 * top1:.1f}%" if top1 is not None else "-"
    return diff, top1, f"{agreement['cosine_mean']:.5f} (min {agreement['cosine_min']:.5f})"


def _table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def _header_md(results):
    m = results["machine"]
    threads = m["threads"]
    lines = [
        f"# PoolFormer benchmark ({results['mode']} mode)",
        "",
        f"{m['cpu']} ({', '.join(m['cpu_flags'])}), {m['usable_cores']} usable cores, "
        f"{m['memory_gib']} GiB; {results['started']}, {results['duration_s'] / 60:.1f} min. "
        f"Threads: {threads['tensorflow']['intra_op']} intra-op, "
        f"{threads['tensorflow']['inter_op']} inter-op for every runtime; "
        f"TF_ENABLE_ONEDNN_OPTS {threads['tensorflow']['TF_ENABLE_ONEDNN_OPTS']}; torch "
        f"OMP_WAIT_POLICY {threads['torch']['OMP_WAIT_POLICY']}; onnxruntime spinning "
        f"{'on' if threads['onnxruntime']['allow_spinning'] else 'off'}. Load average "
        f"(1 min) before / after: {m['load_average_before'][0]:.2f} / "
        f"{m['load_average_after'][0]:.2f}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".",
        "",
        "img/s: median over alternating rounds (slowest..fastest round). Peak RSS: the most "
        "resident memory of the contender's own worker process (VmHWM, MiB) over its whole "
        "life (interpreter, framework, model, warm-up and compilation, checks, timed "
        "rounds); 'in rounds': over the timed rounds alone; 'loaded': RSS once loaded.",
    ]
    exports = results["artifacts"]["exports"]
    sizes = ", ".join(
        f"{name} {e['bytes'] / 1e6:.1f} MB in {e['seconds']} s" for name, e in exports.items()
    )
    return lines + [
        "",
        f"Weights: {results['artifacts'].get('weights', 'random')}. Our exports are of the "
        f"folded model, as `keras-poolformer export` writes them: {sizes}. Reference ONNX "
        f"by {exports['reference_onnx']['exporter']}.",
    ]


def _inference_md(inference, artifacts):
    batches = inference["batches"]
    lines = [
        "## Inference, S12 224x224",
        "",
        f"Logits checked on {artifacts['check_images']} {artifacts['images']} against the "
        f"Keras model's (largest |logit| {inference['keras_max_abs_logit']:.3g}); fp32 must "
        f"agree within {TOLERANCE}. int8 calibrated on {artifacts['calibration_images']} "
        f"{artifacts['images']}; top-1 agreement is given on real images only.",
        "",
    ]
    headers = ["contender", *(f"batch {b} img/s" for b in batches), "peak RSS MiB"]
    headers += ["in rounds", "loaded", "max abs diff", "top-1 agr.", "cosine"]
    rows = [
        [
            r["label"],
            *(_speed(r, b) for b in batches),
            *(_mib(r.get("memory"), key) for key in MEMORY_KEYS),
            *_check(r.get("agreement")),
        ]
        for r in inference["contenders"]
    ]
    return lines + _table(headers, rows)


def _training_md(training):
    lines = [
        f"## Training step, S12 224x224, batch {training['batch']}, {training['optimizer']}",
        "",
    ]
    rows = [
        [
            r["label"],
            _speed(r, training["batch"]),
            *(_mib(r.get("memory"), key) for key in MEMORY_KEYS),
        ]
        for r in training["contenders"]
    ]
    return lines + _table(["contender", "img/s", "peak RSS MiB", "in rounds", "loaded"], rows)


def _scaling_md(scaling):
    lines = [
        f"## Cost growth, Keras graph mode, batch {scaling['batch']}",
        "",
        "GMAC/s = img/s x MACs per image: constant when time grows in step with the MACs. "
        "Variants: the paper's MACs (MODEL_CONFIGS); sizes: MACs counted on the graph.",
        "",
    ]
    headers = ["GMACs", "img/s", "ms/img", "GMAC/s"]
    rows = [_scaling_row(r["variant"].upper(), r) for r in scaling["variants"]]
    lines += _table(["variant (224x224)", *headers], rows)
    rows = [_scaling_row(f"{r['size']}x{r['size']}", r) for r in scaling["sizes"]]
    return lines + [""] + _table(["S12 input", *headers], rows)


def markdown(results):
    """The report: machine and settings, then one table per phase that ran."""
    sections = [_header_md(results)]
    if "inference" in results:
        sections.append(_inference_md(results["inference"], results["artifacts"]))
    if "training" in results:
        sections.append(_training_md(results["training"]))
    if "scaling" in results:
        sections.append(_scaling_md(results["scaling"]))
    failures = [
        f"- {r['name']}: {r['error']}"
        for phase in ("inference", "training")
        for r in results.get(phase, {}).get("contenders", [])
        if r["error"]
    ]
    failures += [
        f"- {r['name']}: {r['error']}"
        for key in ("variants", "sizes")
        for r in results.get("scaling", {}).get(key, [])
        if r["error"]
    ]
    if failures:
        sections.append(["## Failures", "", *failures])
    return "\n\n".join("\n".join(section) for section in sections) + "\n"


def _scaling_row(name, r):
    if r["images_per_s"] is None:
        return [name, f"{r['macs'] / 1e9:.2f}", "failed", "-", "-"]
    return [
        name,
        f"{r['macs'] / 1e9:.2f}",
        f"{r['images_per_s']:.2f}",
        f"{1000 / r['images_per_s']:.0f}",
        f"{r['gmacs_per_s']:.1f}",
    ]


def _bars(ax, records, batches, title):
    """Median images/s per contender and batch, with the slowest..fastest round."""
    y = np.arange(len(records))
    height = 0.8 / len(batches)
    for i, batch in enumerate(batches):
        speeds = [r["speed"].get(str(batch)) or {"median": 0, "min": 0, "max": 0} for r in records]
        median = np.array([s["median"] for s in speeds])
        spread = [median - [s["min"] for s in speeds], [s["max"] for s in speeds] - median]
        ax.barh(y + i * height, median, height, xerr=spread, capsize=2, label=f"batch {batch}")
    ax.set_yticks(y + height * (len(batches) - 1) / 2, [r["label"] for r in records])
    ax.invert_yaxis()
    ax.set_xlabel("images/s (median, bars: slowest..fastest round)")
    ax.set_title(title)
    ax.legend()


def _growth(ax, rows, key, title):
    """ms per image against MACs, with the line of time proportional to MACs."""
    rows = [r for r in rows if r["images_per_s"]]
    if not rows:
        return
    macs = np.array([r["macs"] / 1e9 for r in rows])
    ms = np.array([1000 / r["images_per_s"] for r in rows])
    ax.plot(macs, ms, "o-", label="measured")
    ax.plot([0, macs.max()], [0, macs.max() * ms[0] / macs[0]], "--", label="in proportion")
    for r, x, y in zip(rows, macs, ms, strict=True):
        ax.annotate(str(r[key]).upper(), (x, y), (4, -12), textcoords="offset points")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("GMACs per image")
    ax.set_ylabel("ms per image")
    ax.set_title(title)
    ax.legend()


def plot(results, path):
    """Inference, training and the two cost-growth curves, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(15, 10))
    if "inference" in results:
        inference = results["inference"]
        _bars(axes[0, 0], inference["contenders"], inference["batches"], "Inference, S12 224x224")
    if "training" in results:
        training = results["training"]
        title = f"Training step, S12, batch {training['batch']}"
        _bars(axes[0, 1], training["contenders"], [training["batch"]], title)
    if "scaling" in results:
        scaling = results["scaling"]
        batch = scaling["batch"]
        _growth(axes[1, 0], scaling["variants"], "variant", f"Variants at 224x224, batch {batch}")
        _growth(axes[1, 1], scaling["sizes"], "size", f"S12 over input sizes, batch {batch}")
    for ax in axes.flat:
        if not ax.has_data():
            ax.set_axis_off()
    figure.suptitle(f"PoolFormer on {results['machine']['cpu']} ({results['mode']} mode)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --- The command -----------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few-minute smoke run")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results folder")
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="threads for every runtime (default: every usable core)",
    )
    parser.add_argument(
        "--inter-op-threads",
        type=int,
        default=1,
        help="inter-op threads for TensorFlow, torch and onnxruntime (default: 1)",
    )
    parser.add_argument(
        "--no-spin",
        action="store_true",
        help="idle torch and onnxruntime threads sleep instead of spinning (shared machines)",
    )
    parser.add_argument(
        "--phases", nargs="+", choices=PHASES, default=list(PHASES), help="what to run"
    )
    parser.add_argument(
        "--weights",
        help="S12 weights: imagenet, a .weights.h5 or a PyTorch checkpoint "
        "(default: seeded random weights; speed does not depend on them)",
    )
    parser.add_argument(
        "--images",
        type=Path,
        default=DEFAULT_IMAGES,
        help="imagenet-val-1300 folder for the checks and int8 calibration (random if absent)",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    mode = QUICK if args.quick else FULL
    stem = "benchmark_quick" if args.quick else "benchmark"
    args.output.mkdir(parents=True, exist_ok=True)
    log_dir = args.output / f"{stem}_logs"
    log_dir.mkdir(exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.perf_counter()

    def log(message):
        print(f"[{time.perf_counter() - start:6.0f} s] {message}", flush=True)

    with tempfile.TemporaryDirectory(prefix="poolformer_benchmark_") as workdir:
        settings = Settings(args.threads, args.inter_op_threads, workdir, not args.no_spin)
        results = {
            "mode": mode.name,
            "mode_settings": dataclasses.asdict(mode),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": machine(settings),
        }
        load = os.getloadavg()[0]
        if load > 0.5:
            log(
                f"WARNING: the machine is busy (load average {load:.1f}): timings will be "
                "distorted, spinning thread pools (torch, onnxruntime) most; see --no-spin"
            )
        log(f"{mode.name} mode, {args.threads} threads; exporting the shared S12")
        prepared = call_in_process(
            log_dir / "prepare.log", prepare, mode, settings, args.images, args.weights
        )
        results["artifacts"] = prepared
        if "inference" in args.phases:
            log("inference")
            results["inference"] = inference_phase(mode, settings, prepared, log_dir, log)
        if "training" in args.phases:
            log("training")
            results["training"] = training_phase(mode, settings, log_dir, log)
        if "scaling" in args.phases:
            log("scaling")
            results["scaling"] = scaling_phase(mode, settings, prepared, log_dir, log)
    results["machine"]["load_average_after"] = os.getloadavg()
    results["duration_s"] = round(time.perf_counter() - start, 1)

    (args.output / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    report = markdown(results)
    (args.output / f"{stem}.md").write_text(report)
    plot(results, args.output / f"{stem}.png")
    print()
    print(report)
    print(f"Wrote {args.output / stem}.{{json,md,png}}")


if __name__ == "__main__":
    main()
