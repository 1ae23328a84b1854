"""The training loop: the recipe on any ``tf.distribute`` strategy, resumable at any step.

One optimizer step = ``accum_steps`` micro-batches of ``batch_size / accum_steps``
images, split over the replicas; the loss is the mean over the whole global batch,
so one device, many replicas, many workers and accumulation all compute the same
update. Checkpoints (weights, optimizer state, step, DropPath seed state) are written
every ``checkpoint_every`` steps and at each epoch's end; started again with the
same command, a run continues from its last checkpoint at the exact batch it had
reached. Outputs in ``--output``: ``checkpoints/``, ``log.csv``, ``curve.png``,
``tensorboard/``, ``config.json``, ``classes.json`` and ``final.weights.h5``.
"""

import csv
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf

import keras_poolformer as kp
from keras_poolformer import files
from keras_poolformer.training import data as data_lib
from keras_poolformer.training import tasks
from keras_poolformer.training.classifiers import build_baseline, build_model  # noqa: F401
from keras_poolformer.training.plots import plot_log

STRATEGIES = ("auto", "one-device", "mirrored", "multi-worker", "tpu")


# --- schedule and optimizer --------------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_poolformer")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """timm's cosine schedule, per step: linear warmup from ``warmup_lr`` to ``peak``
    over ``warmup_steps``, cosine from ``peak`` at step 0 of the cycle to ``min_lr``
    at ``decay_steps`` (the cycle counts the warmup steps too, as timm's does), then
    ``min_lr`` through the cooldown."""

    def __init__(self, peak, warmup_steps, decay_steps, warmup_lr=1e-6, min_lr=1e-5):
        self.peak, self.warmup_lr, self.min_lr = float(peak), float(warmup_lr), float(min_lr)
        self.warmup_steps, self.decay_steps = int(warmup_steps), int(decay_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.warmup_lr + (self.peak - self.warmup_lr) * step / max(self.warmup_steps, 1)
        progress = tf.minimum(step / max(self.decay_steps, 1), 1.0)
        cosine = self.min_lr + 0.5 * (self.peak - self.min_lr) * (1 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup_steps, warm, cosine)

    def get_config(self):
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
            "warmup_lr": self.warmup_lr,
            "min_lr": self.min_lr,
        }


@keras.saving.register_keras_serializable(package="keras_poolformer")
class Lamb(keras.optimizers.Lamb):
    """LAMB as timm's ``Lamb`` (v0.6.11, the official MetaFormer ``train.py``'s) computes
    it, on Keras's ``Lamb`` and its state (moments, step):

    - the gradient is first clipped to a global norm of ``max_grad_norm`` (timm's
      default 1.0), over every trainable variable and the whole global batch (all
      replicas' gradients summed, as the update uses them);
    - weight decay is part of the update (``adam_update + weight_decay * w``) and so
      scaled by the trust ratio, where Keras's ``Lamb`` decays apart from it;
    - variables exempt from weight decay get the plain Adam update, without the
      trust ratio (timm's ``always_adapt=False``); Keras's adapts every variable.
    """

    def __init__(self, max_grad_norm=1.0, **kwargs):
        super().__init__(**kwargs)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)

    def _clip_gradients(self, grads):
        grads = super()._clip_gradients(grads)
        if not self.max_grad_norm:
            return grads
        context = tf.distribute.get_replica_context()
        total = grads
        if context is not None and context.num_replicas_in_sync > 1:
            # Each replica holds its share of the sum; the norm is the sum's.
            total = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        norm = tf.linalg.global_norm([g for g in total if g is not None])
        clip = tf.where(norm > self.max_grad_norm, norm / self.max_grad_norm, 1.0)
        return [None if g is None else g / tf.cast(clip, g.dtype) for g in grads]

    def _apply_weight_decay(self, variables):
        pass  # inside update_step, under the trust ratio

    def update_step(self, gradient, variable, learning_rate):
        lr = tf.cast(learning_rate, variable.dtype)
        gradient = tf.cast(gradient, variable.dtype)
        step = tf.cast(self.iterations + 1, variable.dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        m.assign_add((gradient - m) * (1 - self.beta_1))
        v.assign_add((tf.square(gradient) - v) * (1 - self.beta_2))
        bias_1 = 1 - tf.pow(tf.cast(self.beta_1, variable.dtype), step)
        bias_2 = 1 - tf.pow(tf.cast(self.beta_2, variable.dtype), step)
        update = (m / bias_1) / (tf.sqrt(v) / tf.sqrt(bias_2) + self.epsilon)
        if self.weight_decay and self._use_weight_decay(variable):
            update = update + self.weight_decay * variable
            w_norm = tf.norm(variable)
            u_norm = tf.norm(update)
            ratio = tf.where(w_norm > 0, tf.where(u_norm > 0, w_norm / u_norm, 1.0), 1.0)
            update = update * ratio
        variable.assign_sub(lr * update)

    def get_config(self):
        return {**super().get_config(), "max_grad_norm": self.max_grad_norm}


def make_optimizer(config, model, steps_per_epoch):
    """The config's optimizer (AdamW, or timm's LAMB: :class:`Lamb`) with the recipe's
    schedule; biases, norm affines, layer and residual scales, StarReLU's scale and bias
    (every 1-D parameter) are exempt from weight decay, as timm's optimizer factory
    does (it also exempts names in ``no_weight_decay()``, the MetaFormers' ``norm``:
    1-D as well)."""
    schedule = WarmupCosine(
        config.peak_lr,
        config.warmup_epochs * steps_per_epoch,
        config.epochs * steps_per_epoch,
        config.warmup_lr,
        config.min_lr,
    )
    kind = Lamb if getattr(config, "optimizer", "adamw") == "lamb" else keras.optimizers.AdamW
    optimizer = kind(
        learning_rate=schedule,
        weight_decay=config.weight_decay,
        beta_1=config.beta_1,
        beta_2=config.beta_2,
        epsilon=config.epsilon,
    )
    optimizer.exclude_from_weight_decay(
        var_list=[v for v in model.trainable_variables if len(v.shape) <= 1]
    )
    return optimizer


# --- strategy ----------------------------------------------------------------------------


def select_strategy(name="auto"):
    """The ``tf.distribute`` strategy for ``--strategy``; "auto" picks TPU if one is
    configured, multi-worker if ``TF_CONFIG`` names several workers, mirrored with
    several GPUs, else one device."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}.")
    if name == "auto":
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
        workers = tf_config.get("cluster", {}).get("worker", [])
        if os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR"):
            name = "tpu"
        elif len(workers) > 1:
            name = "multi-worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "one-device"
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if name == "multi-worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")


