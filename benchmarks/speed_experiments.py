"""Short experiments on what makes the Keras S12 faster or leaner on a CPU: fp32
inference, and the training step's speed and peak memory.

    python benchmarks/speed_experiments.py threads     # thread pools, oneDNN on/off
    python benchmarks/speed_experiments.py forms       # folding, XLA, MLP as matmul, norm
    python benchmarks/speed_experiments.py profile --form folded_matmul --batch 32
    python benchmarks/speed_experiments.py profile --train   # one AdamW step at batch 32
    python benchmarks/speed_experiments.py profile --saved-model --onednn --batch 1
    python benchmarks/speed_experiments.py train --only library onednn onednn_remat torch

``threads``, ``forms`` and ``train`` alternate their contenders round by round, one
worker process each, with the benchmark's machinery (``benchmarks/metaformer_bench``);
``profile`` runs one form (or the exported SavedModel) under the TensorFlow profiler and
prints where the time goes, by part of the block. ``train`` prints img/s and peak RSS
of the AdamW step at batch 32; keep to about five contenders a run, as each worker
holds up to 5 GB.

The alternative forms are experimental code, not the library's: they replace
``ConvMlp.call``, ``ModifiedLayerNorm.call`` or ``PoolFormerBlock.call`` in the worker
process only, before the model is built, and each inference form is checked against
the library's logits (``max abs diff``).
"""

import argparse
import collections
import dataclasses
import glob
import os
import tempfile
from functools import partial

import numpy as np
from metaformer_bench.contenders import (
    Contender,
    configured_tensorflow,
    configured_torch,
    keras_train,
    keras_train_step,
    onednn_on,
    torch_train_step,
    transformers_reference,
)
from metaformer_bench.phases import measure_training
from metaformer_bench.prepare import reference_artifacts
from metaformer_bench.runner import Bench, call_in_process
from metaformer_bench.settings import FULL, SEED, SIZE, Settings

_INV_SQRT2 = 0.7071067811865476
TRAIN_MODE = FULL  # batch 32 and the time per measurement of the full benchmark


# --- Alternative forms of the block's parts (experimental) ------------------------------


def _matmul_mlp(gelu):
    """``ConvMlp.call`` as two 2-D matrix products over all pixels (``x @ W + b``), with
    PoolFormer's exact GELU written with erf (as the library does) or as ``tf.nn.gelu``.

    The question: does oneDNN do a matrix product faster than a 1x1 conv, and does the
    remapper then fuse the GELU into it? (Here it fused the bias, not the GELU.)
    """
    import tensorflow as tf

    def call(self, inputs):
        height, width, channels = inputs.shape[1:]
        x = tf.reshape(inputs, [-1, channels])
        x = tf.matmul(x, self.fc1.kernel[0, 0]) + self.fc1.bias
        if gelu == "erf":
            x = 0.5 * x * (1.0 + tf.math.erf(x * _INV_SQRT2))
        else:
            x = tf.nn.gelu(x, approximate=False)
        x = tf.matmul(x, self.fc2.kernel[0, 0]) + self.fc2.bias
        return tf.reshape(x, [-1, height, width, self.out_dim])

    return call


def _affine_norm(self, inputs):
    """``ModifiedLayerNorm.call`` as one multiply-add over the tensor: per-sample and
    per-channel ``a`` and ``b`` are computed from the moments first."""
    import tensorflow as tf

    mean, variance = tf.nn.moments(inputs, axes=[1, 2, 3], keepdims=True)
    scale = tf.math.rsqrt(variance + self.epsilon)
    if self.scale:
        scale = scale * self.gamma
    shift = -mean * scale
    if self.center:
        shift = shift + self.beta
    return inputs * scale + shift


def load_form(
    settings, fold=False, mlp="conv", norm="moments", jit_compile=False, policy="float32"
):
    """The S12 logits with some parts replaced (in this process only), as a predict()."""
    tf = configured_tensorflow(settings)
    import keras

    from keras_poolformer import export, layers

    keras.mixed_precision.set_global_policy(policy)

    if mlp != "conv":
        layers.ConvMlp.call = _matmul_mlp(gelu=mlp.removeprefix("matmul_"))
    if norm == "affine":
        layers.ModifiedLayerNorm.call = _affine_norm
    import keras_poolformer as kp

    model = kp.PoolFormerS12(weights=settings.artifact("weights"))
    model = export.logits_model(export.fold(model) if fold else model)
    forward = tf.function(lambda images: model(images, training=False), jit_compile=jit_compile)
    return lambda images: np.asarray(forward(tf.convert_to_tensor(images)), np.float32)


