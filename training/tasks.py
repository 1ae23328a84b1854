"""What a training run learns: classification, detection or segmentation.

The loop in :mod:`~keras_poolformer.training.trainer` (distribution, accumulation,
checkpoints, exact resume, ``log.csv``, the curve, TensorBoard) is the same for every
task; a task object supplies the rest:

- ``name`` and ``metrics``: its name (``Config.task``) and the validation columns it adds
  to ``log.csv`` (the first one is the curve's headline);
- ``load_source(data_spec, data_dir, cache_dir)``: the data, with ``.name``,
  ``.class_names``, ``.train`` and ``.val`` (each with ``len()`` and ``.skipped``);
- ``build_model(config, source, init)``: the model to train, optionally with a
  pretrained trunk;
- ``train_dataset(split, config, epoch, batch, num_batches, skip_batches)``: one epoch's
  ``(inputs, targets)`` batches, a function of (seed, epoch, position) only, so that a
  resumed run sees the batches an uninterrupted one would have seen;
- ``loss(model, inputs, targets)``: the per-example loss, shape ``(batch,)``, float32,
  computed in training mode (the loop averages it over the global batch);
- ``evaluate(model, split, config)``: ``{metric: value}`` for ``metrics``.
"""

import importlib

import keras
import numpy as np
import tensorflow as tf

from keras_poolformer.training import classifiers
from keras_poolformer.training import data as data_lib


class ClassificationTask:
    """Image classification with the paper's recipe: soft targets from mixup / cutmix and
    label smoothing, cross-entropy; validation top-1 and top-5."""

    name = "classification"
    metrics = ("val_top1", "val_top5")

    def __init__(self):
        self.num_classes = None
        self._loss = keras.losses.CategoricalCrossentropy(from_logits=True, reduction=None)

    def load_source(self, data_spec, data_dir=None, cache_dir=None):
        source = data_lib.load_source(data_spec, data_dir, cache_dir=cache_dir)
        self.num_classes = len(source.class_names)
        return source

    def build_model(self, config, source, init=None):
        return classifiers.build_model(config, len(source.class_names), init)

    def train_dataset(self, split, config, epoch, batch, num_batches, skip_batches=0):
        return data_lib.train_dataset(
            split, config, epoch, batch, num_batches, skip_batches, self.num_classes
        )

    def loss(self, model, inputs, targets):
        logits = tf.cast(model(inputs, training=True), tf.float32)
        return self._loss(targets, logits)

    def evaluate(self, model, split, config, batch_size=None):
        batch_size = batch_size or max(config.batch_size // config.accum_steps, 1)
        dataset = data_lib.eval_dataset(split, config, batch_size, config.eval_steps)
        top1, top5 = top_k_accuracy(model, dataset)
        return {"val_top1": top1, "val_top5": top5}


def top_k_accuracy(model, dataset):
    """(top-1, top-5) of ``model`` over ``(images, labels)`` batches."""

    @tf.function
    def predict(images):
        return model(images, training=False)

    correct1 = correct5 = count = 0
    for images, labels in dataset:
        logits = predict(images).numpy()
        labels = labels.numpy()
        top5 = np.argsort(-logits, axis=1)[:, :5]
        correct1 += int(np.sum(top5[:, 0] == labels))
        correct5 += int(np.sum(np.any(top5 == labels[:, None], axis=1)))
        count += len(labels)
    return (correct1 / count, correct5 / count) if count else (float("nan"), float("nan"))


# name -> (module of keras_poolformer.training, class); the dense tasks import KerasHub
# and their readers only when a run asks for them.
TASKS = {
    "classification": (__name__, "ClassificationTask"),
    "detection": ("keras_poolformer.training.detection", "DetectionTask"),
    "segmentation": ("keras_poolformer.training.segmentation", "SegmentationTask"),
}


def get(name):
    """A new task object for ``Config.task``; ``ValueError`` naming the tasks."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}.")
    module, cls = TASKS[name]
    return getattr(importlib.import_module(module), cls)()