def is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in ("chief", None) or (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


def _set_precision(config, strategy):
    if config.precision == "float32":
        keras.config.set_dtype_policy("float32")
    elif config.precision == "mixed":
        on_gpu = bool(tf.config.list_logical_devices("GPU")) and not isinstance(
            strategy, tf.distribute.TPUStrategy
        )
        keras.config.set_dtype_policy("mixed_float16" if on_gpu else "mixed_bfloat16")
    else:
        raise ValueError(f"precision must be 'float32' or 'mixed', got {config.precision!r}.")


# --- model -------------------------------------------------------------------------------


def seed_variables(model):
    """The state of every DropPath's random generator, then every Dropout's (the
    baselines' MLP head), so that a resumed run draws the same stochastic-depth and
    dropout masks as an uninterrupted one."""
    layers = list(model._flatten_layers())
    return [
        layer.seed_generator.state
        for kind in (kp.layers.DropPath, keras.layers.Dropout)
        for layer in layers
        if isinstance(layer, kind) and getattr(layer, "seed_generator", None) is not None
    ]


def untracked_variables(model):
    """``{name: variable}`` of the model's variables that a ``tf.train.Checkpoint`` of the
    model would not reach: those of layers kept in plain Python lists, such as the batch
    norms of KerasHub's ASPP branches (DeepLabV3), whose moving statistics would otherwise
    restart from their initial values on resume. Named by position in ``model.variables``
    (the same for the same config); empty for our classifiers."""
    reachable = set()
    for node in tf.train.TrackableView(model).descendants():
        reachable.add(id(node))
        reachable.add(id(getattr(node, "value", None)))
    return {
        f"variable_{i}": v
        for i, v in enumerate(model.variables)
        if id(v) not in reachable and id(getattr(v, "value", None)) not in reachable
    }


# --- the run -----------------------------------------------------------------------------


class _Progress:
    """A Keras progress bar on a terminal; a plain line every ``every`` steps otherwise."""

    def __init__(self, total, epoch, every=20):
        self.live = sys.stdout.isatty()
        self.every, self.epoch, self.total = every, epoch, total
        self.bar = keras.utils.Progbar(total) if self.live else None

    def update(self, step, values):
        if self.bar:
            self.bar.update(step, values)
        elif step % self.every == 0 or step == self.total:
            text = " ".join(f"{k}={v:.4g}" for k, v in values)
            print(f"epoch {self.epoch} step {step}/{self.total} {text}", flush=True)


top_k_accuracy = tasks.top_k_accuracy


def train(config, data_spec, output, data_dir=None, strategy="auto", init=None, log=print):
    """Trains ``config`` on ``data_spec`` into ``output``; resumes if ``output`` holds
    checkpoints of the same run (from the newest one that reads back whole, see
    :func:`resume_point`). Returns the final metrics as a dict.

    ``config.task`` chooses what is learnt (:mod:`~keras_poolformer.training.tasks`):
    the task supplies the data, the model, the loss and the validation metrics; the loop
    is the same for all."""
    config.validate()  # API callers skip get_config; stop before building anything
    task = tasks.get(config.task)
    strategy = select_strategy(strategy) if isinstance(strategy, str) else strategy
    chief = is_chief(strategy)
    replicas = strategy.num_replicas_in_sync
    micro_batch = config.batch_size // config.accum_steps
    if micro_batch % replicas:
        raise ValueError(
            f"the global batch of one micro-step ({config.batch_size} / accum_steps "
            f"{config.accum_steps} = {micro_batch}) is not divisible by the {replicas} replicas."
        )
    os.makedirs(output, exist_ok=True)
    ckpt_dir = os.path.join(output, "checkpoints")
    if chief:
        _remove_leftovers(output, ckpt_dir, log)
    source = task.load_source(data_spec, data_dir, cache_dir=output)
    train_split, val_split = source.train, source.val
    num_classes = len(source.class_names)
    for what, split in (("training", train_split), ("validation", val_split)):
        if split.skipped:
            log(f"skipped {len(split.skipped)} unreadable {what} images, e.g. {split.skipped[0]}")
    steps_per_epoch = config.steps_per_epoch or len(train_split) // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"{len(train_split)} training images make no full batch of {config.batch_size}."
        )
    total_epochs = config.epochs + config.cooldown_epochs
    total_steps = total_epochs * steps_per_epoch
    run_config = {**dataclasses.asdict(config), "data": data_spec, "init": init}
    _check_same_run(output, run_config)
    restore_from = resume_point(output, chief, log)
    if chief:
        for name, content in (("config.json", run_config), ("classes.json", source.class_names)):
            with files.atomic_path(os.path.join(output, name)) as tmp, open(tmp, "w") as f:
                json.dump(content, f, indent=2)
        if data_spec == "synthetic" and task.name == "classification":
            _write_samples(source, os.path.join(output, "samples"))

    _set_precision(config, strategy)
    keras.utils.set_random_seed(config.seed)  # the same initial weights on every replica and run
    with strategy.scope():
        model = task.build_model(config, source, init)
        optimizer = make_optimizer(config, model, steps_per_epoch)
        if config.precision == "mixed" and keras.config.dtype_policy().name == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    untracked = untracked_variables(model)
    checkpoint = tf.train.Checkpoint(
        model=model,
        optimizer=optimizer,
        step=step,
        seeds=seed_variables(model),
        **({"untracked": untracked} if untracked else {}),
    )
    if not chief:  # other workers write to a scratch folder, as tf.distribute expects
        ckpt_dir = os.path.join(output, f".worker_{strategy.cluster_resolver.task_id}_checkpoints")
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir, max_to_keep=2)
    if restore_from:
        checkpoint.restore(restore_from).assert_existing_objects_matched()
        log(f"resumed from {restore_from} at step {int(step.numpy())} of {total_steps}")
        if chief:
            _drop_log_rows_after(os.path.join(output, "log.csv"), int(step.numpy()), log)
    elif chief:
        log(
            f"training {model.name} ({model.count_params():,} parameters, {task.name}) on "
            f"{source.name}: {len(train_split)} train / {len(val_split)} val images, "
            f"{num_classes} classes; "
            f"{total_epochs} epochs x {steps_per_epoch} steps, global batch {config.batch_size} "
            f"({replicas} replica(s), accum {config.accum_steps}), peak lr {config.peak_lr:.3g}"
        )

    def replica_grads(inputs, targets):
        with tf.GradientTape() as tape:
            per_example = task.loss(model, inputs, targets)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=micro_batch)
            loss = loss / config.accum_steps
            scaled = optimizer.scale_loss(loss) if hasattr(optimizer, "scale_loss") else loss
        return loss, tape.gradient(scaled, model.trainable_variables)

    if config.xla:  # compile the forward and backward pass; the data and all-reduce stay outside
        replica_grads = tf.function(replica_grads, jit_compile=True)

    def replica_apply(grads):
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))

    def add(a, b):
        return [x + y for x, y in zip(a, b, strict=True)]

    @tf.function
    def train_step(iterator):
        total, grads = 0.0, None
        for _ in range(config.accum_steps):
            images, targets = next(iterator)
            loss, micro = strategy.run(replica_grads, (images, targets))
            grads = micro if grads is None else strategy.run(add, (grads, micro))
            total += strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
        strategy.run(replica_apply, (grads,))
        step.assign_add(1)
        return total

    log_path = os.path.join(output, "log.csv")
    writer = tf.summary.create_file_writer(os.path.join(output, "tensorboard")) if chief else None
    metrics = {}
    start_step = int(step.numpy())
    for epoch in range(start_step // steps_per_epoch, total_epochs):
        done = start_step - epoch * steps_per_epoch if epoch == start_step // steps_per_epoch else 0
        dataset = task.train_dataset(
            train_split,
            config,
            epoch,
            micro_batch,
            steps_per_epoch * config.accum_steps,
            done * config.accum_steps,
        )
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        iterator = iter(strategy.experimental_distribute_dataset(dataset.with_options(options)))
        progress = _Progress(steps_per_epoch, epoch + 1)
        started, losses = time.time(), []
        for in_epoch in range(done, steps_per_epoch):
            loss = float(train_step(iterator))
            losses.append(loss)
            current = int(step.numpy())
            progress.update(in_epoch + 1, [("loss", loss), ("lr", float(optimizer.learning_rate))])
            if current % config.checkpoint_every == 0:
                manager.save(checkpoint_number=current)
        row = {
            "epoch": epoch + 1,
            "step": int(step.numpy()),
            "lr": float(optimizer.learning_rate),
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "seconds": round(time.time() - started, 1),
        }
        last = epoch + 1 == total_epochs
        if len(val_split) and ((epoch + 1) % config.eval_every == 0 or last):
            row.update(task.evaluate(model, val_split, config))
        manager.save(checkpoint_number=int(step.numpy()))
        if chief:
            _append_csv(log_path, row, log_fields(task))
            plot_log(log_path, os.path.join(output, "curve.png"), f"{model.name} on {source.name}")
            with writer.as_default(step=row["step"]):
                for key, value in row.items():
                    if key not in ("epoch", "step"):
                        tf.summary.scalar(key, value)
            log(
                " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                )
            )
        metrics = row

    if chief:
        with files.atomic_path(os.path.join(output, "final.weights.h5")) as tmp:
            model.save_weights(tmp)
    else:
        tf.io.gfile.rmtree(ckpt_dir)
    return metrics


# Fields that may change between a run and its resumption.
_RESUMABLE_CHANGES = {"checkpoint_every", "eval_every", "eval_steps", "note"}


def _check_same_run(output, run_config):
    """Refuses to resume checkpoints of another experiment into ``output``."""
    saved_path = os.path.join(output, "config.json")
    if not (_checkpoints(os.path.join(output, "checkpoints")) and os.path.isfile(saved_path)):
        return
    with open(saved_path, encoding="utf-8") as f:
        saved = json.load(f)
    current = json.loads(json.dumps(run_config))  # tuples as lists, as saved
    # A run saved before a field existed ran with that field's default.
    from keras_poolformer.training import configs

    for field in dataclasses.fields(configs.Config):
        if field.name not in saved and current.get(field.name) == field.default:
            saved[field.name] = current[field.name]
    differ = sorted(
        k for k in set(saved) | set(current)
        if k not in _RESUMABLE_CHANGES and saved.get(k) != current.get(k)
    )  # fmt: skip
    if differ:
        changes = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in differ)
        raise ValueError(
            f"'{output}' holds checkpoints of a different run ({changes}); resume it with "
            "the same config and data, or train into a new --output."
        )


