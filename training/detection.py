"""Object detection as a task of the training loop: Pascal VOC data, a KerasHub RetinaNet
on one of our backbones, its loss per image, and COCO-style mAP from pycocotools.

The shared, resumable loop (``training.trainer.train``) asks a task object for its data,
model, loss and evaluation; :class:`DetectionTask` is that object for detection. Data spec
``voc:PATH``: ``PATH/annotations/*.xml`` (Pascal VOC) and ``PATH/images/``.

Geometry used everywhere (training, evaluation, prediction, the exported SavedModel):
an image is resized keeping its aspect ratio so that its longer side is
``config.image_size`` and padded with zeros at the bottom and right to a square
(:func:`letterbox`). Boxes are ``xyxy`` in pixels; a box maps to the square by one
factor (``scale``) and back by dividing by it, with no offset, because the padding is
only after the image.

Determinism: as in ``training/data.py``, each epoch's order is a permutation drawn from
``(config.seed, epoch)`` and each example's augmentation a stateless seed from
``(epoch seed, position in the epoch)``, so a resumed run sees the same batches.
"""

import contextlib
import dataclasses
import glob
import io
import math
import os
import shutil
import tempfile
import xml.etree.ElementTree as ElementTree

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from keras_poolformer import files
from keras_poolformer.imagenet import decode_image
from keras_poolformer.training import backbones
from keras_poolformer.training import data as data_lib

# ImageNet's mean and std on 0..255 pixels: the ResNet backbone's input normalisation.

# Detections kept per image and the lowest score kept: what COCO evaluation expects.
MAX_DETECTIONS = 100
SCORE_THRESHOLD = 0.05
NMS_IOU = 0.5
TRAIN_FRACTION = 0.8
BOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")


# --- Pascal VOC ----------------------------------------------------------------------------


def _text(element, tag, path):
    """The stripped text of ``element``'s child ``tag``; ValueError naming the file."""
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"{path}: missing <{tag}>.")
    return child.text.strip()


def _number(element, tag, path):
    value = _text(element, tag, path)
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{path}: <{tag}> is not a number ({value!r}).") from None
    if not math.isfinite(number):
        raise ValueError(f"{path}: <{tag}> is not finite ({value!r}).")
    return number


def read_voc(path, images_dir=None, class_names=None):
    """One Pascal VOC annotation file as a dict.

    Returns ``{"annotation": path, "image": the image file's path, "width", "height",
    "boxes": float32 (N, 4), "names": [N class names]}``.

    Box convention: VOC writes 1-based, inclusive pixel indices; ``boxes`` are 0-based
    pixel-edge coordinates ``xyxy``: ``(xmin - 1, ymin - 1, xmax, ymax)``, so a box's
    width ``x1 - x0`` is the number of pixels it spans. Boxes that reach up to 1 px
    beyond the image (annotation tools round) are clipped to it.

    Args:
        path: the XML file.
        images_dir: where the image named by ``<filename>`` is; default the
            ``images`` folder beside the annotations' folder.
        class_names: when given, a name outside it is an error.

    Raises ``ValueError`` naming the file and the problem for unparsable XML, missing
    size, filename or box fields, non-numeric values, an empty box (xmax <= xmin or
    ymax <= ymin), a box beyond the image by more than 1 px, a missing image file and
    an unknown class.
    """
    path = os.fspath(path)
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as error:
        raise ValueError(f"{path}: not a readable XML annotation ({error}).") from None
    if root.tag != "annotation":
        raise ValueError(f"{path}: the root element is <{root.tag}>, not <annotation>.")
    filename = _text(root, "filename", path)
    size = root.find("size")
    if size is None:
        raise ValueError(f"{path}: missing <size>.")
    width, height = _number(size, "width", path), _number(size, "height", path)
    if width < 1 or height < 1 or width != int(width) or height != int(height):
        raise ValueError(f"{path}: image size {width:g} x {height:g} is not a positive size.")
    boxes, names = [], []
    for index, item in enumerate(root.findall("object")):
        name = _text(item, "name", path)
        if class_names is not None and name not in class_names:
            raise ValueError(
                f"{path}: object {index} has unknown class {name!r} "
                f"(known: {', '.join(class_names)})."
            )
        box = item.find("bndbox")
        if box is None:
            raise ValueError(f"{path}: object {index} ({name}) has no <bndbox>.")
        xmin, ymin, xmax, ymax = (_number(box, field, path) for field in BOX_FIELDS)
        if xmax <= xmin or ymax <= ymin:
            raise ValueError(
                f"{path}: object {index} ({name}) has an empty box "
                f"(xmin {xmin:g}, ymin {ymin:g}, xmax {xmax:g}, ymax {ymax:g})."
            )
        x0, y0, x1, y1 = xmin - 1, ymin - 1, xmax, ymax
        if x0 < -1 or y0 < -1 or x1 > width + 1 or y1 > height + 1:
            raise ValueError(
                f"{path}: object {index} ({name}) box {[xmin, ymin, xmax, ymax]} lies outside "
                f"the {width:g} x {height:g} image by more than 1 px."
            )
        boxes.append([max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)])
        names.append(name)
    if images_dir is None:
        images_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), "images")
    image = os.path.join(images_dir, filename)
    if not os.path.isfile(image):
        raise ValueError(f"{path}: its image {image} does not exist.")
    return {
        "annotation": path,
        "image": image,
        "width": int(width),
        "height": int(height),
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "names": names,
    }


