"""Shared fixtures: real images from ../shared/data when present, tiny configs, the
PyTorch reference (cached per variant), and a clean dtype policy for every test."""

import csv
import functools
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests never touch the user's Keras cache, and a download nobody meant to make fails
# at once on this machine (port 9 on loopback refuses) instead of leaving it.
os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="keras_poolformer_tests_")
os.environ["KERAS_POOLFORMER_MIRROR"] = "http://127.0.0.1:9/"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# The shared data sits beside the repository: <root>/main (or a CI clone) and <root>/shared.
SHARED_DATA = Path(
    os.environ.get(
        "KERAS_POOLFORMER_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared/data"
    )
)
IMAGENET_VAL = SHARED_DATA / "imagenet-val-1300"

# The smallest PoolFormer that still has every part: four stages, a downsampling
# conv between each, norms, layer scales, the head.
TINY = {"depths": (1, 1, 2, 1), "dims": (8, 16, 24, 32)}


def imagenet_val_files(count):
    """Paths and class indices of the first ``count`` shared validation images, or
    ``None`` when the shared data is absent."""
    labels = IMAGENET_VAL / "labels.csv"
    if not labels.is_file():
        return None
    with labels.open(newline="") as f:
        rows = list(csv.DictReader(f))[:count]
    return [(IMAGENET_VAL / "images" / r["filename"], int(r["class_index"])) for r in rows]


def real_or_random_images(count, size, seed=0):
    """``count`` RGB images as float32 ``(count, h, w, 3)`` in 0..255: real ImageNet
    validation images resized to ``size`` when the shared data is present (the
    parity tests want natural image statistics), seeded noise otherwise."""
    files = imagenet_val_files(count)
    if files is None:
        rng = np.random.default_rng(seed)
        return rng.uniform(0, 255, (count, *size, 3)).astype(np.float32)
    import tensorflow as tf

    images = []
    for path, _ in files:
        image = tf.io.decode_jpeg(tf.io.read_file(str(path)), channels=3)
        image = tf.image.resize(tf.cast(image, tf.float32), size, method="bicubic", antialias=True)
        images.append(tf.clip_by_value(image, 0, 255).numpy())
    return np.stack(images)


@functools.cache
def reference(variant):
    """(transformers model, official state dict) with random weights, per variant."""
    from reference import reference_model

    from keras_poolformer import MODEL_CONFIGS

    config = MODEL_CONFIGS[variant]
    return reference_model(
        config["depths"], config["dims"], config["layer_scale_init_value"], seed=7
    )


@pytest.fixture(autouse=True)
def _float32_policy():
    """Every test starts, and leaves, with the float32 policy."""
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def requires_shared_data():
    if imagenet_val_files(1) is None:
        pytest.skip(f"shared data not found at {SHARED_DATA}")


def final_weights(folder):
    """``{dataset path: array}`` of a training run's ``final.weights.h5``."""
    import h5py

    with h5py.File(os.path.join(folder, "final.weights.h5")) as f:
        out = {}
        f.visititems(
            lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None
        )
    return out
