"""The training augmentations of the PoolFormer recipe, as stateless TensorFlow ops.

Each function is a pure function of its inputs and an explicit ``seed`` (a shape-[2]
int tensor), so an image gets the same augmentation eagerly and inside
``Dataset.map``, and a resumed run sees exactly the augmentations the interrupted
one would have. Keras' own augmentation layers draw from a stateful seed generator
and do not follow timm's definitions (RandAugment magnitude noise and op set,
batch-mode mixup/cutmix with switch probability and area-corrected lambda,
pixel-mode random erasing), so these are written here after timm's
``transforms_factory``, ``auto_augment``, ``random_erasing`` and ``mixup``.

Images are float32 ``(height, width, 3)`` RGB in 0..255 throughout; the model
normalises inside.
"""

import math

import tensorflow as tf

from keras_poolformer.layers import IMAGENET_MEAN, IMAGENET_STD

# timm fills rotated/sheared/translated borders with the mean colour.
FILL = [round(255 * m) for m in IMAGENET_MEAN]


def split_seed(seed, count):
    """``count`` independent seeds derived from one."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, count))


def _uniform(seed, low=0.0, high=1.0, shape=()):
    return tf.random.stateless_uniform(shape, seed, low, high)


# --- random resized crop and flip ------------------------------------------------------


def random_resized_crop(image, size, seed, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """timm's ``RandomResizedCropAndInterpolation``: up to 10 tries at a crop of
    random area fraction in ``scale`` and log-uniform aspect ratio in ``ratio``;
    the centre crop of the nearest valid ratio if none fits; resized to ``size``
    with bilinear or bicubic interpolation chosen at random."""
    s_area, s_ratio, s_x, s_y, s_interp = split_seed(seed, 5)
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    area = height * width * _uniform(s_area, scale[0], scale[1], (10,))
    log_ratio = _uniform(s_ratio, math.log(ratio[0]), math.log(ratio[1]), (10,))
    aspect = tf.exp(log_ratio)
    w = tf.round(tf.sqrt(area * aspect))
    h = tf.round(tf.sqrt(area / aspect))
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32))
    # Fallback: the whole image cropped to the nearest allowed aspect ratio.
    in_ratio = width / height
    fb_w = tf.where(
        in_ratio < ratio[0], width, tf.where(in_ratio > ratio[1], height * ratio[1], width)
    )
    fb_h = tf.where(in_ratio < ratio[0], width / ratio[0], height)
    crop_w = tf.where(tf.reduce_any(fits), w[first], tf.round(fb_w))
    crop_h = tf.where(tf.reduce_any(fits), h[first], tf.round(fb_h))
    top = tf.where(
        tf.reduce_any(fits),
        tf.floor(_uniform(s_y) * (height - crop_h + 1)),
        tf.floor((height - crop_h) / 2),
    )
    left = tf.where(
        tf.reduce_any(fits),
        tf.floor(_uniform(s_x) * (width - crop_w + 1)),
        tf.floor((width - crop_w) / 2),
    )
    box = tf.cast(tf.stack([top, left, crop_h, crop_w]), tf.int32)
    crop = tf.image.crop_to_bounding_box(image, box[0], box[1], box[2], box[3])
    bicubic = _uniform(s_interp) < 0.5
    resized = tf.cond(
        bicubic,
        lambda: tf.image.resize(crop, (size, size), method="bicubic"),
        lambda: tf.image.resize(crop, (size, size), method="bilinear"),
    )
    return tf.clip_by_value(resized, 0.0, 255.0)


def random_flip(image, seed):
    return tf.cond(_uniform(seed) < 0.5, lambda: tf.reverse(image, [1]), lambda: image)


# --- RandAugment (timm "rand-m{M}-mstd{S}-inc1") ------------------------------------------


def _blend(a, b, factor):
    """PIL's ImageEnhance: ``b + factor * (a - b)``, clipped."""
    return tf.clip_by_value(b + factor * (a - b), 0.0, 255.0)


def _grey(image):
    return tf.reduce_sum(image * [0.299, 0.587, 0.114], axis=-1, keepdims=True)


def _affine(image, matrix):
    """Applies a 3x3 inverse-map matrix (output -> input pixel) with mean-colour fill."""
    flat = tf.reshape(matrix, [9])[:8] / matrix[2, 2]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=flat[None],
        output_shape=tf.shape(image)[:2],
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
        fill_value=0.0,
    )[0]
    # Mark where the transform sampled outside the image, and fill there.
    inside = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.ones_like(image[None, :, :, :1]),
        transforms=flat[None],
        output_shape=tf.shape(image)[:2],
        interpolation="NEAREST",
        fill_mode="CONSTANT",
        fill_value=0.0,
    )[0]
    return out * inside + tf.constant(FILL, tf.float32) * (1.0 - inside)