@dataclasses.dataclass
class DetectionSplit:
    """A fixed-order list of annotated images (:func:`read_voc` dicts) and, as arrays for
    ``tf.data``, their image paths, boxes ``(N, max_boxes, 4)`` and class indices
    ``(N, max_boxes)``, both padded with -1."""

    records: list
    class_names: list
    max_boxes: int
    skipped: list = dataclasses.field(default_factory=list)

    def __len__(self):
        return len(self.records)

    @property
    def paths(self):
        return np.array([r["image"] for r in self.records], dtype=object).astype(str)

    def padded(self):
        """``(boxes, labels)`` padded with -1 to ``max_boxes`` per image."""
        boxes = np.full((len(self), self.max_boxes, 4), -1, np.float32)
        labels = np.full((len(self), self.max_boxes), -1, np.int32)
        for i, record in enumerate(self.records):
            count = len(record["names"])
            boxes[i, :count] = record["boxes"]
            labels[i, :count] = [self.class_names.index(n) for n in record["names"]]
        return boxes, labels


@dataclasses.dataclass
class DetectionSource:
    name: str
    class_names: list
    train: DetectionSplit
    val: DetectionSplit


def voc_source(path, class_names=None):
    """The Pascal VOC dataset in ``path`` (``annotations/*.xml``, ``images/``).

    Split rule: the XML files sorted by name (plain string order: ``raccoon-1``,
    ``raccoon-10``, ``raccoon-100``, ...); the first ``floor(0.8 * count)`` are the
    training split and the rest validation (raccoon: 160 / 40). ``class_names`` is the
    sorted set of names found (raccoon: ``["raccoon"]``) unless given. A broken
    annotation stops loading with its ``ValueError``: nothing is skipped silently
    (``skipped`` stays empty).
    """
    path = os.fspath(path)
    xml_files = sorted(glob.glob(os.path.join(path, "annotations", "*.xml")))
    if not xml_files:
        raise ValueError(f"VOC folder '{path}' has no annotations/*.xml.")
    images_dir = os.path.join(path, "images")
    records = [read_voc(f, images_dir, class_names) for f in xml_files]
    if class_names is None:
        class_names = sorted({n for r in records for n in r["names"]})
    if not class_names:
        raise ValueError(f"VOC folder '{path}' has no objects in its annotations.")
    max_boxes = max(max(len(r["names"]) for r in records), 1)
    cut = int(len(records) * TRAIN_FRACTION)
    return DetectionSource(
        f"voc:{path}",
        list(class_names),
        DetectionSplit(records[:cut], list(class_names), max_boxes),
        DetectionSplit(records[cut:], list(class_names), max_boxes),
    )


# --- geometry --------------------------------------------------------------------------------


