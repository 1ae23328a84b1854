"""Shared fixtures: real images from ../shared/data, tiny configs, the PyTorch
reference (cached per variant), and a clean dtype policy for every test.

A test that needs the shared data and does not find it is skipped, with the missing
path in the reason; when the environment variable ``CI`` is set (``CI=true bash
.ci/run``) it fails instead, so that CI never passes by skipping."""

import csv
import functools
import os
import re
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


def in_ci():
    """Whether the tests run in CI: the environment variable ``CI`` is set (to anything
    but an empty string, ``0`` or ``false``)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def missing_shared_data(message):
    """Skips the running test for want of shared data, or fails it when :func:`in_ci`;
    ``message`` names what is missing. Never returns."""
    message = f"{message} (shared data folder: {SHARED_DATA}; KERAS_POOLFORMER_SHARED_DATA sets it)"
    if in_ci():
        pytest.fail(f"{message}; CI is set, and CI does not skip tests", pytrace=False)
    pytest.skip(message)


def shared_data(relative):
    """The path of ``relative`` under the shared data folder; when it is absent the
    test is skipped (failed in CI) with a message naming the missing path."""
    path = SHARED_DATA / relative
    if not path.exists():
        missing_shared_data(f"shared data not found: {path} is missing")
    return path


def imagenet_val_files(count):
    """Paths and class indices of the first ``count`` shared validation images.

    When the shared data is absent (or holds fewer than ``count`` images) the test is
    skipped, or failed in CI, with the missing path in the message: this never
    returns ``None``."""
    labels = shared_data(IMAGENET_VAL.relative_to(SHARED_DATA) / "labels.csv")
    with labels.open(newline="") as f:
        rows = list(csv.DictReader(f))[:count]
    if len(rows) < count:
        missing_shared_data(f"shared data incomplete: {labels} lists {len(rows)} of {count} images")
    files = [(IMAGENET_VAL / "images" / r["filename"], int(r["class_index"])) for r in rows]
    for path, _ in files:
        if not path.is_file():
            missing_shared_data(f"shared data not found: {path} is missing")
    return files


def imagenet_val_images(count, size):
    """The first ``count`` shared ImageNet validation images, resized to ``size``, as
    float32 ``(count, h, w, 3)`` RGB in 0..255 (the parity tests want natural image
    statistics). Skips (fails in CI) when the shared data is absent."""
    files = imagenet_val_files(count)
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
    """Skips the test (fails it in CI) when the shared validation images are absent."""
    imagenet_val_files(1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI, a skip written outside this file for want of the shared data (its reason
    names the shared data folder, or says that something shared is absent, missing or
    not found) is reported as a failure: CI never skips for want of the data."""
    outcome = yield
    report = outcome.get_result()
    if not (in_ci() and report.skipped and call.excinfo is not None):
        return
    if hasattr(report, "wasxfail"):
        return
    reason = str(call.excinfo.value)
    if str(SHARED_DATA) in reason or re.search(
        r"\bshared\b.*\b(absent|missing|not found)\b", reason, re.IGNORECASE
    ):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI for want of shared data: {reason}"


def final_weights(folder):
    """``{dataset path: array}`` of a training run's ``final.weights.h5``."""
    import h5py

    with h5py.File(os.path.join(folder, "final.weights.h5")) as f:
        out = {}
        f.visititems(
            lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None
        )
    return out