# Loaders are pickled by name into the spawned workers, so each variant is a module-level
# function or a partial of one.
def _with_threads(settings, **overrides):
    return load_form(dataclasses.replace(settings, **overrides))


def _onednn_off(settings):
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"  # read when TensorFlow is imported
    return load_form(settings)


THREADS = [
    Contender("intra2_inter1", "2 intra, 1 inter (benchmark default)", load_form),
    Contender("intra2_inter2", "2 intra, 2 inter", partial(_with_threads, inter_op_threads=2)),
    Contender(
        "tf_default", "TF's defaults (0, 0)", partial(_with_threads, threads=0, inter_op_threads=0)
    ),
    Contender("intra1_inter1", "1 intra, 1 inter", partial(_with_threads, threads=1)),
    Contender("onednn_off", "TF_ENABLE_ONEDNN_OPTS=0", _onednn_off),
]

FORMS = [
    Contender("library", "library model", load_form),
    Contender("folded", "folded", partial(load_form, fold=True)),
    Contender("xla", "XLA", partial(load_form, jit_compile=True)),
    Contender("folded_xla", "folded, XLA", partial(load_form, fold=True, jit_compile=True)),
    Contender("matmul", "MLP as matmul", partial(load_form, mlp="matmul_erf")),
    Contender("matmul_gelu", "MLP as matmul, tf.nn.gelu", partial(load_form, mlp="matmul_gelu")),
    Contender("affine_norm", "norm as one affine", partial(load_form, norm="affine")),
    Contender(
        "folded_matmul", "folded, MLP as matmul", partial(load_form, fold=True, mlp="matmul_erf")
    ),
    Contender("bf16", "mixed_bfloat16 (not fp32)", partial(load_form, policy="mixed_bfloat16")),
    Contender(
        "folded_matmul_affine",
        "folded, matmul, affine norm",
        partial(load_form, fold=True, mlp="matmul_erf", norm="affine"),
    ),
]


# --- Training step: what peak memory is made of, and what it costs to cut ----------------

_M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter numbers
_M_TRIM_THRESHOLD = -1


def _mmap_large_blocks(threshold=1 << 20):
    """glibc malloc with a fixed mmap threshold: every block over ``threshold`` bytes is
    its own mapping, handed back to the system when freed. By default the threshold
    grows with the blocks freed (up to 32 MiB), after which activations and gradients
    come from the heap, whose freed pages stay resident: peak RSS then counts memory
    that is free. (``mallopt`` takes effect at once; no restart is needed.)"""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    if not libc.mallopt(_M_MMAP_THRESHOLD, threshold) or not libc.mallopt(
        _M_TRIM_THRESHOLD, threshold
    ):
        raise RuntimeError("mallopt failed: not glibc?")


def _autodiff_gradients():
    """The GELU's and MLN's gradients by autodiff through their forward passes, as
    before the library wrote them out (``mixers.gelu_with_gradient``,
    ``norms._normalise_with_gradient``): the same forward values. In this process only."""
    from keras_poolformer import mixers, norms

    mixers.gelu_with_gradient = lambda x: 0.5 * x * (1.0 + mixers.ops.erf(x * _INV_SQRT2))
    norms._normalise_with_gradient = norms._normalise


def _train(settings, onednn=False, mmap=False, remat=False, autodiff=False):
    """The benchmark's Keras training step (AdamW, batch 32) with one change or more:
    oneDNN on, glibc's large blocks mapped (:func:`_mmap_large_blocks`), autodiff's
    gradients for GELU and MLN (:func:`_autodiff_gradients`), or each
    PoolFormer block recomputed in the backward pass (:func:`_recompute_blocks`, which keeps
    only each block's input and recomputes its activations when the gradient needs them)."""
    if onednn:
        onednn_on()
    if mmap:
        _mmap_large_blocks()
    if remat:
        _recompute_blocks()
    if autodiff:
        _autodiff_gradients()
    return keras_train_step(settings)


def _recompute_blocks():
    """Each PoolFormer block's forward pass runs again in the backward pass
    (``tf.recompute_grad``): only the block's input is kept, not its activations.
    (``keras.RematScope`` cannot do this on TensorFlow: its ``custom_gradient`` refuses
    the ``training`` keyword in graph mode.) In this process only."""
    import tensorflow as tf

    from keras_poolformer.layers import PoolFormerBlock

    forward = PoolFormerBlock.call

    def call(self, inputs, training=None):
        return tf.recompute_grad(lambda x: forward(self, x, training=training))(inputs)

    PoolFormerBlock.call = call


def _torch_train(settings):
    torch = configured_torch(settings)
    return torch_train_step(torch, transformers_reference(settings))


