"""Datasets for training and evaluation: image folders, TFDS, and a synthetic set.

``--data`` specs:

- ``folder:PATH``: class sub-folders of images. If PATH has ``train/`` (and
  ``val/``) sub-folders they are the splits (Imagenette's layout); otherwise every
  tenth image of each class (by sorted name) is held out for validation. Files that
  do not decode, or are beyond the image limits
  (:class:`keras_poolformer.imagenet.ImageLimits`, checked from their headers), are
  skipped and counted (a scan at the first run, kept in the output folder).
- ``tfds:NAME[:split]``: any TFDS image-classification dataset (``image`` and
  ``label`` features), read from ``--data-dir``; ``imagenet2012`` built from a
  manual download works. The split names the training split (default ``train``);
  the validation split is ``validation``, else ``test``.
- ``synthetic``: generated here, plainly synthetic: 4 classes of 64x64 images of
  noise with one bright square, the class being the quadrant that holds it.

Every source is a fixed-order list of encoded images and labels. Each epoch's order
is a permutation drawn from (seed, epoch), and each image's augmentation a seed from
(seed, epoch, position), so a resumed run skips exactly the images it had seen
(before decoding them) and sees the same augmentations as an uninterrupted one.
"""

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from keras_poolformer import files
from keras_poolformer.imagenet import DEFAULT_IMAGE_LIMITS, decode_image, eval_transform
from keras_poolformer.training import augment

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


@dataclasses.dataclass
class Split:
    """A fixed-order split: ``images`` are file paths or encoded bytes held in memory,
    or, for large datasets, ``stream`` makes a ``tf.data`` of (encoded, label) in a
    fixed order and ``size`` says how many there are."""

    images: np.ndarray = None
    labels: np.ndarray = None
    skipped: tuple = ()  # files that did not decode
    stream: object = None
    size: int = 0

    def __len__(self):
        return self.size if self.stream is not None else len(self.labels)


@dataclasses.dataclass
class Source:
    name: str
    train: Split
    val: Split
    class_names: list


# --- folders ---------------------------------------------------------------------------


def _class_folders(path):
    if not os.path.isdir(path):
        raise ValueError(f"data folder '{path}' does not exist.")
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if not classes:
        raise ValueError(f"data folder '{path}' has no class sub-folders.")
    return classes


def _list_images(path, classes):
    paths, labels = [], []
    for index, name in enumerate(classes):
        folder = os.path.join(path, name)
        found = sorted(
            os.path.join(folder, f)
            for f in os.listdir(folder)
            if f.lower().endswith(IMAGE_SUFFIXES)
        )
        paths += found
        labels += [index] * len(found)
    return np.array(paths), np.array(labels, np.int32)


def _readable(paths, cache_file):
    """A boolean mask of the files that decode within the default image limits, scanned
    once and cached in ``cache_file`` (a scan made under other limits is redone)."""
    limits = dataclasses.asdict(DEFAULT_IMAGE_LIMITS)
    if cache_file and os.path.isfile(cache_file):
        with open(cache_file, encoding="utf-8") as f:
            cached = json.load(f)
        if cached.get("count") == len(paths) and cached.get("image_limits") == limits:
            bad = set(cached["unreadable"])
            return np.array([p not in bad for p in paths])
    print(f"checking that {len(paths)} images decode (once; the result is kept)...", flush=True)

    def check(index, path):
        image = decode_image(tf.io.read_file(path))
        return index, tf.shape(image)[0] > 0

    dataset = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), paths))
    dataset = dataset.map(check, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.apply(tf.data.experimental.ignore_errors())
    ok = np.zeros(len(paths), bool)
    tenth = max(len(paths) // 10, 1)
    for done, (index, valid) in enumerate(dataset.as_numpy_iterator(), start=1):
        ok[index] = valid
        if len(paths) >= 10_000 and done % tenth == 0:
            print(f"  {done:,} / {len(paths):,} checked", flush=True)
    if cache_file:
        with files.atomic_path(cache_file) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "count": len(paths),
                    "image_limits": limits,
                    "unreadable": [p for p, v in zip(paths, ok, strict=True) if not v],
                },
                f,
            )
    return ok


