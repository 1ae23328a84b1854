"""ImageNet helpers: input preprocessing, the evaluation transform, class names.

The 1000 class names ship inside the package (``data/imagenet_classes.tsv``, in the
standard ILSVRC2012 class order), so :func:`decode_predictions` never downloads.
"""

import functools
import importlib.resources

import numpy as np

from keras_poolformer.layers import IMAGENET_MEAN, IMAGENET_STD

DEFAULT_CROP_PCT = 0.9


@functools.cache
def class_names():
    """``[(wnid, name), ...]`` for the 1000 ImageNet-1k classes, by class index."""
    text = (
        importlib.resources.files("keras_poolformer")
        .joinpath("data/imagenet_classes.tsv")
        .read_text(encoding="utf-8")
    )
    rows = [tuple(line.split("\t")) for line in text.splitlines()]
    if len(rows) != 1000:
        raise RuntimeError(f"imagenet_classes.tsv holds {len(rows)} classes, not 1000.")
    return rows


def decode_predictions(preds, top=5):
    """Turns a batch of ImageNet scores into the ``top`` classes of each image.

    Args:
        preds: array-like of shape ``(batch, 1000)`` (probabilities or logits).
        top: how many classes per image.

    Returns:
        One list per image of ``(wnid, class_name, score)`` tuples, best first,
        as ``keras.applications.imagenet_utils.decode_predictions`` does.

    Example:
    >>> probs = model.predict(images)
    >>> decode_predictions(probs, top=1)[0]
    [('n02951358', 'canoe', 0.93)]
    """
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError(
            "decode_predictions expects a batch of ImageNet predictions of shape "
            f"(batch, 1000); got shape {preds.shape}."
        )
    if not 1 <= top <= 1000:
        raise ValueError(f"top must be between 1 and 1000, got {top}.")
    names = class_names()
    order = np.argsort(-preds, axis=1, kind="stable")[:, :top]
    return [
        [(*names[i], float(row[i])) for i in idx] for row, idx in zip(preds, order, strict=True)
    ]


def preprocess_input(x, data_format=None, include_preprocessing=True):
    """Prepares RGB images (pixels in 0..255) for a PoolFormer model.

    The models built here with ``include_preprocessing=True`` (the default)
    normalise inside, so for them this is a pass-through, as in Keras
    Applications. For a model built with ``include_preprocessing=False`` pass
    ``include_preprocessing=False`` to get ``(x / 255 - mean) / std`` with the
    ImageNet mean and std.

    Args:
        x: float array or tensor, channels last, RGB, 0..255.
        data_format: only ``None`` or ``"channels_last"`` are supported.
        include_preprocessing: whether the model normalises its inputs itself.
    """
    if data_format not in (None, "channels_last"):
        raise ValueError(f"PoolFormer models are channels_last; got data_format={data_format!r}.")
    if include_preprocessing:
        return x
    x = np.asarray(x, dtype=np.float32)
    return (x / 255.0 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)


def eval_transform(image, image_size=224, crop_pct=DEFAULT_CROP_PCT):
    """The evaluation transform of the released PoolFormer weights, in TensorFlow.

    Resizes the shorter side to ``int(image_size / crop_pct)`` with bicubic
    interpolation (antialiased, as PIL does when shrinking), then crops the
    centre ``image_size`` square. Works eagerly and inside ``tf.function`` /
    ``tf.data``.

    Args:
        image: ``uint8`` or float tensor ``(height, width, 3)``, RGB, 0..255.
        image_size: side of the square output.
        crop_pct: fraction of the resized shorter side that is kept.

    Returns:
        A float32 tensor ``(image_size, image_size, 3)`` with values in 0..255.
    """
    import tensorflow as tf

    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}.")
    scale_size = int(image_size / crop_pct)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    short = tf.minimum(height, width)
    # Same rounding as torchvision's Resize(int): the long side is truncated.
    new_h = tf.where(height <= width, scale_size, (scale_size * height) // short)
    new_w = tf.where(height <= width, (scale_size * width) // short, scale_size)
    resized = tf.image.resize(
        tf.cast(image, tf.float32), tf.stack([new_h, new_w]), method="bicubic", antialias=True
    )
    top = _center_offset(new_h - image_size)
    left = _center_offset(new_w - image_size)
    cropped = resized[top : top + image_size, left : left + image_size, :]
    cropped = tf.ensure_shape(cropped, (image_size, image_size, None))
    return tf.clip_by_value(cropped, 0.0, 255.0)


def decode_image(data):
    """Decodes JPEG, PNG, BMP or GIF bytes (grey, RGB or RGBA; a GIF's first frame)
    into a ``uint8`` RGB tensor ``(height, width, 3)``. Works in graphs and ``tf.data``."""
    import tensorflow as tf

    return tf.io.decode_image(data, channels=3, expand_animations=False)


def _center_offset(margin):
    """``int(round(margin / 2))`` with Python's round-half-to-even, as
    torchvision's ``CenterCrop`` computes it (``margin`` is an integer tensor)."""
    half = margin // 2
    return half + (margin % 2) * (half % 2)


def load_image(path, image_size=224, crop_pct=DEFAULT_CROP_PCT):
    """Reads an image file (JPEG, PNG, BMP, GIF; grey, RGB or RGBA) and applies
    :func:`eval_transform`. Returns a float32 numpy array ``(size, size, 3)``."""
    import tensorflow as tf

    data = tf.io.read_file(str(path))
    try:
        image = decode_image(data)
    except tf.errors.InvalidArgumentError as error:
        raise ValueError(
            f"'{path}' is not an image TensorFlow can decode: {error.message}"
        ) from None
    return eval_transform(image, image_size, crop_pct).numpy()