def _rotate(image, degrees):
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    angle = degrees * math.pi / 180.0
    cx, cy = (width - 1) / 2, (height - 1) / 2
    cos, sin = tf.cos(angle), tf.sin(angle)
    # PIL rotates counter-clockwise about the centre; this maps output to input.
    matrix = tf.stack(
        [
            [cos, sin, cx - cos * cx - sin * cy],
            [-sin, cos, cy + sin * cx - cos * cy],
            [0.0, 0.0, 1.0],
        ]
    )
    return _affine(image, matrix)


def _shear(image, amount, axis):
    one, zero = tf.constant(1.0), tf.constant(0.0)
    if axis == "x":
        matrix = tf.stack([[one, amount, zero], [zero, one, zero], [zero, zero, one]])
    else:
        matrix = tf.stack([[one, zero, zero], [amount, one, zero], [zero, zero, one]])
    return _affine(image, matrix)


def _translate(image, fraction, axis):
    one, zero = tf.constant(1.0), tf.constant(0.0)
    size = tf.cast(tf.shape(image)[1 if axis == "x" else 0], tf.float32)
    pixels = fraction * size
    if axis == "x":
        matrix = tf.stack([[one, zero, pixels], [zero, one, zero], [zero, zero, one]])
    else:
        matrix = tf.stack([[one, zero, zero], [zero, one, pixels], [zero, zero, one]])
    return _affine(image, matrix)


def _auto_contrast(image):
    low = tf.reduce_min(image, axis=[0, 1], keepdims=True)
    high = tf.reduce_max(image, axis=[0, 1], keepdims=True)
    scale = tf.where(high > low, 255.0 / tf.maximum(high - low, 1e-6), 1.0)
    offset = tf.where(high > low, low, 0.0)
    return tf.clip_by_value((image - offset) * scale, 0.0, 255.0)


def _equalize_channel(channel):
    values = tf.cast(tf.clip_by_value(channel, 0, 255), tf.int32)
    hist = tf.math.bincount(tf.reshape(values, [-1]), minlength=256, maxlength=256)
    nonzero = tf.boolean_mask(hist, hist > 0)
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255

    def equalized():
        lut = (tf.cumsum(hist) - hist + step // 2) // step
        lut = tf.clip_by_value(lut, 0, 255)
        return tf.cast(tf.gather(lut, values), tf.float32)

    return tf.cond(step > 0, equalized, lambda: channel)


def _equalize(image):
    return tf.stack([_equalize_channel(image[..., c]) for c in range(3)], axis=-1)


def _posterize(image, bits):
    shift = tf.cast(8 - bits, tf.int32)
    values = tf.cast(image, tf.int32)
    return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(values, shift), shift), tf.float32)


def _solarize(image, threshold):
    return tf.where(image >= threshold, 255.0 - image, image)


def _solarize_add(image, addition, threshold=128.0):
    return tf.where(image < threshold, tf.clip_by_value(image + addition, 0.0, 255.0), image)


def _sharpness(image, factor):
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    blurred = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
    # PIL keeps the one-pixel border unchanged.
    degenerate = tf.pad(blurred, [[1, 1], [1, 1], [0, 0]])
    mask = tf.pad(tf.ones_like(blurred), [[1, 1], [1, 1], [0, 0]])
    degenerate = degenerate * mask + image * (1 - mask)
    return _blend(image, degenerate, factor)


def _signed(value, seed):
    return tf.where(_uniform(seed) < 0.5, -value, value)