def _split(paths, labels, cache_file):
    ok = _readable(paths, cache_file)
    return Split(paths[ok], labels[ok], tuple(paths[~ok]))


def folder_source(path, cache_dir=None):
    train_dir, val_dir = os.path.join(path, "train"), os.path.join(path, "val")
    if os.path.isdir(train_dir):
        classes = _class_folders(train_dir)
        train_paths, train_labels = _list_images(train_dir, classes)
        if os.path.isdir(val_dir):
            val_paths, val_labels = _list_images(val_dir, classes)
        else:
            val_paths, val_labels = train_paths[:0], train_labels[:0]
    else:
        classes = _class_folders(path)
        paths, labels = _list_images(path, classes)
        held_out = np.zeros(len(paths), bool)
        for c in range(len(classes)):
            held_out[np.flatnonzero(labels == c)[::10]] = True
        train_paths, train_labels = paths[~held_out], labels[~held_out]
        val_paths, val_labels = paths[held_out], labels[held_out]
    if len(train_paths) == 0:
        raise ValueError(f"data folder '{path}' holds no images ({', '.join(IMAGE_SUFFIXES)}).")

    def cache(split):
        return os.path.join(cache_dir, f"scan_{split}.json") if cache_dir else None

    train = _split(train_paths, train_labels, cache("train"))
    val = (
        _split(val_paths, val_labels, cache("val"))
        if len(val_paths)
        else Split(val_paths, val_labels)
    )
    if len(train) == 0:
        raise ValueError(f"none of the {len(train_paths)} images in '{path}' decodes.")
    return Source(f"folder:{path}", train, val, classes)


# --- TFDS --------------------------------------------------------------------------------


def tfds_source(name, split, data_dir):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # tfds raises its own DatasetNotFoundError
        raise ValueError(f"unknown TFDS dataset {name!r}: {error}") from None
    if not builder.is_prepared():
        raise ValueError(
            f"TFDS dataset {name!r} is not prepared in {data_dir or '~/tensorflow_datasets'}; "
            "build it first (tfds build, or download_and_prepare with a manual download)."
        )
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(f"TFDS dataset {name!r} has no image and label features.")
    splits = builder.info.splits
    val_split = "validation" if "validation" in splits else "test" if "test" in splits else None

    def streamed(split_name):
        def stream():
            dataset = builder.as_dataset(
                split=split_name,
                shuffle_files=False,  # a fixed order, so that epochs and resumes are exact
                decoders={"image": tfds.decode.SkipDecoding()},
                read_config=tfds.ReadConfig(interleave_cycle_length=1),
            )
            return dataset.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)))

        return Split(stream=stream, size=splits[split_name].num_examples)

    if split not in splits:
        raise ValueError(f"TFDS dataset {name!r} has no split {split!r}; it has {list(splits)}.")
    return Source(
        f"tfds:{name}:{split}",
        streamed(split),
        streamed(val_split) if val_split else Split(np.array([]), np.zeros(0, np.int32)),
        features["label"].names,
    )


# --- synthetic -------------------------------------------------------------------------