# --- resuming ------------------------------------------------------------------------------

_CHECKPOINT_FILE = re.compile(r"ckpt-(\d+)\.(?:index|data-\d+-of-\d+)")
_CHECKPOINT_PREFIX = re.compile(r"ckpt-(\d+)")
# What a killed tf.train.Checkpoint save leaves: its shard folder and its state file temporary.
_CHECKPOINT_TEMP = re.compile(r"ckpt-\d+_temp|checkpoint\.tmp[0-9a-f]+")


def _checkpoint_state(ckpt_dir):
    """The parsed ``checkpoint`` state file, or None when it is missing or unparsable
    (the files on disk still say which checkpoints exist)."""
    try:
        return tf.train.get_checkpoint_state(ckpt_dir)
    except Exception:
        return None


def _checkpoints(ckpt_dir):
    """``{number: timestamp or None}`` of every checkpoint that ``ckpt_dir``'s files or
    its ``checkpoint`` state file name, whole or not."""
    found = {}
    state = _checkpoint_state(ckpt_dir)
    if state is not None:
        times = list(state.all_model_checkpoint_timestamps)
        paths = list(state.all_model_checkpoint_paths)
        for i, path in enumerate([*paths, state.model_checkpoint_path]):
            match = _CHECKPOINT_PREFIX.fullmatch(os.path.basename(path))
            if match:
                found.setdefault(int(match[1]), times[i] if i < len(times) else None)
    if os.path.isdir(ckpt_dir):
        for name in os.listdir(ckpt_dir):
            match = _CHECKPOINT_FILE.fullmatch(name)
            if match:
                found.setdefault(int(match[1]), None)
    return found