TRAIN = [
    Contender("library", "Keras train step", partial(_train), training=True),
    Contender("mmap", "glibc large blocks mapped", partial(_train, mmap=True), training=True),
    Contender("remat", "blocks recomputed", partial(_train, remat=True), training=True),
    Contender("onednn", "oneDNN on", partial(_train, onednn=True), training=True),
    Contender(
        "onednn_remat",
        "oneDNN on, blocks recomputed",
        partial(_train, onednn=True, remat=True),
        training=True,
    ),
    Contender("autodiff", "GELU, MLN by autodiff", partial(_train, autodiff=True), training=True),
    Contender(
        "onednn_autodiff",
        "oneDNN on, GELU, MLN by autodiff",
        partial(_train, onednn=True, autodiff=True),
        training=True,
    ),
    Contender("torch", "PyTorch reference, eager", _torch_train, training=True),
]


def _write_reference(settings):
    """S12's weights and the transformers reference holding them, in the work folder."""
    configured_tensorflow(settings)
    reference_artifacts(settings)


def train(contenders, settings, args, log_dir):
    """Times the training contenders, alternating, and prints img/s and peak RSS."""
    call_in_process(os.path.join(log_dir, "reference.log"), _write_reference, settings)
    mode = dataclasses.replace(TRAIN_MODE, train_rounds=args.rounds)
    rows = measure_training(contenders, mode, settings, log_dir, print)
    base = rows[0]
    print("\n| training step, batch 32 | img/s | vs first | peak RSS MiB | in rounds |")
    print("|---|---|---|---|---|")
    for row in rows:
        if row["error"]:
            print(f"| {row['label']} | failed: {row['error'].strip().splitlines()[-1]} |")
            continue
        speed = row["speed"][str(mode.train_batch)]["median"]
        first = base["speed"][str(mode.train_batch)]["median"]
        memory = row.get("memory", {})
        print(
            f"| {row['label']} | {speed:.2f} | {speed / first:.2f}x | "
            f"{memory.get('peak_rss_mib')} | {memory.get('peak_rss_in_rounds_mib')} |"
        )


# --- Running them ------------------------------------------------------------------------


def _write_weights(settings):
    """The ported S12 weights every form loads (random, seeded)."""
    configured_tensorflow(settings)
    import keras

    import keras_poolformer as kp

    keras.utils.set_random_seed(SEED)
    kp.PoolFormerS12(weights=None).save_weights(settings.artifact("weights"))


def compare(contenders, settings, args, log_dir):
    call_in_process(os.path.join(log_dir, "weights.log"), _write_weights, settings)
    bench = Bench([[c] for c in contenders], settings, log_dir, print)
    try:
        bench.warm_up(args.batches)
        images = np.random.default_rng(1).uniform(0, 255, (4, SIZE, SIZE, 3)).astype(np.float32)
        logits = bench.logits(images, chunk=4)
        speeds = bench.rounds(args.batches, args.rounds, args.seconds, warmup=1)
    finally:
        bench.close()
    reference = logits[contenders[0].name]
    base = {b: speeds[contenders[0].name, b] for b in args.batches}
    # Under other load the best round is the better estimate of the unloaded speed.
    headers = [f"batch {b} {stat}" for b in args.batches for stat in ("median", "best")]
    print(f"\n| img/s | {' | '.join(headers)} | max abs diff |")
    print("|---|" + "---|" * (len(headers) + 1))
    for c in contenders:
        if (c.name, args.batches[0]) not in speeds:
            print(f"| {c.label} | failed: {bench.errors.get(c.name)} |")
            continue
        cells = []
        for b in args.batches:
            s = speeds[c.name, b]
            cells.append(f"{s['median']:.1f} x{s['median'] / base[b]['median']:.2f}")
            cells.append(f"{s['max']:.1f} x{s['max'] / base[b]['max']:.2f}")
        diff = np.abs(logits[c.name] - reference).max()
        print(f"| {c.label} | {' | '.join(cells)} | {diff:.1e} |")


def _part(op_name, op_type):
    """Which part of the network a TensorFlow op belongs to, from its name and type.

    Matrix products go by type: once folded, fc2 fuses with the residual add and takes
    the add's name.
    """
    if "downsample" in op_name or "stem" in op_name:
        return "stem + downsampling convs"
    if "Conv2D" in op_type or "MatMul" in op_type:
        return "head" if "head" in op_name else "MLP fc1 + fc2 (1x1 conv or matmul)"
    for key, part in (
        ("mlp", "MLP GELU"),
        ("norm", "norms"),
        ("token_mixer", "pooling"),
        ("layer_scale", "layer scales"),
    ):
        if key in op_name:
            return part
    return "residual adds, preprocessing, other"