def synthetic_images(count, seed, size=64):
    """``count`` noise images with one bright square; the label is its quadrant
    (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right). Returns uint8 images
    and int32 labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 110, (count, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, count).astype(np.int32)
    half = size // 2
    for image, label in zip(images, labels, strict=True):
        side = rng.integers(size // 8, size // 4 + 1)
        top = rng.integers(0, half - side + 1) + half * (label // 2)
        left = rng.integers(0, half - side + 1) + half * (label % 2)
        image[top : top + side, left : left + side] = rng.integers(200, 256, 3)
    return images, labels


def synthetic_source(train_count=1024, val_count=256):
    def encoded(count, seed):
        images, labels = synthetic_images(count, seed)
        pngs = np.array([tf.io.encode_png(image).numpy() for image in images], dtype=object)
        return Split(pngs, labels)

    names = ["top_left", "top_right", "bottom_left", "bottom_right"]
    return Source("synthetic", encoded(train_count, 1), encoded(val_count, 2), names)


def load_source(spec, data_dir=None, cache_dir=None):
    """The :class:`Source` a ``--data`` spec names."""
    kind, _, rest = spec.partition(":")
    if kind == "folder" and rest:
        return folder_source(rest, cache_dir)
    if kind == "tfds" and rest:
        name, _, split = rest.partition(":")
        return tfds_source(name, split or "train", data_dir)
    if spec == "synthetic":
        return synthetic_source()
    raise ValueError(
        f"unknown data spec {spec!r}; use folder:PATH, tfds:NAME[:split] or synthetic."
    )


# --- pipelines ---------------------------------------------------------------------------


def _loader(split):
    """Maps an element of ``split.images`` to a decoded uint8 image."""
    is_path = split.stream is None and len(split) and isinstance(split.images[0], str)

    def load(item):
        return decode_image(tf.io.read_file(item) if is_path else item)

    return load


def epoch_order(count, seed, epoch):
    """The permutation of a split for one epoch."""
    return np.random.default_rng([seed, epoch]).permutation(count)


def train_dataset(split, config, epoch, batch, num_batches, skip_batches=0, num_classes=None):
    """One epoch of training batches ``(images, soft_targets)``.

    Args:
        batch: images per batch (one micro-batch of the global batch).
        num_batches: batches in the epoch (optimizer steps x accumulation steps).
        skip_batches: batches of this epoch already trained on (when resuming);
            they are skipped before any image is read.
    """
    start, end = skip_batches * batch, num_batches * batch
    epoch_seed = config.seed * 1_000_003 + epoch  # the epoch's order and augmentations
    load = _loader(split)
    if split.stream is not None:
        # Too large to hold: a seeded shuffle buffer over the fixed-order records; on
        # resume the records already seen are read and dropped, not decoded.
        records = split.stream().repeat()
        records = records.shuffle(
            min(len(split), 20_000),
            seed=epoch_seed,
            reshuffle_each_iteration=False,
        )
        dataset = records.take(end).enumerate().skip(start)
        dataset = dataset.map(lambda position, pair: (position, *pair))
    else:  # small data wraps around when steps_per_epoch asks for more
        order = np.resize(epoch_order(len(split), config.seed, epoch), end)[start:]
        images = tf.constant(split.images[order]) if len(order) else tf.constant([], tf.string)
        positions = np.arange(start, end)
        dataset = tf.data.Dataset.from_tensor_slices((positions, images, split.labels[order]))

    def example(position, item, label):
        seed = tf.stack([tf.constant(epoch_seed, tf.int64), tf.cast(position, tf.int64)])
        return augment.train_transform(load(item), seed, config), label

    dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch, drop_remainder=True)

    def mix(step, pair):
        images, labels = pair
        seed = tf.stack([tf.cast(config.seed, tf.int64) + 7_919 * epoch, tf.cast(step, tf.int64)])
        mixed, targets, _ = augment.mix_batch(
            images,
            labels,
            seed,
            num_classes,
            config.mixup_alpha,
            config.cutmix_alpha,
            config.mixup_switch_prob,
            config.label_smoothing,
        )
        return mixed, targets

    dataset = dataset.enumerate(start=skip_batches).map(mix, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def eval_dataset(split, config, batch, max_batches=0):
    """Validation batches ``(images, labels)`` through the evaluation transform;
    the last batch may be smaller."""
    load = _loader(split)
    if split.stream is not None:
        dataset = split.stream()
    else:
        dataset = tf.data.Dataset.from_tensor_slices((tf.constant(split.images), split.labels))
    if max_batches:
        dataset = dataset.take(max_batches * batch)

    def example(item, label):
        return eval_transform(load(item), config.image_size, config.crop_pct), label

    dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch).prefetch(tf.data.AUTOTUNE)