def checkpoint_problem(prefix):
    """What is wrong with the checkpoint at ``prefix`` (one line), or None when its
    index parses, every data shard is there and every tensor reads back with a
    matching checksum: what a restore needs, checked before trusting it."""
    if not os.path.isfile(f"{prefix}.index"):
        return "its index file is missing"
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)  # checks the stored crc32c of the tensor's bytes
    except Exception as error:  # TF raises OpError subclasses, IndexError, ValueError...
        lines = str(error).strip().splitlines() or [""]
        return f"{type(error).__name__}: {lines[0][:200]}"
    return None


def _logged_rows(log_path):
    if not os.path.isfile(log_path):
        return []
    with open(log_path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def resume_point(output, chief=True, log=print):
    """The prefix of the newest checkpoint in ``<output>/checkpoints`` that reads back
    whole (:func:`checkpoint_problem`), or None for a run that has not started.

    Newer checkpoints that fail the check are skipped with a warning and (on the chief)
    moved to ``checkpoints/damaged/``, and the ``checkpoint`` state file is rewritten to
    end at the one resumed from, so that the CheckpointManager's rotation keeps it until
    two newer ones exist. A folder with a training log or checkpoints but none usable
    is an error, never a silent restart from step 0 over the old log.
    """
    ckpt_dir = os.path.join(output, "checkpoints")
    found = _checkpoints(ckpt_dir)
    skipped, good = [], None
    for number in sorted(found, reverse=True):
        problem = checkpoint_problem(os.path.join(ckpt_dir, f"ckpt-{number}"))
        if problem is None:
            good = number
            break
        skipped.append((number, problem))
    if good is None:
        rows = _logged_rows(os.path.join(output, "log.csv"))
        if not (rows or skipped):
            return None
        what = "; ".join(f"ckpt-{n}: {p}" for n, p in skipped[:2]) or "there are none"
        progress = f"its log.csv has {len(rows)} epoch row(s)" if rows else "it has checkpoints"
        raise ValueError(
            f"'{output}' cannot resume: {progress} but no checkpoint is usable ({what}). "
            f"Delete '{output}' (or its log.csv and checkpoints/) to train from scratch, "
            "or train into a new --output."
        )
    if not chief:
        return os.path.join(ckpt_dir, f"ckpt-{good}")
    damaged = os.path.join(ckpt_dir, "damaged")
    for number, problem in skipped:
        names = [n for n in os.listdir(ckpt_dir) if n.startswith(f"ckpt-{number}.")]
        for name in names:
            os.makedirs(damaged, exist_ok=True)
            os.replace(os.path.join(ckpt_dir, name), os.path.join(damaged, name))
        where = f"moved to {damaged}" if names else "nothing left to move"
        log(f"warning: skipped checkpoint ckpt-{number} ({problem}); {where}")
    state = _checkpoint_state(ckpt_dir)
    if skipped or state is None or os.path.basename(state.model_checkpoint_path) != f"ckpt-{good}":
        kept = [n for n in sorted(found) if n <= good and os.path.isfile(
            os.path.join(ckpt_dir, f"ckpt-{n}.index"))]  # fmt: skip
        _write_checkpoint_state(ckpt_dir, kept, found)
    return os.path.join(ckpt_dir, f"ckpt-{good}")


def _write_checkpoint_state(ckpt_dir, numbers, timestamps):
    """The ``checkpoint`` state file (a text proto that CheckpointManager reads) listing
    ``numbers``, oldest first, the last one as the latest."""
    lines = [f'model_checkpoint_path: "ckpt-{numbers[-1]}"']
    lines += [f'all_model_checkpoint_paths: "ckpt-{n}"' for n in numbers]
    for n in numbers:
        stamp = timestamps.get(n) or os.path.getmtime(os.path.join(ckpt_dir, f"ckpt-{n}.index"))
        lines.append(f"all_model_checkpoint_timestamps: {stamp!r}")
    path = os.path.join(ckpt_dir, "checkpoint")
    with files.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def _remove_leftovers(output, ckpt_dir, log):
    """Removes what a killed run leaves behind: ``atomic_path`` temporaries in the run
    and checkpoint folders, and half-written checkpoint shards and state files."""
    removed = files.remove_leftovers(output, min_age=60)
    removed += files.remove_leftovers(ckpt_dir, min_age=0)  # only this process writes here
    for name in os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []:
        if _CHECKPOINT_TEMP.fullmatch(name):
            path = os.path.join(ckpt_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            removed.append(path)
    if removed:
        names = ", ".join(os.path.basename(p) for p in removed[:3])
        log(f"removed {len(removed)} temporary file(s) of an interrupted run ({names})")


def _drop_log_rows_after(log_path, step, log):
    """Keeps log.csv one row per epoch when a run resumes from a checkpoint older than
    its last logged epoch: the rows past ``step`` are trained again."""
    rows = _logged_rows(log_path)
    kept = [row for row in rows if int(row["step"]) <= step]
    if len(kept) == len(rows):
        return
    with files.atomic_path(log_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    log(f"dropped {len(rows) - len(kept)} log.csv row(s) past step {step}; they run again")


def _write_samples(source, folder):
    """One validation image per class, named after it, for trying ``predict --run``."""
    os.makedirs(folder, exist_ok=True)
    for index, name in enumerate(source.class_names):
        position = int(np.flatnonzero(source.val.labels == index)[0])
        with open(os.path.join(folder, f"{index}_{name}.png"), "wb") as f:
            f.write(source.val.images[position])


@dataclasses.dataclass
class _Classes:
    """What a task's ``build_model`` reads of a source, for rebuilding a finished run."""

    class_names: list


def load_run(folder):
    """``(config, class_names, model)`` of a training output folder, with its final weights."""
    from keras_poolformer.training import configs

    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        saved = json.load(f)
    with open(os.path.join(folder, "classes.json"), encoding="utf-8") as f:
        class_names = json.load(f)
    fields = {f.name for f in dataclasses.fields(configs.Config)}
    config = configs.Config(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in fields}
    )
    if config.task == "classification":
        model = build_model(config, len(class_names))
    else:
        model = tasks.get(config.task).build_model(config, _Classes(class_names))
    model.load_weights(os.path.join(folder, "final.weights.h5"))
    return config, class_names, model, saved["data"]


def log_fields(task):
    """The columns of ``log.csv``: the loop's, with the task's validation metrics."""
    return ["epoch", "step", "lr", "train_loss", *task.metrics, "seconds"]


def _append_csv(path, row, fields):
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def evaluate(model, source, config, split="val", batch_size=32):
    """Top-1 / top-5 of ``model`` on a split of a :class:`~keras_poolformer.training.data.Source`
    with the evaluation transform."""
    chosen = source.val if split == "val" else source.train
    if not len(chosen):
        raise ValueError(f"{source.name} has no {split} images.")
    return top_k_accuracy(model, data_lib.eval_dataset(chosen, config, batch_size))