def _pass(op_name):
    """Forward, backward (the gradient tape's ops) or the optimizer's update."""
    if op_name.startswith("gradient_tape") or "/gradient_tape/" in op_name:
        return "backward"
    return "optimizer" if "adamw" in op_name.lower() else "forward"


def _saved_model_predict(settings, model):
    """Exports ``model`` (seeded random weights) folded as ``keras-poolformer export``
    does, and returns its ``predict_pixels`` as TensorFlow serves it."""
    import keras

    import keras_poolformer as kp
    from keras_poolformer import export

    keras.utils.set_random_seed(SEED)
    spec = kp.registry.resolve(model)
    net = getattr(kp, spec.constructor)(weights=None)
    folder = export.export_saved_model(
        export.fold(net), os.path.join(settings.workdir, "saved_model")
    )
    keras.backend.clear_session()
    tf = configured_tensorflow(settings)
    signature = tf.saved_model.load(folder).signatures["predict_pixels"]
    return lambda images: signature(images=tf.convert_to_tensor(images))["logits"]


def profile(settings, args):
    """Prints the op time of one form by part of the network, and the top op types."""
    if args.onednn:
        onednn_on()
    configured_tensorflow(settings)
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    images = np.random.default_rng(0).uniform(0, 255, (args.batch, SIZE, SIZE, 3))
    images = images.astype(np.float32)
    if args.saved_model:
        predict = _saved_model_predict(settings, args.model)
        args.form = f"{args.model} SavedModel predict_pixels"
    elif args.train:  # one AdamW step of the library model, as the benchmark times it
        _write_weights(settings)
        step = keras_train(settings)
        labels = np.random.default_rng(1).integers(0, 1000, args.batch)

        def predict(images):
            return step(images, labels)

        args.form = "library, training step"
    else:
        _write_weights(settings)
        predict = {c.name: c for c in FORMS}[args.form].load(settings)
    if args.onednn:
        args.form += ", oneDNN on"
    predict(images)
    predict(images)
    calls = 3
    logdir = os.path.join(settings.workdir, "profile")
    tf.profiler.experimental.start(logdir)
    for _ in range(calls):
        predict(images)
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    with open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[-1], "rb") as f:
        space.ParseFromString(f.read())
    (plane,) = [p for p in space.planes if p.name == "/host:CPU"]
    parts, types, wall = collections.Counter(), collections.Counter(), 0.0
    passes = collections.Counter()
    for line in plane.lines:
        for event in line.events:
            name = plane.event_metadata[event.metadata_id].name
            ms = event.duration_ps / 1e9 / calls
            if name.startswith("EagerLocalExecute"):
                wall += ms
            elif ":" in name and not name.startswith(("ExecutorState", "Eager", "Kernel")):
                op_name, op_type = name.rsplit(":", 1)  # TensorFlow's "name:type" trace
                parts[_part(op_name, op_type)] += ms
                types[op_type] += ms
                passes[_pass(op_name)] += ms
    total = sum(parts.values())
    print(f"{args.form}, batch {args.batch}: {wall:.1f} ms per call, ops {total:.1f} ms")
    tables = [("part", parts), ("op type", types)]
    if args.train:
        tables.insert(0, ("pass", passes))
    for title, counter in tables:
        print(f"\n| {title} | ms per call | share |\n|---|---|---|")
        for key, ms in counter.most_common(12):
            print(f"| {key} | {ms:.1f} | {100 * ms / total:.1f}% |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiment", choices=("threads", "forms", "profile", "train"))
    parser.add_argument("--only", nargs="+", help="contender names to keep")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--form", default="library", help="for profile: a FORMS name")
    parser.add_argument("--batch", type=int, default=32, help="for profile")
    parser.add_argument(
        "--train", action="store_true", help="for profile: one training step instead"
    )
    parser.add_argument(
        "--saved-model", action="store_true", help="for profile: the exported SavedModel instead"
    )
    parser.add_argument("--model", default="s12", help="for profile --saved-model")
    parser.add_argument("--onednn", action="store_true", help="TF_ENABLE_ONEDNN_OPTS=1")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="poolformer_experiments_") as workdir:
        settings = Settings(len(os.sched_getaffinity(0)), 1, workdir)
        if args.experiment == "profile":
            profile(settings, args)
            return
        contenders = {"threads": THREADS, "forms": FORMS, "train": TRAIN}[args.experiment]
        if args.only:
            contenders = [c for c in contenders if c.name in args.only]
        (train if args.experiment == "train" else compare)(contenders, settings, args, workdir)


if __name__ == "__main__":
    main()