# Each op: (name, function(image, level in [0, 10], sign seed)). Levels follow timm's
# "increasing" variants: a larger magnitude always means a stronger change.
RAND_OPS = [
    ("AutoContrast", lambda x, level, s: _auto_contrast(x)),
    ("Equalize", lambda x, level, s: _equalize(x)),
    ("Invert", lambda x, level, s: 255.0 - x),
    ("Rotate", lambda x, level, s: _rotate(x, _signed(level / 10 * 30.0, s))),
    (
        "PosterizeIncreasing",
        lambda x, level, s: _posterize(x, 4 - tf.cast(level / 10 * 4, tf.int32)),
    ),
    ("SolarizeIncreasing", lambda x, level, s: _solarize(x, 256.0 - tf.floor(level / 10 * 256))),
    ("SolarizeAdd", lambda x, level, s: _solarize_add(x, tf.floor(level / 10 * 110))),
    ("ColorIncreasing", lambda x, level, s: _blend(x, _grey(x), 1 + _signed(level / 10 * 0.9, s))),
    (
        "ContrastIncreasing",
        lambda x, level, s: _blend(
            x, tf.fill(tf.shape(x), tf.reduce_mean(_grey(x))), 1 + _signed(level / 10 * 0.9, s)
        ),
    ),
    (
        "BrightnessIncreasing",
        lambda x, level, s: _blend(x, tf.zeros_like(x), 1 + _signed(level / 10 * 0.9, s)),
    ),
    ("SharpnessIncreasing", lambda x, level, s: _sharpness(x, 1 + _signed(level / 10 * 0.9, s))),
    ("ShearX", lambda x, level, s: _shear(x, _signed(level / 10 * 0.3, s), "x")),
    ("ShearY", lambda x, level, s: _shear(x, _signed(level / 10 * 0.3, s), "y")),
    ("TranslateXRel", lambda x, level, s: _translate(x, _signed(level / 10 * 0.45, s), "x")),
    ("TranslateYRel", lambda x, level, s: _translate(x, _signed(level / 10 * 0.45, s), "y")),
]