def letterbox(image, size):
    """``(float32 (size, size, 3) in 0..255, scale)``: ``image`` (uint8 ``(h, w, 3)``)
    resized by ``scale = size / max(h, w)`` (bilinear, antialiased) and zero-padded at
    the bottom and right. A point ``p`` of the image is at ``p * scale`` in the result."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.cast(size, tf.float32) / tf.reduce_max(shape)
    new = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 1)
    new = tf.minimum(new, size)
    resized = tf.image.resize(tf.cast(image, tf.float32), new, antialias=True)
    resized = tf.clip_by_value(resized, 0.0, 255.0)
    padded = tf.image.pad_to_bounding_box(resized, 0, 0, size, size)
    return tf.ensure_shape(padded, (size, size, 3)), scale


def _to_original(boxes, scale, height, width):
    """Boxes ``(..., 4)`` of the letterboxed square back in the original image's pixels,
    clipped to it; ``scale``, ``height`` and ``width`` broadcast against ``boxes[..., 0]``."""
    boxes = boxes / scale[..., None]
    limits = tf.stack([width, height, width, height], axis=-1)
    return tf.clip_by_value(boxes, 0.0, tf.cast(limits, boxes.dtype))


# --- the model -------------------------------------------------------------------------------


def build_detector(config, num_classes, init=None):
    """The RetinaNet of :meth:`DetectionTask.build_model` (see there)."""
    size = config.image_size
    shape = (size, size, 3)
    encoder = backbones.build_encoder(config, shape)
    if init:
        backbones.init_encoder(encoder, config, init)
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=encoder, min_level=3, max_level=7, use_p5=False, image_shape=shape
    )
    backbones.freeze_unused(encoder)
    anchors = keras_hub.layers.AnchorGenerator(
        "xyxy", min_level=3, max_level=7, num_scales=3, aspect_ratios=[0.5, 1.0, 2.0], anchor_size=4
    )
    decoder = keras_hub.layers.NonMaxSuppression(
        "xyxy",
        from_logits=True,
        iou_threshold=NMS_IOU,
        confidence_threshold=SCORE_THRESHOLD,
        max_detections=MAX_DETECTIONS,
    )
    model = keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone,
        num_classes=num_classes,
        bounding_box_format="xyxy",
        anchor_generator=anchors,
        prediction_decoder=decoder,
        name=f"retinanet_{config.model}",
    )
    # RetinaNet's head initialisation (Lin et al. 2017, torchvision): conv kernels from
    # N(0, 0.01), the classification logits' bias at the prior p = 0.01, the box bias 0.
    # KerasHub 0.32 draws the kernels from keras' N(0, 0.05), which grows the logits to a
    # std of about 14 through the 5 convs (every anchor scores 1.0 before training), and
    # gives the prior bias to the box head instead of the classification head.
    for head in (model.classification_head, model.box_head):
        for conv in [*head.conv_layers, head.prediction_layer]:
            conv.kernel.assign(keras.random.normal(conv.kernel.shape, stddev=0.01))
    prior = model.classification_head.prior_probability
    model.classification_head.prediction_layer.bias.assign(
        np.full(
            model.classification_head.prediction_layer.bias.shape, -math.log((1 - prior) / prior)
        )
    )
    model.box_head.prediction_layer.bias.assign(
        np.zeros(model.box_head.prediction_layer.bias.shape)
    )
    return model


def per_example_loss(model, inputs, targets):
    """Focal classification loss + Huber box loss per image, shape ``(B,)`` float32.

    The targets come from the detector's own label encoder (anchors with IoU >= 0.5 are
    positive, < 0.4 negative, between ignored) and the losses are the ones
    ``RetinaNetObjectDetector.compile`` defaults to (``BinaryFocalCrossentropy`` on the
    logits, alpha 0.25, gamma 2, averaged over classes; ``Huber`` delta 1 averaged over
    the 4 deltas), summed over anchors. KerasHub's ``compute_loss`` divides the batch's
    sum by the batch's count of positive anchors (and gives 0 when there are none);
    here each image is divided by its own positive count, at least 1 (torchvision's
    RetinaNet rule), which makes the loss per example. For a batch of one image with a
    positive anchor the two agree."""
    outputs = model(inputs, training=True)
    box_targets, class_targets = model.label_encoder(
        images=inputs, gt_boxes=targets["boxes"], gt_classes=targets["labels"]
    )
    class_targets = tf.cast(class_targets, tf.float32)
    logits = tf.cast(outputs["cls_logits"], tf.float32)
    deltas = tf.cast(outputs["bbox_regression"], tf.float32)
    one_hot = tf.one_hot(tf.cast(class_targets, tf.int32), model.num_classes, dtype=tf.float32)
    positive = tf.cast(class_targets > -1.0, tf.float32)
    counted = tf.cast(tf.not_equal(class_targets, -2.0), tf.float32)
    normaliser = tf.maximum(tf.reduce_sum(positive, axis=1), 1.0)
    focal = keras.losses.binary_focal_crossentropy(one_hot, logits, from_logits=True)
    huber = keras.losses.huber(tf.cast(box_targets, tf.float32), deltas)
    per_image = tf.reduce_sum(focal * counted + huber * positive, axis=1)
    return per_image / normaliser


# --- datasets -------------------------------------------------------------------------------


def _load(path):
    return decode_image(tf.io.read_file(path))


def train_dataset(split, config, epoch, batch, num_batches, skip_batches=0):
    """See :meth:`DetectionTask.train_dataset`."""
    start, end = skip_batches * batch, num_batches * batch
    epoch_seed = config.seed * 1_000_003 + epoch
    all_boxes, all_labels = split.padded()
    order = np.resize(data_lib.epoch_order(len(split), config.seed, epoch), end)[start:]
    positions = np.arange(start, end, dtype=np.int64)
    paths = split.paths[order] if len(order) else np.array([], str)
    dataset = tf.data.Dataset.from_tensor_slices(
        (positions, paths, all_boxes[order], all_labels[order])
    )
    size, hflip = config.image_size, config.hflip

    def example(position, path, boxes, labels):
        image = _load(path)
        width = tf.cast(tf.shape(image)[1], tf.float32)
        seed = tf.stack([tf.constant(epoch_seed, tf.int64), position])
        valid = labels >= 0
        if hflip:
            flip = tf.random.stateless_uniform([], seed) < 0.5
            image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
            flipped = tf.stack(
                [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1
            )
            boxes = tf.where(flip, flipped, boxes)
        image, scale = letterbox(image, size)
        boxes = tf.where(valid[:, None], boxes * scale, -1.0)
        return image, {"boxes": boxes, "labels": labels}

    dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(paths, config, batch=8):
    """``(images, scales, original (height, width))`` batches of ``paths`` through the
    evaluation geometry (:func:`letterbox`, no augmentation)."""

    def example(path):
        image = _load(path)
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        padded, scale = letterbox(image, config.image_size)
        return padded, scale, shape

    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(paths, str))
    dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch).prefetch(tf.data.AUTOTUNE)


# --- predictions and COCO mAP ------------------------------------------------------------


def _detect_function(model):
    """A ``tf.function`` from letterboxed images, scales and sizes to the detector's
    decoded detections in original pixels (cached on the model)."""
    cached = getattr(model, "_detection_task_detect", None)
    if cached is not None:
        return cached

    @tf.function(reduce_retracing=True)
    def detect(images, scales, shapes):
        outputs = model(images, training=False)

        # KerasHub's NonMaxSuppression needs a static batch size: decode image by image.
        def decode_one(item):
            image, deltas, logits = item
            single = {"bbox_regression": deltas[None], "cls_logits": logits[None]}
            out = model.decode_predictions(single, image[None])
            return (
                tf.cast(out["boxes"][0], tf.float32),
                tf.cast(out["confidence"][0], tf.float32),
                tf.cast(out["labels"][0], tf.int32),
                tf.cast(out["num_detections"][0], tf.int32),
            )

        boxes, scores, classes, count = tf.map_fn(
            decode_one,
            (images, outputs["bbox_regression"], outputs["cls_logits"]),
            fn_output_signature=(
                tf.TensorSpec((MAX_DETECTIONS, 4), tf.float32),
                tf.TensorSpec((MAX_DETECTIONS,), tf.float32),
                tf.TensorSpec((MAX_DETECTIONS,), tf.int32),
                tf.TensorSpec((), tf.int32),
            ),
        )
        boxes = _to_original(boxes, scales[:, None], shapes[:, 0, None], shapes[:, 1, None])
        valid = tf.range(MAX_DETECTIONS)[None, :] < count[:, None]
        return {
            "boxes": tf.where(valid[..., None], boxes, -1.0),
            "scores": tf.where(valid, scores, -1.0),
            "classes": tf.where(valid, classes, -1),
            "num_detections": count,
        }

    model._detection_task_detect = detect
    return detect


def predict_images(model, paths, config, class_names=None, batch=8):
    """The detector's detections for image files, in each image's original pixels: a
    list, per image, of ``{"boxes": (n, 4) xyxy, "scores": (n,), "classes": (n,) int}``
    (and ``"names"`` when ``class_names`` is given), at most 100 per image with score
    >= 0.05, best first."""
    detect = _detect_function(model)
    results = []
    for images, scales, shapes in eval_dataset(paths, config, batch):
        out = {k: v.numpy() for k, v in detect(images, scales, shapes).items()}
        for i, count in enumerate(out["num_detections"]):
            item = {
                "boxes": out["boxes"][i, :count],
                "scores": out["scores"][i, :count],
                "classes": out["classes"][i, :count],
            }
            if class_names is not None:
                item["names"] = [class_names[c] for c in item["classes"]]
            results.append(item)
    return results


def ground_truth(split):
    """The split's annotations for :func:`coco_map`: per image ``{"width", "height",
    "boxes" (original pixels xyxy), "classes"}``."""
    _, labels = split.padded()
    return [
        {
            "width": r["width"],
            "height": r["height"],
            "boxes": r["boxes"],
            "classes": labels[i, : len(r["names"])],
        }
        for i, r in enumerate(split.records)
    ]


def coco_map(truth, predictions, num_classes):
    """COCO bbox mAP from pycocotools: ``{"val_map50": AP at IoU 0.5, "val_map": AP at
    IoU 0.5:0.95}``. ``truth`` is :func:`ground_truth`'s list; ``predictions`` a list of
    the same length with ``{"boxes" xyxy, "scores", "classes"}`` per image, in the same
    pixels. Pure: no model involved."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(truth) != len(predictions):
        raise ValueError(f"{len(truth)} images but {len(predictions)} predictions.")

    def xywh(box):
        x0, y0, x1, y1 = (float(v) for v in box)
        return [x0, y0, x1 - x0, y1 - y0]

    images, annotations, results = [], [], []
    for image_id, (gt, pred) in enumerate(zip(truth, predictions, strict=True), start=1):
        images.append({"id": image_id, "width": gt["width"], "height": gt["height"]})
        for box, cls in zip(gt["boxes"], gt["classes"], strict=True):
            b = xywh(box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(cls) + 1,
                    "bbox": b,
                    "area": b[2] * b[3],
                    "iscrowd": 0,
                }
            )
        for box, score, cls in zip(pred["boxes"], pred["scores"], pred["classes"], strict=True):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(cls) + 1,
                    "bbox": xywh(box),
                    "score": float(score),
                }
            )
    if not results or not annotations:
        return {"val_map50": 0.0, "val_map": 0.0}
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)],
    }
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco.createIndex()
        detections = coco.loadRes(results)
        evaluation = COCOeval(coco, detections, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = evaluation.stats
    return {"val_map50": max(float(stats[1]), 0.0), "val_map": max(float(stats[0]), 0.0)}


# --- drawing and export ----------------------------------------------------------------------


def draw_detections(path, detections, out_png, class_names=None, min_score=0.3):
    """Draws ``detections`` (one item of :func:`predict_images`) with score >=
    ``min_score`` onto the image at ``path`` (decoded by our safe decoder) and writes it
    as a PNG of the image's size to ``out_png``, atomically."""
    from PIL import Image, ImageDraw

    pixels = decode_image(tf.io.read_file(os.fspath(path))).numpy()
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for box, score, cls in zip(
        detections["boxes"], detections["scores"], detections["classes"], strict=True
    ):
        if score < min_score:
            continue
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle([x0, y0, x1, y1], outline=(255, 40, 40), width=3)
        name = class_names[int(cls)] if class_names else str(int(cls))
        label = f"{name} {score:.2f}"
        _, top, right, bottom = draw.textbbox((0, 0), label)
        text_y = max(y0 - (bottom - top) - 4, 0)
        draw.rectangle([x0, text_y, x0 + right + 4, text_y + bottom + 4], fill=(255, 40, 40))
        draw.text((x0 + 2, text_y + 2), label, fill=(255, 255, 255))
    with files.atomic_path(out_png) as tmp:
        image.save(tmp, format="PNG")


def export_saved_model(model, config, class_names, directory):
    """Writes a SavedModel to ``directory`` (atomically: built in a temporary folder
    beside it, then renamed; an existing one is replaced) whose ``serving_default``
    takes ``images``: encoded image bytes (tf.string, ``[None]``) and returns
    ``boxes`` ``(B, 100, 4)`` xyxy in each original image's pixels, ``scores``
    ``(B, 100)``, ``classes`` ``(B, 100)`` int32, ``num_detections`` ``(B,)``; rows past
    ``num_detections`` are -1. It decodes with our safe decoder and letterboxes exactly
    as evaluation does; only TensorFlow is needed to serve it. ``class_names`` are saved
    in ``assets/classes.txt``."""
    size = config.image_size
    detect = _detect_function(model)

    def serve(images):
        def prepare(data):
            image = decode_image(data)
            shape = tf.cast(tf.shape(image)[:2], tf.float32)
            padded, scale = letterbox(image, size)
            return padded, scale, shape

        padded, scales, shapes = tf.map_fn(
            prepare,
            images,
            fn_output_signature=(
                tf.TensorSpec((size, size, 3), tf.float32),
                tf.TensorSpec((), tf.float32),
                tf.TensorSpec((2,), tf.float32),
            ),
        )
        return detect(padded, scales, shapes)

    directory = os.path.abspath(os.fspath(directory))
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.", suffix=".part", dir=parent)
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            "serving_default",
            serve,
            input_signature=[tf.TensorSpec([None], tf.string, name="images")],
        )
        archive.write_out(tmp, verbose=False)
        os.makedirs(os.path.join(tmp, "assets"), exist_ok=True)
        with open(os.path.join(tmp, "assets", "classes.txt"), "w", encoding="utf-8") as f:
            f.write("".join(f"{name}\n" for name in class_names))
        old = None
        if os.path.exists(directory):
            old = f"{tmp}.old"
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


