"""Semantic segmentation as a training task: a DeepLabV3+ head on our backbones, CamVid-style data.

The training loop (:func:`keras_poolformer.training.trainer.train`) is shared by every
task; :class:`SegmentationTask` supplies what is particular to segmentation: the data
(``--data masks:PATH``), the model, the pixel loss and mean IoU.

Data (``masks:PATH``): ``PATH/train`` and ``PATH/val``, each with ``images/`` (``.jpg``,
``.jpeg`` or ``.png``) and ``labels/`` (``.png``), an image and its mask sharing a file
stem. A mask is a single-channel PNG (greyscale ``L``, or a palette ``P`` image whose
indices are the classes) of its image's size, holding one class index per pixel.

Classes and the ignore index, the rule:

- ``PATH/classes.txt``, when present, names the classes, one per line, in index order;
- without it the folder must look like CamVid: every mask value is at most 11, and the
  classes are :data:`CAMVID_CLASSES`;
- the ignore index is the number of classes (11 for CamVid, :data:`IGNORE_INDEX`): its
  pixels count in neither the loss nor the metrics. Any other value at or above the
  number of classes is an error.

Every mask is checked once when the source is loaded (decodes as a single-channel PNG,
same size as its image, values in range), so a bad file stops the run before training,
with its path in the ``ValueError``; the result is kept in ``cache_dir`` (keyed by every
file's path, size and modification time) so a resumed run does not re-read them.

Sizes: training takes square crops of ``config.image_size`` pixels a side (a multiple of
32). Evaluation and prediction take each image whole at its own size, reflect-padded
at the bottom and right to a multiple of 32 (CamVid's 360x480 runs at 384x480); the
padding's predictions are cut off and its pixels never counted. The exported SavedModel
runs on a fixed canvas, 384x480 by default (see :func:`export_saved_model`). The
model is therefore built with an input of any size, ``(None, None, 3)``: the registry's
models with position embeddings or a random / spatial-MLP mixer, which need a fixed
size, are not supported here.

Pixels: every model takes RGB in 0..255 and normalises them inside (ImageNet mean and
std), the MetaFormers as our classifiers do, the ResNet through
:class:`keras_poolformer.hub.ResNetBackbone`.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import weakref

import keras
import numpy as np
import tensorflow as tf

from keras_poolformer import files
from keras_poolformer.imagenet import decode_image
from keras_poolformer.training import backbones
from keras_poolformer.training import data as data_lib

CAMVID_CLASSES = (
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign_symbol",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
)
IGNORE_INDEX = 11  # CamVid's "unlabelled"; in general the ignore index is len(classes)

# The colours the CamVid literature draws its 11 classes in (SegNet's palette).
CAMVID_COLOURS = (
    (128, 128, 128),
    (128, 0, 0),
    (192, 192, 128),
    (128, 64, 128),
    (60, 40, 222),
    (128, 128, 0),
    (192, 128, 128),
    (64, 64, 128),
    (64, 0, 128),
    (64, 64, 0),
    (0, 128, 192),
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MULTIPLE = 32  # the backbones' stride: every input side is a multiple of it
SCALE_RANGE = (0.5, 2.0)  # random scale of the training augmentation
_CHECK_VERSION = 1  # bump when the mask check changes, to redo cached scans


# --- the reader ----------------------------------------------------------------------------


@dataclasses.dataclass
class MaskSplit:
    """A fixed-order split: image paths and their mask paths. ``skipped`` is always
    empty (a broken file is an error here, not a skip); it is there for the loop."""

    images: np.ndarray
    masks: np.ndarray
    skipped: tuple = ()

    def __len__(self):
        return len(self.images)


@dataclasses.dataclass
class MaskSource:
    name: str
    train: MaskSplit
    val: MaskSplit
    class_names: list
    ignore_index: int


def _pairs(folder):
    """Sorted (image paths, mask paths) of ``folder/images`` and ``folder/labels``;
    ``ValueError`` naming the first file without its partner."""
    image_dir, label_dir = os.path.join(folder, "images"), os.path.join(folder, "labels")
    for needed in (image_dir, label_dir):
        if not os.path.isdir(needed):
            raise ValueError(f"segmentation data folder '{needed}' does not exist.")
    images = {
        os.path.splitext(f)[0]: os.path.join(image_dir, f)
        for f in sorted(os.listdir(image_dir))
        if f.lower().endswith(IMAGE_SUFFIXES)
    }
    masks = {
        os.path.splitext(f)[0]: os.path.join(label_dir, f)
        for f in sorted(os.listdir(label_dir))
        if f.lower().endswith(".png")
    }
    for stem in sorted(images):
        if stem not in masks:
            raise ValueError(f"image '{images[stem]}' has no mask ({label_dir}/{stem}.png).")
    for stem in sorted(masks):
        if stem not in images:
            raise ValueError(f"mask '{masks[stem]}' has no image in {image_dir}.")
    stems = sorted(images)
    return np.array([images[s] for s in stems]), np.array([masks[s] for s in stems])


def read_mask(path):
    """A mask PNG as a ``uint8`` array ``(height, width)``: greyscale values or palette
    indices, never colours; ``ValueError`` naming the file otherwise."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise ValueError(f"mask '{path}' is a {image.format}, not a PNG.")
            if image.mode not in ("L", "P"):
                raise ValueError(
                    f"mask '{path}' is a {image.mode} PNG; a mask is single-channel "
                    "(greyscale or palette), one class index per pixel."
                )
            return np.asarray(image, dtype=np.uint8)
    except ValueError:
        raise
    except Exception as error:  # Pillow's own errors for a truncated or foreign file
        raise ValueError(f"mask '{path}' does not decode as a PNG: {error}") from None