def parse_randaugment(spec):
    """``"rand-m9-mstd0.5-inc1"`` -> ``(num_ops, magnitude, magnitude_std)``."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"RandAugment spec must start with 'rand-', got {spec!r}.")
    num_ops, magnitude, std = 2, 10.0, 0.0
    for part in parts[1:]:
        if part.startswith("mstd"):
            std = float(part[4:])
        elif part.startswith("m"):
            magnitude = float(part[1:])
        elif part.startswith("n"):
            num_ops = int(part[1:])
        elif part != "inc1":
            raise ValueError(f"unsupported RandAugment option {part!r} in {spec!r}.")
    return num_ops, magnitude, std


def rand_augment(image, seed, num_ops=2, magnitude=9.0, magnitude_std=0.5, prob=0.5):
    """timm's RandAugment: ``num_ops`` ops drawn with replacement, each applied with
    probability ``prob`` at a magnitude drawn from N(magnitude, magnitude_std)
    clipped to [0, 10]."""
    for seed_i in split_seed(seed, num_ops):
        s_op, s_apply, s_mag, s_sign = split_seed(seed_i, 4)
        index = tf.random.stateless_uniform((), s_op, 0, len(RAND_OPS), dtype=tf.int32)
        level = magnitude + magnitude_std * tf.random.stateless_normal((), s_mag)
        level = tf.clip_by_value(level, 0.0, 10.0)
        branches = [
            (lambda fn=fn, x=image, level=level, s=s_sign: fn(x, level, s)) for _, fn in RAND_OPS
        ]
        augmented = tf.switch_case(index, branches)
        image = tf.where(_uniform(s_apply) < prob, augmented, image)
        image = tf.ensure_shape(image, [None, None, 3])
    return image


# --- random erasing (timm mode "pixel", one box) ---------------------------------------


def random_erasing(image, seed, probability=0.25, area=(0.02, 1 / 3), log_ratio=(0.3, 1 / 0.3)):
    """With ``probability``, replaces one random box (area fraction in ``area``,
    log-uniform aspect ratio) with per-pixel normal noise in the normalised space
    the model sees (mean + std * N(0, 1), expressed in 0..255 pixels)."""
    s_apply, s_area, s_ratio, s_top, s_left, s_noise = split_seed(seed, 6)
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    target = height * width * _uniform(s_area, area[0], area[1], (10,))
    aspect = tf.exp(_uniform(s_ratio, math.log(log_ratio[0]), math.log(log_ratio[1]), (10,)))
    h = tf.round(tf.sqrt(target * aspect))
    w = tf.round(tf.sqrt(target / aspect))
    fits = (h < height) & (w < width) & (h > 0) & (w > 0)
    first = tf.argmax(tf.cast(fits, tf.int32))
    box_h, box_w = h[first], w[first]
    top = tf.floor(_uniform(s_top) * (height - box_h + 1))
    left = tf.floor(_uniform(s_left) * (width - box_w + 1))
    rows = tf.range(height)[:, None, None]
    cols = tf.range(width)[None, :, None]
    inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
    noise = tf.random.stateless_normal(tf.shape(image), s_noise)
    noise = (tf.constant(IMAGENET_MEAN) + tf.constant(IMAGENET_STD) * noise) * 255.0
    apply = (_uniform(s_apply) < probability) & tf.reduce_any(fits)
    return tf.where(apply & inside, noise, image)


# --- the train transform ---------------------------------------------------------------


def train_transform(image, seed, config):
    """The recipe's per-image train transform: random resized crop (random
    bilinear/bicubic), horizontal flip, RandAugment, random erasing."""
    s_crop, s_flip, s_ra, s_erase = split_seed(seed, 4)
    image = tf.cast(image, tf.float32)
    image = random_resized_crop(image, config.image_size, s_crop, scale=tuple(config.rrc_scale))
    if config.hflip:
        image = random_flip(image, s_flip)
    if config.randaugment:
        num_ops, magnitude, std = parse_randaugment(config.randaugment)
        image = rand_augment(image, s_ra, num_ops, magnitude, std)
    if config.random_erasing > 0:
        image = random_erasing(image, s_erase, config.random_erasing)
    return tf.ensure_shape(image, (config.image_size, config.image_size, 3))


# --- mixup / cutmix on batches (timm Mixup, mode "batch") --------------------------------


def smooth_one_hot(labels, num_classes, smoothing):
    off = smoothing / num_classes
    return tf.one_hot(labels, num_classes, on_value=1.0 - smoothing + off, off_value=off)


def cutmix_box(height, width, lam, seed):
    """timm's ``rand_bbox``: a box with sides ``sqrt(1 - lam)`` of the image, centred
    uniformly and clipped to it. Returns (top, bottom, left, right) as int32."""
    s_y, s_x = split_seed(seed, 2)
    ratio = tf.sqrt(1.0 - lam)
    cut_h = tf.cast(tf.cast(height, tf.float32) * ratio, tf.int32)
    cut_w = tf.cast(tf.cast(width, tf.float32) * ratio, tf.int32)
    cy = tf.random.stateless_uniform((), s_y, 0, height, dtype=tf.int32)
    cx = tf.random.stateless_uniform((), s_x, 0, width, dtype=tf.int32)
    top, bottom = (
        tf.clip_by_value(cy - cut_h // 2, 0, height),
        tf.clip_by_value(cy + cut_h // 2, 0, height),
    )
    left, right = (
        tf.clip_by_value(cx - cut_w // 2, 0, width),
        tf.clip_by_value(cx + cut_w // 2, 0, width),
    )
    return top, bottom, left, right


def mix_batch(images, labels, seed, num_classes, mixup_alpha, cutmix_alpha, switch_prob, smoothing):
    """Mixes a batch with its reverse, as timm's ``Mixup(mode="batch")``: cutmix with
    probability ``switch_prob`` (lambda ~ Beta(cutmix_alpha), then corrected to the
    pasted area), mixup otherwise (lambda ~ Beta(mixup_alpha)). Targets are the
    label-smoothed one-hots mixed with the same lambda, so each row sums to one.

    Returns:
        ``(images, targets, lam)``.
    """
    images = tf.cast(images, tf.float32)
    targets = smooth_one_hot(labels, num_classes, smoothing)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, targets, tf.constant(1.0)
    s_switch, s_beta, s_box = split_seed(seed, 3)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or switch_prob >= 1)
    if cutmix_alpha > 0 and mixup_alpha > 0:
        use_cutmix = _uniform(s_switch) < switch_prob
    use_cutmix = tf.convert_to_tensor(use_cutmix)
    alpha = tf.where(use_cutmix, float(max(cutmix_alpha, 1e-6)), float(max(mixup_alpha, 1e-6)))
    # Beta(a, a) from two Gammas.
    s_g1, s_g2 = split_seed(s_beta, 2)
    g1 = tf.random.stateless_gamma((), s_g1, alpha)
    g2 = tf.random.stateless_gamma((), s_g2, alpha)
    lam = g1 / (g1 + g2)
    flipped = tf.reverse(images, [0])
    shape = tf.shape(images)
    height, width = shape[1], shape[2]

    def cutmix():
        top, bottom, left, right = cutmix_box(height, width, lam, s_box)
        rows = tf.range(height)[:, None]
        cols = tf.range(width)[None, :]
        box = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
        mixed = tf.where(box[None, :, :, None], flipped, images)
        area = tf.cast((bottom - top) * (right - left), tf.float32)
        return mixed, 1.0 - area / tf.cast(height * width, tf.float32)

    def mixup():
        return images * lam + flipped * (1.0 - lam), lam

    mixed, lam = tf.cond(use_cutmix, cutmix, mixup)
    targets = targets * lam + tf.reverse(targets, [0]) * (1.0 - lam)
    return mixed, targets, lam