# --- the task -------------------------------------------------------------------------------


class DetectionTask:
    """Object detection for the shared training loop: what the loop asks of a task.

    Config fields read: model, depths, dims, drop_path_rate (MetaFormer trunks),
    token_mixers / norm / activation / position_embeddings (for ``model="custom"``),
    image_size, seed, hflip. ``model="resnet18"`` is a ResNet-18 trunk (dims give its
    widths).
    """

    name = "detection"
    metrics = ("val_map50", "val_map")

    def load_source(self, data_spec, data_dir=None, cache_dir=None):
        """The :class:`DetectionSource` of ``voc:PATH`` (``data_dir`` and ``cache_dir``
        are unused: nothing is cached)."""
        kind, _, rest = str(data_spec).partition(":")
        if kind != "voc" or not rest:
            raise ValueError(
                f"unknown detection data spec {data_spec!r}; use voc:PATH (PATH holding "
                "annotations/*.xml and images/)."
            )
        if not os.path.isdir(rest):
            raise ValueError(f"VOC folder '{rest}' does not exist.")
        return voc_source(rest)

    def build_model(self, config, source, init=None):
        """A ``keras_hub.models.RetinaNetObjectDetector`` (boxes ``xyxy`` in pixels of the
        ``image_size`` square; anchors 3 scales x 3 ratios on P3..P7; NMS at IoU 0.5 keeping
        up to 100 detections of score >= 0.05) on ``RetinaNetBackbone(image_encoder=...,
        min_level=3, max_level=7, use_p5=False)``, with ``len(source.class_names)``
        classes. The encoder is ``hub.MetaFormerBackbone(config.model, ...)`` (0..255
        pixels in), or for ``model="resnet18"`` KerasHub's ResNet (:mod:`.backbones`).

        ``init``: None, a classification run folder (``trainer.load_run``), a classifier
        ``.weights.h5`` of the same config, or ``"imagenet"``: the backbone's weights are
        copied by layer name; the FPN and heads start fresh."""
        return build_detector(config, len(source.class_names), init)

    def train_dataset(self, split, config, epoch, batch, num_batches, skip_batches=0):
        """``num_batches - skip_batches`` batches ``(images float32 (B, S, S, 3) in
        0..255, {"boxes": (B, MAX, 4) xyxy, "labels": (B, MAX) int32})`` padded with -1;
        the order is the seeded permutation of ``(config.seed, epoch)`` (wrapping around
        when more batches are asked than the split holds) and each example's random
        horizontal flip (``config.hflip``) is seeded by ``(epoch seed, position)``, so
        ``skip_batches=k`` yields exactly the last batches of the full epoch."""
        return train_dataset(split, config, epoch, batch, num_batches, skip_batches)

    def loss(self, model, inputs, targets):
        """Per-example loss ``(B,)`` float32 in training mode: :func:`per_example_loss`.
        Call it inside the loop's ``tf.GradientTape``."""
        return per_example_loss(model, inputs, targets)

    def evaluate(self, model, split, config):
        """``{"val_map50", "val_map"}``: pycocotools' COCO bbox AP at IoU 0.5 and 0.5:0.95
        of the detector's decoded detections on ``split``, in original image pixels
        (its first ``config.eval_steps`` batches of 8 when that is set)."""
        if not len(split):
            raise ValueError("the split has no images to evaluate.")
        if config.eval_steps:
            split = DetectionSplit(
                split.records[: 8 * config.eval_steps], split.class_names, split.max_boxes
            )
        predictions = predict_images(model, split.paths, config)
        return coco_map(ground_truth(split), predictions, len(split.class_names))

    predict_images = staticmethod(predict_images)
    draw_detections = staticmethod(draw_detections)
    export_saved_model = staticmethod(export_saved_model)
