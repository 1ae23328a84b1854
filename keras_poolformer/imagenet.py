"""ImageNet helpers: input preprocessing, image decoding, the evaluation transform,
class names.

The 1000 class names ship inside the package (``data/imagenet_classes.tsv``, in the
standard ILSVRC2012 class order), so :func:`decode_predictions` never downloads.

Images are decoded only after their header says they are within :class:`ImageLimits`
(:func:`decode_image`), so that a few hostile bytes cannot make a server, a
prediction or a data pipeline allocate gigabytes.
"""

import dataclasses
import functools
import importlib.resources
import numbers
import os
import re

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
    interpolation, then crops the centre ``image_size`` square, as timm's
    ``Resize`` + ``CenterCrop`` do on a PIL image. Works eagerly and inside
    ``tf.function`` / ``tf.data``.

    A ``uint8`` image is resized exactly as Pillow resizes it
    (:func:`resize_like_pil`), so that a JPEG read by :func:`decode_image` gets the
    pixels the released weights were evaluated on. A float image has no Pillow
    counterpart: it gets one antialiased bicubic ``tf.image.resize``, in float32.

    Args:
        image: ``uint8`` or float tensor ``(height, width, 3)``, RGB, 0..255.
        image_size: side of the square output.
        crop_pct: fraction of the resized shorter side that is kept.

    Returns:
        A float32 tensor ``(image_size, image_size, 3)`` with values in 0..255
        (whole numbers for a ``uint8`` image).

    Example:

    ```python
    image = keras_poolformer.decode_image(tf.io.read_file("cat.jpg"))
    pixels = keras_poolformer.eval_transform(image)  # (224, 224, 3) float32
    ```
    """
    import tensorflow as tf

    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}.")
    image = tf.convert_to_tensor(image)
    scale_size = int(image_size / crop_pct)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    short = tf.minimum(height, width)
    # Same rounding as torchvision's Resize(int): the long side is truncated.
    new_h = tf.where(height <= width, scale_size, (scale_size * height) // short)
    new_w = tf.where(height <= width, (scale_size * width) // short, scale_size)
    top = _center_offset(new_h - image_size)
    left = _center_offset(new_w - image_size)
    if image.dtype == tf.uint8:
        # Only the crop is computed: the same pixels, in about 0.6x the work.
        cropped = _pil_window(image, new_h, new_w, top, left, image_size, image_size)
    else:
        size = tf.stack([new_h, new_w])
        resized = tf.image.resize(tf.cast(image, tf.float32), size, "bicubic", antialias=True)
        cropped = resized[top : top + image_size, left : left + image_size, :]
    cropped = tf.ensure_shape(cropped, (image_size, image_size, None))
    return tf.clip_by_value(tf.cast(cropped, tf.float32), 0.0, 255.0)


# Pillow keeps 22 fractional bits in the integer weights it resamples 8-bit images with
# (32 bits, less 8 for the pixel, less 2 for the kernel's overshoot).
_PIL_PRECISION_BITS = 22


def resize_like_pil(image, height, width):
    """Resizes a ``uint8`` image ``(h, w, channels)`` to ``(height, width)`` exactly as
    Pillow's ``Image.resize((width, height), Image.BICUBIC)`` does, in TensorFlow ops.

    Pillow resamples one axis at a time, width first, then height (a pass whose size
    does not change is skipped), and keeps a ``uint8`` image between the passes. Each
    output pixel is a weighted sum of the input pixels under the Keys cubic kernel
    (a = -0.5), widened by the scale when shrinking (antialiasing); the weights are
    normalised to sum to 1, turned into integers with 22 fractional bits, and the sum
    is rounded half up and clipped to 0..255. This function computes the same integer
    weights, in float64 with Pillow's operations in Pillow's order, and the same integer
    sums, so its pixels are Pillow's, not within one of them: a float32
    ``tf.image.resize`` per axis with rounding between differs from Pillow by up to 2
    (at 0.015% of the pixels of ImageNet validation images), and one two-axis call by
    up to about 6.

    Pillow 13 resizes height first when the height shrinks by much more than the width
    (python-pillow/Pillow#9549); this follows the width-first order of the Pillow
    releases the published ImageNet figures were measured with. For the evaluation
    transform, which scales both sides alike, the two orders agree.

    Returns:
        A ``uint8`` tensor ``(height, width, channels)``.
    """
    import tensorflow as tf

    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        raise TypeError(f"resize_like_pil takes a uint8 image, got {image.dtype.name}.")
    return _pil_window(image, height, width, 0, 0, height, width)


def _pil_window(image, height, width, top, left, rows, cols):
    """Rows ``top .. top + rows`` and columns ``left .. left + cols`` of
    ``resize_like_pil(image, height, width)``, computing only those pixels, and the
    width pass only on the input rows the height pass reads (as Pillow does)."""
    import tensorflow as tf

    shape = tf.shape(image)
    resize_h = tf.not_equal(shape[0], height)
    v_index, v_weights = _pil_weights(shape[0], height, top, rows)
    first = tf.where(resize_h, tf.reduce_min(v_index), top)
    last = tf.where(resize_h, tf.reduce_max(v_index) + 1, top + rows)
    band = image[first:last]
    x = tf.cond(
        tf.equal(shape[1], width),
        lambda: band[:, left : left + cols],
        lambda: _pil_pass(band, *_pil_weights(shape[1], width, left, cols), axis=1),
    )
    return tf.cond(resize_h, lambda: _pil_pass(x, v_index - first, v_weights, axis=0), lambda: x)


def _pil_pass(image, index, weights, axis):
    """Resamples a ``uint8`` tensor ``(h, w, c)`` along ``axis`` (0 or 1) with integer
    weights (:func:`_pil_weights`): output row (or column) ``i`` is
    ``sum_t image[index[i, t]] * weights[i, t]``, rounded and clipped as Pillow does.
    One tap at a time, so that memory stays at one ``int32`` copy of the output however
    many taps a strong reduction needs, and no copy of the input is made."""
    import tensorflow as tf

    shape = tf.unstack(tf.shape(image))
    shape[axis] = tf.shape(index)[0]
    half = 1 << (_PIL_PRECISION_BITS - 1)  # Pillow's round half up
    start = tf.fill(tf.stack(shape), half)

    def tap(t, total):
        pixels = tf.cast(tf.gather(image, index[:, t], axis=axis), tf.int32)
        weight = weights[:, t, None, None] if axis == 0 else weights[None, :, t, None]
        return t + 1, total + pixels * weight

    taps = tf.shape(weights)[1]
    # One tap in flight: with more, the gathers of later taps run ahead of the sum
    # and hold an int32 copy of the output each.
    _, total = tf.while_loop(
        lambda t, _: t < taps, tap, (tf.constant(0), start), parallel_iterations=1
    )
    total = tf.bitwise.right_shift(total, _PIL_PRECISION_BITS)  # floors, as Pillow's >>
    return tf.cast(tf.clip_by_value(total, 0, 255), tf.uint8)


def _pil_weights(in_size, out_size, start, count):
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for the bicubic filter,
    for output positions ``start .. start + count`` of a resize from ``in_size`` to
    ``out_size``: the input indices of their taps ``(count, taps)`` (clipped into the
    image; a tap past the edge has weight 0) and the taps' ``int32`` weights."""
    import tensorflow as tf

    f64 = tf.float64
    scale = tf.cast(in_size, f64) / tf.cast(out_size, f64)
    filterscale = tf.maximum(scale, 1.0)
    support = 2.0 * filterscale  # the bicubic kernel's support is 2
    taps = tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1
    center = (tf.cast(tf.range(start, start + count), f64) + 0.5) * scale
    inverse = 1.0 / filterscale
    # C's (int) truncates toward zero, as tf.cast does; a negative start clamps to 0.
    first = tf.maximum(tf.cast(center - support + 0.5, tf.int32), 0)
    used = tf.minimum(tf.cast(center + support + 0.5, tf.int32), in_size) - first
    offsets = tf.range(taps)
    index = first[:, None] + offsets[None, :]
    x = tf.abs((tf.cast(index, f64) - center[:, None] + 0.5) * inverse)
    near = ((1.5 * x - 2.5) * x) * x + 1.0  # ((a + 2) x - (a + 3)) x x + 1, a = -0.5
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5  # (((x - 5) x + 8) x - 4) a
    kernel = tf.where(x < 1.0, near, tf.where(x < 2.0, far, tf.zeros_like(x)))
    kernel = tf.where(offsets[None, :] < used[:, None], kernel, tf.zeros_like(kernel))
    # Summed tap by tap, in Pillow's order, so the float64 total is Pillow's to the bit.
    total = tf.foldl(
        lambda acc, column: acc + column,
        tf.transpose(kernel),
        initializer=tf.zeros(tf.stack([count]), f64),
    )
    kernel = tf.where(total[:, None] != 0.0, kernel / total[:, None], kernel)
    fixed = kernel * float(1 << _PIL_PRECISION_BITS)
    weights = tf.cast(tf.where(kernel < 0.0, fixed - 0.5, fixed + 0.5), tf.int32)
    return tf.minimum(index, in_size - 1), weights


def _center_offset(margin):
    """``int(round(margin / 2))`` with Python's round-half-to-even, as
    torchvision's ``CenterCrop`` computes it (``margin`` is an integer tensor)."""
    half = margin // 2
    return half + (margin % 2) * (half % 2)


# --- decoding within limits --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    """The largest image :func:`decode_image` decodes. The size is read from the
    image's header and checked before any pixel is decoded.

    Attributes:
        max_pixels: height x width at most. An animated GIF also counts the pixels
            of all its frames together, since TensorFlow decodes every frame of it.
            The default, 2**24 (16.8 MP: 4096 x 4096, or 5000 x 3355), bounds the
            decoded uint8 RGB image at 48 MiB and a progressive JPEG's coefficient
            buffers at 96 MiB.
        max_side: the longer side at most (default 8192): it bounds the decoders'
            row buffers and the resize's per-axis weights.
        max_aspect_ratio: longer side / shorter side at most (default 20). The
            evaluation transform resizes the shorter side to ``int(224 / crop_pct)``
            (248 at crop 0.9), so the longer side of the resized float32 image grows
            with the ratio: at 20 it is at most 4,960 (14 MiB), while a 1 x 20000
            image would become 248 x 4,960,000 (14.7 GB).
    """

    max_pixels: int = 2**24
    max_side: int = 8192
    max_aspect_ratio: float = 20.0

    def __post_init__(self):
        for name in ("max_pixels", "max_side"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        ratio = self.max_aspect_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not ratio >= 1:
            raise ValueError(f"max_aspect_ratio must be a number >= 1, got {ratio!r}.")

    @property
    def gif_max_blocks(self):
        """How many blocks the walk of a GIF's structure follows before the file is
        refused: one per 256 pixels allowed, at least 4096 (65,536 by default; a record,
        an image or an extension, counts as 4). At 255 bytes a data block, that is
        16 MiB of LZW data: a 16.8 MP GIF compresses to less unless it is noise. The
        bound keeps a file made of one-byte blocks from making the walk (a few
        microseconds a block) take long: at most about half a second."""
        return max(int(self.max_pixels) // 256, 4096)


DEFAULT_IMAGE_LIMITS = ImageLimits()

# A progressive JPEG decodes every scan over the whole image; standard encoders write
# up to about a dozen. A file with thousands of tiny scans would cost seconds of CPU.
JPEG_MAX_SCANS = 100

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_image(data, limits=DEFAULT_IMAGE_LIMITS):
    """Decodes JPEG, PNG, BMP or GIF bytes (grey, RGB or RGBA; a GIF's first frame)
    into a ``uint8`` RGB tensor ``(height, width, 3)``, after checking the size the
    header declares against ``limits`` (:class:`ImageLimits`; ``None``: the defaults).
    The pixels are Pillow's: JPEGs decode with the accurate integer DCT, as
    ``Image.open(path).convert("RGB")`` decodes them.

    Works eagerly, in ``tf.function``, in ``tf.data`` and in an exported SavedModel
    (TensorFlow ops only). Other formats (WebP, JPEG XL, ...) are refused: their size
    is not checked here. A refused or corrupt image raises
    ``tf.errors.InvalidArgumentError``, with the limit and the image's size in the
    message for a refused one.
    """
    import tensorflow as tf

    problem = image_problem(data, limits)
    check = tf.raw_ops.Assert(condition=tf.equal(problem, ""), data=[problem])
    if check is not None:  # in a graph; eagerly, the Assert has already run
        with tf.control_dependencies([check]):
            data = tf.identity(data)
    # JPEG: libjpeg's accurate integer DCT, Pillow's default, with which the released
    # weights were evaluated. TensorFlow's default (the fast one) differs by about 1 a
    # pixel on average and up to 19. Every other format decodes the same either way.
    return tf.cond(
        tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff"),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )


def image_problem(data, limits=DEFAULT_IMAGE_LIMITS):
    """Why ``data`` (encoded image bytes, a scalar string tensor) may not be decoded
    under ``limits``, as a scalar string tensor; empty when it may. Only the header
    is read (a GIF's block structure is walked, its pixels are not decoded)."""
    return _problem_function(DEFAULT_IMAGE_LIMITS if limits is None else limits)(data)


@functools.cache
def _problem_function(limits):
    """One ``tf.function`` per limits: traced once, fast when called eagerly, and
    saved with a SavedModel that calls it."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
    def image_problem(data):
        return _image_problem(data, limits)

    return image_problem


def _image_problem(data, limits):
    import tensorflow as tf

    # The first 32 bytes, zero-padded: the headers are read from here.
    first = tf.strings.substr(tf.strings.join([tf.strings.substr(data, 0, 32), b"\0" * 32]), 0, 32)
    head = tf.cast(tf.reshape(tf.io.decode_raw(first, tf.uint8), [32]), tf.int64)
    length = tf.cast(tf.strings.length(data), tf.int64)

    def starts(position, magic):
        return tf.strings.substr(first, position, len(magic)) == magic

    # The format is told from the first bytes as TensorFlow's decoder tells it.
    kind = tf.where(starts(0, b"\xff\xd8\xff"), 1, 0)
    kind = tf.where((kind == 0) & starts(0, _PNG_SIGNATURE), 2, kind)
    kind = tf.where((kind == 0) & starts(0, b"GIF8"), 3, kind)
    kind = tf.where((kind == 0) & starts(0, b"BM"), 4, kind)
    zero = tf.constant(0, tf.int64)

    def unknown():
        webp = starts(0, b"RIFF") & starts(8, b"WEBP")
        why = tf.where(
            webp,
            "WebP images are not accepted (JPEG, PNG, GIF or BMP only)",
            "not a JPEG, PNG, GIF or BMP image",
        )
        return zero, zero, zero, why

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
        scans = tf.size(tf.strings.split(data, sep=b"\xff\xda"), out_type=tf.int64) - 1
        why = tf.where(
            scans > JPEG_MAX_SCANS,
            tf.strings.join(
                [
                    "JPEG of ",
                    tf.strings.as_string(scans),
                    f" scans is beyond the {JPEG_MAX_SCANS} accepted",
                ]
            ),
            "",
        )
        return shape[0], shape[1], zero, why

    def png():
        # The IHDR chunk comes first: width and height, big-endian, at bytes 16..24.
        ok = (length >= 24) & starts(12, b"IHDR")
        width = _unsigned(head[16:20], big_endian=True)
        height = _unsigned(head[20:24], big_endian=True)
        return height, width, zero, tf.where(ok, "", "truncated or malformed PNG header")

    def bmp():
        # Signed little-endian int32 width at 18 and height at 22 (negative: top-down).
        width = _signed32(_unsigned(head[18:22]))
        height = tf.abs(_signed32(_unsigned(head[22:26])))
        return height, width, zero, tf.where(length >= 32, "", "truncated BMP header")

    def gif():
        return _gif_size(data, limits)

    height, width, frame_pixels, why = tf.switch_case(
        tf.cast(kind, tf.int32), [unknown, jpeg, png, gif, bmp]
    )
    size = tf.strings.join(
        [tf.strings.as_string(height), " x ", tf.strings.as_string(width), " pixels"]
    )

    def beyond(limit):
        return tf.strings.join(["image of ", size, f" (height x width) is beyond {limit}"])

    long_side = tf.cast(tf.maximum(height, width), tf.float64)
    short_side = tf.cast(tf.minimum(height, width), tf.float64)
    pixels = tf.cast(height, tf.float64) * tf.cast(width, tf.float64)
    checks = [
        (tf.not_equal(why, ""), why),
        (short_side < 1, tf.strings.join(["image header declares ", size])),
        (long_side > limits.max_side, beyond(f"the limit max_side={limits.max_side}")),
        (pixels > limits.max_pixels, beyond(f"the limit max_pixels={limits.max_pixels}")),
        (
            long_side > limits.max_aspect_ratio * short_side,
            beyond(f"the limit max_aspect_ratio={limits.max_aspect_ratio:g}"),
        ),
        (
            frame_pixels > limits.max_pixels,
            tf.strings.join(
                [
                    "GIF whose frames hold ",
                    tf.strings.as_string(frame_pixels),
                    f" pixels in all is beyond the limit max_pixels={limits.max_pixels}"
                    " (every frame is decoded)",
                ]
            ),
        ),
    ]
    problem = tf.constant("")
    for failed, message in reversed(checks):  # the first failing check is reported
        problem = tf.where(failed, message, problem)
    return problem


def _unsigned(values, big_endian=False):
    """The unsigned integer of a few bytes (an int64 tensor of byte values)."""
    import tensorflow as tf

    count = int(values.shape[0])
    shifts = [8 * (count - 1 - i) if big_endian else 8 * i for i in range(count)]
    return tf.reduce_sum(tf.bitwise.left_shift(values, tf.constant(shifts, tf.int64)))


def _signed32(value):
    import tensorflow as tf

    return tf.where(value >= 2**31, value - 2**32, value)


def _gif_size(data, limits):
    """(canvas height, canvas width, pixels of all frames, problem) of a GIF.

    TensorFlow's GIF decoder (giflib's ``DGifSlurp``) reads every frame, each into a
    buffer the size its frame descriptor declares, even when only the first is
    returned, and returns a canvas as wide as the widest frame and as high as the
    highest. So the block structure is walked to every frame descriptor: the header
    and global colour table, then records (``,`` image: descriptor, local colour
    table, LZW code size, data sub-blocks; ``!`` extension: label, sub-blocks;
    ``;`` end), each sub-block a length byte and that many bytes, a zero length
    ending the record.
    """
    import tensorflow as tf

    length = tf.strings.length(data)
    padded = tf.concat([tf.io.decode_raw(data, tf.uint8), tf.zeros([16], tf.uint8)], 0)
    max_blocks = limits.gif_max_blocks

    def colour_table(flags):  # 3 * 2**(size + 1) bytes when the table flag is set
        return tf.where(flags >= 128, tf.bitwise.left_shift(6, flags % 8), 0)

    screen = tf.unstack(tf.cast(padded[6:11], tf.int32), num=5)
    screen_width = screen[0] + 256 * screen[1]
    screen_height = screen[2] + 256 * screen[3]
    start = 13 + colour_table(screen[4])

    # Each record and each sub-block is one step of a loop, up to max_blocks steps: a
    # file of one-byte sub-blocks has as many steps as it has bytes. The steps are kept
    # to a few ops, sub-blocks (most of a GIF) to the fewest.
    def length_byte(position):  # 0 at and past the end
        return tf.cast(tf.gather(padded, tf.minimum(position, length)), tf.int32)

    def skip_sub_blocks(position, blocks):
        position, blocks = tf.while_loop(
            lambda position, blocks: (length_byte(position) != 0) & (blocks < max_blocks),
            lambda position, blocks: (position + length_byte(position) + 1, blocks + 1),
            (position, blocks),
        )
        return position + 1, blocks + 1  # past the zero length that ends the record

    def record(position, blocks, frame_pixels, widest, highest):
        window = tf.unstack(tf.cast(tf.slice(padded, [position], [10]), tf.int32), num=10)
        is_image = tf.equal(window[0], 0x2C)
        width = window[5] + 256 * window[6]
        height = window[7] + 256 * window[8]
        image_data = position + 11 + colour_table(window[9])  # after the LZW code size
        data = tf.where(
            is_image, image_data, tf.where(tf.equal(window[0], 0x21), position + 2, length)
        )  # ";" (the end) or anything else: stop
        # A record costs about four sub-blocks to walk, and counts as four.
        position, blocks = skip_sub_blocks(data, blocks + 4)
        return (
            position,
            blocks,
            frame_pixels + tf.where(is_image, tf.cast(width * height, tf.int64), 0),
            tf.where(is_image, tf.maximum(widest, width), widest),
            tf.where(is_image, tf.maximum(highest, height), highest),
        )

    zero = tf.constant(0)
    position, _, frame_pixels, widest, highest = tf.while_loop(
        lambda position, blocks, *rest: (position < length) & (blocks < max_blocks),
        record,
        (start, zero, tf.constant(0, tf.int64), zero, zero),
    )
    # TensorFlow's decoder sizes its canvas by the frames, not by the logical screen;
    # the screen is held to the limits too, should another version size by it.
    screen_pixels = tf.cast(screen_width, tf.float64) * tf.cast(screen_height, tf.float64)
    big_screen = (tf.maximum(screen_width, screen_height) > limits.max_side) | (
        screen_pixels > limits.max_pixels
    )
    why = tf.where(
        length < 13,
        "truncated GIF header",
        tf.where(
            position < length,
            f"GIF of more than {max_blocks} blocks is beyond the limit (max_pixels / 256 "
            "blocks are walked before decoding)",
            tf.where(
                big_screen,
                tf.strings.join(
                    [
                        "GIF screen of ",
                        tf.strings.as_string(screen_height),
                        " x ",
                        tf.strings.as_string(screen_width),
                        " pixels (height x width) is beyond the limits",
                    ]
                ),
                "",
            ),
        ),
    )
    return tf.cast(highest, tf.int64), tf.cast(widest, tf.int64), frame_pixels, why


def load_image(path, image_size=224, crop_pct=DEFAULT_CROP_PCT, limits=DEFAULT_IMAGE_LIMITS):
    """Reads an image file (JPEG, PNG, BMP, GIF; grey, RGB or RGBA) within ``limits``
    (:class:`ImageLimits`) and applies :func:`eval_transform`. Returns a float32 numpy
    array ``(size, size, 3)``; a missing file, a folder, an image beyond the limits or
    one that does not decode raise ``ValueError`` naming the path."""
    import tensorflow as tf

    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"'{path}' is a folder, not an image file.")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ValueError(f"'{path}' does not exist.") from None
    except OSError as error:
        raise ValueError(f"'{path}' cannot be read: {error.strerror or error}.") from None
    try:
        image = decode_image(tf.constant(data), limits)
    except tf.errors.InvalidArgumentError as error:
        refused = re.search(r"assertion failed: \[(.*?)\]", error.message, re.S)
        if refused:
            raise ValueError(f"'{path}' is refused: {refused[1]}.") from None
        reason = re.sub(r"\{\{[^}]*\}\}", "", error.message).strip().splitlines()[0]
        raise ValueError(f"'{path}' is not an image TensorFlow can decode: {reason}") from None
    return eval_transform(image, image_size, crop_pct).numpy()