def _image_size(path):
    """(width, height) of an image from its header."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except Exception as error:
        raise ValueError(f"image '{path}' does not decode: {error}") from None


def _fingerprint(paths):
    digest = hashlib.sha256(str(_CHECK_VERSION).encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def check_masks(images, masks, cache_file=None):
    """Checks every mask (a single-channel PNG, its image's size) and returns the
    largest value found; ``ValueError`` naming the first bad file. The result is kept
    in ``cache_file`` under a fingerprint of all the files, and reused while it holds."""
    key = _fingerprint([*images, *masks])
    if cache_file and os.path.isfile(cache_file):
        with open(cache_file, encoding="utf-8") as f:
            cached = json.load(f)
        if cached.get("fingerprint") == key:
            return cached["max_value"]
    largest = 0
    for image_path, mask_path in zip(images, masks, strict=True):
        mask = read_mask(mask_path)
        width, height = _image_size(image_path)
        if mask.shape != (height, width):
            raise ValueError(
                f"mask '{mask_path}' is {mask.shape[1]}x{mask.shape[0]}, its image "
                f"'{image_path}' {width}x{height}."
            )
        largest = max(largest, int(mask.max()) if mask.size else 0)
    if cache_file:
        with files.atomic_path(cache_file) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump({"fingerprint": key, "max_value": largest}, f)
    return largest


def _values_in_range(masks, num_classes, ignore_index):
    """``ValueError`` naming the first mask holding a value that is neither a class
    nor the ignore index."""
    for path in masks:
        mask = read_mask(path)
        bad = (mask >= num_classes) & (mask != ignore_index)
        if bad.any():
            values = sorted(set(np.unique(mask[bad]).tolist()))
            raise ValueError(
                f"mask '{path}' holds class value(s) {values}: there are {num_classes} "
                f"classes (0..{num_classes - 1}) and the ignore index is {ignore_index} "
                "(without classes.txt the folder is read as CamVid's 11 classes; name the "
                "classes, one a line, in classes.txt)."
            )


def masks_source(path, cache_dir=None):
    """The :class:`MaskSource` of a ``masks:PATH`` folder (see the module docstring for
    the layout and the class rule)."""
    path = os.fspath(path)
    if not os.path.isdir(os.path.join(path, "train")):
        raise ValueError(f"segmentation data folder '{path}' has no train/ sub-folder.")
    classes_file = os.path.join(path, "classes.txt")
    if os.path.isfile(classes_file):
        with open(classes_file, encoding="utf-8") as f:
            class_names = [line.strip() for line in f if line.strip()]
        if not class_names:
            raise ValueError(f"'{classes_file}' names no classes.")
    else:
        class_names = list(CAMVID_CLASSES)
    ignore_index = len(class_names)

    splits, largest = {}, 0
    for split in ("train", "val"):
        folder = os.path.join(path, split)
        if split == "val" and not os.path.isdir(folder):
            splits[split] = MaskSplit(np.array([], str), np.array([], str))
            continue
        images, masks = _pairs(folder)
        cache = os.path.join(cache_dir, f"mask_scan_{split}.json") if cache_dir else None
        largest = max(largest, check_masks(images, masks, cache))
        splits[split] = MaskSplit(images, masks)
    if not len(splits["train"]):
        raise ValueError(f"segmentation data folder '{path}/train' holds no images.")
    if largest > ignore_index:  # a value neither a class nor ignored: find its file
        for split in splits.values():
            _values_in_range(split.masks, len(class_names), ignore_index)
    return MaskSource(f"masks:{path}", splits["train"], splits["val"], class_names, ignore_index)


# --- pipelines ------------------------------------------------------------------------------


def _load_mask(path):
    """A mask file as ``int32 (height, width)`` in a ``tf.data`` pipeline (Pillow, so
    that palette PNGs give their indices; TensorFlow's decoder would give colours)."""
    mask = tf.numpy_function(lambda p: read_mask(p.decode()), [path], tf.uint8, stateful=False)
    mask.set_shape([None, None])
    return tf.cast(mask, tf.int32)


def _load_pair(image_path, mask_path):
    image = decode_image(tf.io.read_file(image_path))
    return tf.cast(image, tf.float32), _load_mask(mask_path)


def augment_pair(image, mask, seed, size, hflip, ignore_index):
    """The training augmentation of one example, a function of ``seed`` (a stateless
    seed, shape (2,)): a random scale in :data:`SCALE_RANGE` (image bilinear, mask
    nearest), a random ``size`` x ``size`` crop (padded with the ignore index, and black
    pixels, where the scaled image is smaller), a horizontal flip when ``hflip``.

    Returns float32 ``(size, size, 3)`` pixels in 0..255 and an int32 ``(size, size)``
    mask."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.random.stateless_uniform([], seeds[0], *SCALE_RANGE)
    new = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 1)
    image = tf.image.resize(image, new, method="bilinear")
    image = tf.clip_by_value(image, 0.0, 255.0)
    mask = tf.image.resize(mask[..., None], new, method="nearest")[..., 0]
    pad = tf.maximum(size - new, 0)
    image = tf.pad(image, [[0, pad[0]], [0, pad[1]], [0, 0]])
    mask = tf.pad(mask, [[0, pad[0]], [0, pad[1]]], constant_values=ignore_index)
    padded = tf.shape(mask)
    top = tf.random.stateless_uniform([], seeds[1], 0, padded[0] - size + 1, tf.int32)
    left = tf.random.stateless_uniform([], seeds[2], 0, padded[1] - size + 1, tf.int32)
    image = image[top : top + size, left : left + size]
    mask = mask[top : top + size, left : left + size]
    if hflip:
        flip = tf.random.stateless_uniform([], seeds[3]) < 0.5
        image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
        mask = tf.cond(flip, lambda: mask[:, ::-1], lambda: mask)
    image.set_shape([size, size, 3])
    mask.set_shape([size, size])
    return image, mask


def pad_to_multiple(image, multiple=MULTIPLE):
    """``image`` (h, w, c) reflect-padded at the bottom and right so that both sides are
    multiples of ``multiple`` (symmetric padding for images smaller than the pad)."""
    shape = tf.shape(image)
    pad_h = (-shape[0]) % multiple
    pad_w = (-shape[1]) % multiple
    return tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]], mode="SYMMETRIC")


def _pad_mask(mask, ignore_index, multiple=MULTIPLE):
    shape = tf.shape(mask)
    pad_h, pad_w = (-shape[0]) % multiple, (-shape[1]) % multiple
    return tf.pad(mask, [[0, pad_h], [0, pad_w]], constant_values=ignore_index)


def eval_dataset(split, batch, ignore_index, max_batches=0):
    """Validation batches ``(images, masks)`` of whole images, each padded to a multiple
    of 32 (masks with the ignore index); a batch's images are padded to its largest."""
    dataset = tf.data.Dataset.from_tensor_slices((split.images, split.masks))
    if max_batches:
        dataset = dataset.take(max_batches * batch)

    def example(image_path, mask_path):
        image, mask = _load_pair(image_path, mask_path)
        return pad_to_multiple(image), _pad_mask(mask, ignore_index)

    dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.padded_batch(batch, padding_values=(0.0, ignore_index))
    return dataset.prefetch(tf.data.AUTOTUNE)


# --- the model ---------------------------------------------------------------------------------


def build_segmenter(config, num_classes):
    """DeepLabV3+ (KerasHub's ``DeepLabV3ImageSegmenter``) on ``config``'s backbone:
    ASPP on P5 (rates 6, 12, 18), P2 as the low-level feature, logits (no activation)
    at the input's resolution, inputs of any size whose sides are multiples of 32."""
    import keras_hub

    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=backbones.build_encoder(config),
        low_level_feature_key="P2",
        spatial_pyramid_pooling_key="P5",
        dilation_rates=[6, 12, 18],
        upsampling_size=8,
    )
    model = keras_hub.models.DeepLabV3ImageSegmenter(
        backbone=backbone,
        num_classes=num_classes,
        activation=None,
        name=f"deeplabv3plus_{config.model}",
    )
    backbones.freeze_unused(backbone.image_encoder)
    return model


def init_backbone(model, config, init):
    """Fills the segmenter's image encoder from ``init`` (see
    :func:`keras_poolformer.training.backbones.init_encoder`); the head stays fresh."""
    backbones.init_encoder(model.backbone.image_encoder, config, init)


_LOGITS = weakref.WeakKeyDictionary()


def logits_function(model):
    """``f(images, training)`` giving ``model``'s logits more cheaply, with the same
    weights: KerasHub's DeepLabV3 upsamples its 256-channel head x4 (bilinear) and only
    then applies the 1x1 class convolution; both are linear, so they commute, and this
    applies the convolution first (the same logits to float rounding, about 2/3 of a
    CPU forward pass saved). Any other model (a test's stand-in) is returned as is."""
    if model in _LOGITS:
        return _LOGITS[model]
    try:
        upsample = model.backbone.get_layer("backbone_output_upsampling")
        head = model.backbone.get_layer("segmentation_head_relu")
        conv = model.output_conv
    except (AttributeError, ValueError):
        return model
    if conv.activation not in (None, keras.activations.linear) or conv.use_bias:
        return model
    features = keras.Model(model.backbone.inputs, head.output)
    factor = tuple(upsample.size)

    def logits(images, training=False):
        low = conv(features(images, training=training))
        shape = tf.shape(low)
        size = (shape[1] * factor[0], shape[2] * factor[1])
        return tf.image.resize(low, size, method=upsample.interpolation)

    _LOGITS[model] = logits
    return logits


# --- the task ----------------------------------------------------------------------------------


def _per_pixel_loss(targets, logits, ignore_index):
    """Per-image cross-entropy ``(batch,)``: the mean over each image's labelled pixels
    (0 for an image without any)."""
    logits = tf.cast(logits, tf.float32)
    targets = tf.cast(targets, tf.int32)
    num_classes = tf.shape(logits)[-1]
    valid = (targets != ignore_index) & (targets >= 0) & (targets < num_classes)
    safe = tf.where(valid, targets, tf.zeros_like(targets))
    pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
    weights = tf.cast(valid, tf.float32)
    total = tf.reduce_sum(pixel * weights, axis=[1, 2])
    count = tf.reduce_sum(weights, axis=[1, 2])
    return tf.math.divide_no_nan(total, count)


def _predict_function(model):
    logits_of = logits_function(model)

    # One trace per input size: Keras's bilinear UpSampling2D cannot take sizes unknown
    # when traced (a generalised trace would fail), and a split rarely has many sizes.
    @tf.function
    def predict(images):
        return tf.cast(logits_of(images, training=False), tf.float32)

    return predict


def confusion_metrics(model, split, config, metrics, ignore_index, batch=None):
    """Updates the Keras ``metrics`` (IoU family, sparse labels and predictions) with
    ``model``'s class maps over ``split``, padding pixels and ignored ones left out."""
    batch = batch or max(min(config.batch_size // config.accum_steps, 8), 1)
    predict = _predict_function(model)
    for images, masks in eval_dataset(split, batch, ignore_index, config.eval_steps):
        predicted = tf.argmax(predict(images), axis=-1, output_type=tf.int32)
        for metric in metrics:
            metric.update_state(masks, predicted)
    return metrics


def _mean_iou(num_classes, ignore_index):
    return keras.metrics.MeanIoU(
        num_classes=num_classes,
        ignore_class=ignore_index,
        sparse_y_true=True,
        sparse_y_pred=True,
        name="miou",
    )


def _pixel_accuracy(mean_iou):
    """Correct / counted pixels, read off the metric's own confusion matrix."""
    matrix = np.asarray(keras.ops.convert_to_numpy(mean_iou.total_cm), np.float64)
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else float("nan")


def per_class_iou(model, split, config, class_names, ignore_index=None):
    """``{class name: IoU}`` over ``split`` (``keras.metrics.IoU`` per class; ``nan``
    for a class neither labelled nor predicted anywhere), for a report."""
    ignore_index = len(class_names) if ignore_index is None else ignore_index
    num = len(class_names)
    per_class = [
        keras.metrics.IoU(
            num_classes=num,
            target_class_ids=[c],
            ignore_class=ignore_index,
            sparse_y_true=True,
            sparse_y_pred=True,
        )
        for c in range(num)
    ]
    mean_iou = _mean_iou(num, ignore_index)
    confusion_metrics(model, split, config, [*per_class, mean_iou], ignore_index)
    matrix = np.asarray(keras.ops.convert_to_numpy(mean_iou.total_cm))
    present = matrix.sum(axis=0) + matrix.sum(axis=1) > 0
    return {
        name: float(metric.result()) if present[c] else float("nan")
        for c, (name, metric) in enumerate(zip(class_names, per_class, strict=True))
    }


class SegmentationTask:
    """Semantic segmentation: DeepLabV3+ on our backbones, per-pixel cross-entropy with
    an ignore index, validation mean IoU and pixel accuracy on whole images."""

    name = "segmentation"
    metrics = ("val_miou", "val_pixel_acc")

    def __init__(self):
        self.class_names = list(CAMVID_CLASSES)
        self.ignore_index = IGNORE_INDEX

    def _adopt(self, source):
        self.class_names = list(source.class_names)
        self.ignore_index = getattr(source, "ignore_index", len(source.class_names))

    def load_source(self, data_spec, data_dir=None, cache_dir=None):
        """The data of ``masks:PATH`` (``data_dir`` is unused: the path is the spec's)."""
        kind, _, rest = data_spec.partition(":")
        if kind != "masks" or not rest:
            raise ValueError(
                f"segmentation reads data spec masks:PATH (train/ and val/ with images/ "
                f"and labels/), got {data_spec!r}."
            )
        source = masks_source(rest, cache_dir)
        self._adopt(source)
        return source

    def build_model(self, config, source, init=None):
        """DeepLabV3+ on ``config.model``'s backbone (:func:`build_segmenter`), its
        backbone optionally initialised from ``init`` (:func:`init_backbone`)."""
        self._adopt(source)
        model = build_segmenter(config, len(source.class_names))
        if init:
            init_backbone(model, config, init)
        return model

    def train_dataset(self, split, config, epoch, batch, num_batches, skip_batches=0):
        """One epoch's ``num_batches - skip_batches`` batches ``(images float32 (B, S, S, 3)
        in 0..255, masks int32 (B, S, S))``, S = ``config.image_size``. The order is
        :func:`~keras_poolformer.training.data.epoch_order` of (seed, epoch), wrapping
        round a small split; each example's augmentation a stateless seed of (seed,
        epoch, position): a resumed run reads exactly the batches it had not seen."""
        size = config.image_size
        if size % MULTIPLE:
            raise ValueError(f"image_size {size} is not a multiple of {MULTIPLE}.")
        start, end = skip_batches * batch, num_batches * batch
        epoch_seed = config.seed * 1_000_003 + epoch
        order = np.resize(data_lib.epoch_order(len(split), config.seed, epoch), end)[start:]
        positions = np.arange(start, end, dtype=np.int64)
        dataset = tf.data.Dataset.from_tensor_slices(
            (positions, split.images[order], split.masks[order])
        )
        ignore, hflip = self.ignore_index, bool(config.hflip)

        def example(position, image_path, mask_path):
            image, mask = _load_pair(image_path, mask_path)
            seed = tf.stack([tf.constant(epoch_seed, tf.int64), position])
            return augment_pair(image, mask, seed, size, hflip, ignore)

        dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return dataset.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    def loss(self, model, inputs, targets):
        """Per-example loss ``(batch,)`` float32: pixel cross-entropy from the logits,
        averaged over each image's pixels that are not the ignore index."""
        logits = logits_function(model)(inputs, training=True)
        return _per_pixel_loss(targets, logits, self.ignore_index)

    def evaluate(self, model, split, config):
        """``{"val_miou", "val_pixel_acc"}`` over whole ``split`` images
        (``keras.metrics.MeanIoU``; ``config.eval_steps`` batches when set)."""
        mean_iou = _mean_iou(len(self.class_names), self.ignore_index)
        confusion_metrics(model, split, config, [mean_iou], self.ignore_index)
        return {"val_miou": float(mean_iou.result()), "val_pixel_acc": _pixel_accuracy(mean_iou)}


# --- prediction, pictures, export -------------------------------------------------------


def predict_masks(model, paths, config=None):
    """Class maps (int32 arrays, each its image's height x width) of image files, each
    run whole (padded to a multiple of 32, the padding cut off). ``config`` is unused
    (the model takes any size); it is there for the task's other calls' shape."""
    predict = _predict_function(model)
    out = []
    for path in paths:
        image = tf.cast(decode_image(tf.io.read_file(os.fspath(path))), tf.float32)
        height, width = image.shape[0], image.shape[1]
        logits = predict(pad_to_multiple(image)[None])[0, :height, :width]
        out.append(tf.argmax(logits, axis=-1, output_type=tf.int32).numpy())
    return out


def _colours(count):
    """``count`` RGB colours: CamVid's palette first, then fixed pseudo-random ones."""
    rng = np.random.default_rng(0)
    extra = rng.integers(0, 256, (max(count - len(CAMVID_COLOURS), 0), 3))
    return np.concatenate([np.array(CAMVID_COLOURS), extra]).astype(np.uint8)[:count]


def draw_overlay(image_path, mask, out_png, class_names, alpha=0.5):
    """Writes ``out_png`` (atomically): the image, beside it the image with the class
    colours blended in (``alpha``; ignored or unknown values left uncoloured), and a
    legend of the classes below."""
    from PIL import Image, ImageDraw

    with Image.open(image_path) as opened:
        image = np.asarray(opened.convert("RGB"))
    mask = np.asarray(mask)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match image {image.shape[:2]}.")
    colours = _colours(len(class_names))
    known = (mask >= 0) & (mask < len(class_names))
    coloured = colours[np.where(known, mask, 0)]
    blended = image.astype(np.float32)
    blended[known] = (1 - alpha) * blended[known] + alpha * coloured[known]
    height, width = image.shape[:2]
    row_height, columns = 18, 4
    rows = -(-len(class_names) // columns)
    canvas = Image.new("RGB", (2 * width, height + rows * row_height + 6), "white")
    canvas.paste(Image.fromarray(image), (0, 0))
    canvas.paste(Image.fromarray(np.round(blended).astype(np.uint8)), (width, 0))
    draw = ImageDraw.Draw(canvas)
    cell = 2 * width // columns
    for index, name in enumerate(class_names):
        x = (index % columns) * cell + 4
        y = height + 4 + (index // columns) * row_height
        draw.rectangle([x, y, x + 12, y + 12], fill=tuple(int(c) for c in colours[index]))
        draw.text((x + 16, y), f"{index} {name}", fill="black")
    with files.atomic_path(out_png) as tmp:
        canvas.save(tmp, format="PNG")
    return out_png


def export_saved_model(model, config, class_names, directory, canvas=(384, 480)):
    """Writes a SavedModel (atomically: a temporary folder beside ``directory``, then a
    rename) whose ``serving_default`` takes ONE image: ``image_bytes``, a scalar
    ``tf.string`` of JPEG / PNG / BMP / GIF bytes (images differ in size, so one a
    call), and returns ``class_map`` (int32, the image's own height x width) and
    ``probabilities`` (float32, height x width x classes). ``class_names.json`` lies in
    ``assets.extra/``. Returns ``directory``.

    The model runs on a fixed ``canvas`` (height, width; multiples of 32): Keras's
    bilinear upsampling in the DeepLab head cannot be traced for a size unknown in
    advance. An image that fits is padded as in evaluation (reflected to a multiple of
    32) and then with zeros to the canvas: for an image whose padded size is the canvas
    (CamVid's 360x480 on the default 384x480) the answer is exactly the evaluation's; a
    smaller one differs a little near its edges (the head's image pooling sees the
    zeros). A larger one is resized to fit (aspect kept) and its logits resized back.
    """
    from keras_poolformer import export

    del config  # the model takes any size; nothing of the config is needed
    logits_of = logits_function(model)
    canvas_h, canvas_w = (int(v) for v in canvas)
    if canvas_h % MULTIPLE or canvas_w % MULTIPLE:
        raise ValueError(f"canvas {canvas!r} must be multiples of {MULTIPLE}.")

    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="image_bytes")])
    def serve(image_bytes):
        image = tf.cast(decode_image(image_bytes), tf.float32)
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        ratio = tf.minimum(
            1.0,
            tf.minimum(
                canvas_h / tf.cast(height, tf.float32), canvas_w / tf.cast(width, tf.float32)
            ),
        )
        fitted_size = tf.minimum(
            tf.cast(tf.round(tf.cast([height, width], tf.float32) * ratio), tf.int32),
            [canvas_h, canvas_w],
        )
        fits = tf.reduce_all(fitted_size == [height, width])
        fitted = tf.cond(
            fits,
            lambda: image,
            lambda: tf.image.resize(image, fitted_size, method="bilinear", antialias=True),
        )
        fitted = pad_to_multiple(fitted)
        extra = [canvas_h, canvas_w] - tf.shape(fitted)[:2]
        fitted = tf.pad(fitted, [[0, extra[0]], [0, extra[1]], [0, 0]])
        fitted = tf.ensure_shape(fitted, [canvas_h, canvas_w, 3])
        logits = tf.cast(logits_of(fitted[None], training=False), tf.float32)[0]
        logits = logits[: fitted_size[0], : fitted_size[1]]
        logits = tf.cond(
            fits,
            lambda: logits,
            lambda: tf.image.resize(logits, [height, width], method="bilinear"),
        )
        return {
            "class_map": tf.argmax(logits, axis=-1, output_type=tf.int32),
            "probabilities": tf.nn.softmax(logits),
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve)
    directory = os.path.abspath(os.fspath(directory))
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.", dir=parent)
    old = None
    try:
        archive.write_out(staging, verbose=False)
        os.makedirs(os.path.join(staging, "assets.extra"), exist_ok=True)
        with open(os.path.join(staging, "assets.extra", "class_names.json"), "w") as f:
            json.dump(list(class_names), f)
        export._make_readable(staging)
        if os.path.exists(directory):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old.", dir=parent)
            os.rmdir(old)
            os.replace(directory, old)
        os.replace(staging, directory)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)
        if old and os.path.exists(old):
            shutil.rmtree(old)
    return directory
