"""Class names, decode_predictions and the evaluation transform."""

import json

import numpy as np
import pytest
import tensorflow as tf
from conftest import SHARED_DATA, imagenet_val_files

import keras_poolformer as kp
from keras_poolformer.imagenet import class_names


def test_shipped_class_names_are_the_standard_index():
    names = class_names()
    assert len(names) == 1000
    assert names[0] == ("n01440764", "tench") and names[999] == ("n15075141", "toilet_tissue")
    index = SHARED_DATA / "imagenet_class_index.json"
    if not index.is_file():
        pytest.skip("shared imagenet_class_index.json absent")
    standard = json.loads(index.read_text())
    assert names == [tuple(standard[str(i)]) for i in range(1000)]


def test_decode_predictions_orders_by_score():
    preds = np.zeros((2, 1000), np.float32)
    preds[0, [472, 1, 2]] = [0.7, 0.2, 0.1]
    preds[1, 999] = 1.0
    top = kp.decode_predictions(preds, top=3)
    assert top[0] == [
        ("n02951358", "canoe", pytest.approx(0.7)),
        ("n01443537", "goldfish", pytest.approx(0.2)),
        ("n01484850", "great_white_shark", pytest.approx(0.1)),
    ]
    assert top[1][0][:2] == ("n15075141", "toilet_tissue")


@pytest.mark.parametrize("shape", [(1000,), (2, 10), (2, 1000, 1)])
def test_decode_predictions_refuses_other_shapes(shape):
    with pytest.raises(ValueError, match=r"\(batch, 1000\)"):
        kp.decode_predictions(np.zeros(shape))


@pytest.mark.parametrize(
    "height, width, crop_pct, resized",
    [
        (227, 227, 0.9, (248, 248)),
        (300, 500, 0.9, (248, 413)),
        (500, 300, 0.95, (391, 235)),  # int(224 / 0.95) = 235; int(235 * 500 / 300) = 391
    ],
)
def test_eval_transform_resizes_the_shorter_side_and_crops_the_centre(
    height, width, crop_pct, resized
):
    # A ramp image makes the crop position visible in the output.
    rows = np.arange(height, dtype=np.float32)[:, None, None] * np.ones((1, width, 3), np.float32)
    image = tf.constant(rows * (255.0 / height))
    out = kp.eval_transform(image, 224, crop_pct).numpy()
    assert out.shape == (224, 224, 3)
    assert out.min() >= 0 and out.max() <= 255
    expected = tf.image.resize(image, resized, method="bicubic", antialias=True).numpy()
    # torchvision's CenterCrop: offset int(round(margin / 2)), ties to even.
    top, left = (int(round((r - 224) / 2)) for r in resized)
    np.testing.assert_allclose(out, np.clip(expected[top : top + 224, left : left + 224], 0, 255))


def test_eval_transform_is_the_same_eagerly_and_in_tf_data():
    image = tf.random.stateless_uniform((180, 333, 3), (1, 2), maxval=256, dtype=tf.int32)
    image = tf.cast(image, tf.uint8)
    eager = kp.eval_transform(image).numpy()
    mapped = next(iter(tf.data.Dataset.from_tensors(image).map(kp.eval_transform))).numpy()
    np.testing.assert_array_equal(eager, mapped)


def test_load_image_reads_real_images(requires_shared_data):
    path, label = imagenet_val_files(1)[0]
    image = kp.load_image(path)
    assert image.shape == (224, 224, 3) and image.dtype == np.float32
    assert 0 <= image.min() < image.max() <= 255


def test_load_image_decodes_grey_and_rgba_to_rgb(tmp_path):
    grey = tf.io.encode_png(tf.fill((40, 50, 1), tf.constant(100, tf.uint8)))
    rgba = tf.io.encode_png(tf.fill((40, 50, 4), tf.constant(30, tf.uint8)))
    (tmp_path / "grey.png").write_bytes(grey.numpy())
    (tmp_path / "rgba.png").write_bytes(rgba.numpy())
    np.testing.assert_allclose(kp.load_image(tmp_path / "grey.png"), 100, atol=1e-3)
    assert kp.load_image(tmp_path / "rgba.png").shape == (224, 224, 3)


def test_load_image_names_a_file_that_is_no_image(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        kp.load_image(path)
