"""Grad-CAM: shapes, ranges, class choice, and the PNG overlays people look at.

The issue's localisation test (the peak in the bright square's quadrant for 90% of
held-out images) is not here yet: see the closing note of the session that added this.
"""

import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY

import keras_poolformer as kp
from keras_poolformer.gradcam import save_overlay


@pytest.fixture(scope="module")
def model():
    return kp.PoolFormer(**TINY, input_shape=(64, 64, 3), classes=4, weights=None)


def images(n=3):
    return np.random.default_rng(0).uniform(0, 255, (n, 64, 64, 3)).astype(np.float32)


def test_heatmaps_are_in_unit_range_and_shaped_like_the_input(model):
    maps, classes = kp.gradcam(model, images())
    assert maps.shape == (3, 64, 64) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    np.testing.assert_array_equal(classes, model.predict(images(), verbose=0).argmax(1))


def test_class_and_layer_can_be_chosen(model):
    for_class_2, classes = kp.gradcam(model, images(), class_index=2)
    assert list(classes) == [2, 2, 2]
    earlier, _ = kp.gradcam(model, images(), layer="stage1_block0")
    assert earlier.shape == (3, 64, 64)
    assert not np.allclose(earlier, for_class_2)
    with pytest.raises(ValueError, match=r"\(n, height, width, 3\)"):
        kp.gradcam(model, images()[0])


def test_the_explained_score_drives_the_map(model):
    """A map is the ReLU of the gradient-weighted feature map: explaining two different
    classes of the same image gives different maps."""
    a, _ = kp.gradcam(model, images(1), class_index=0)
    b, _ = kp.gradcam(model, images(1), class_index=1)
    assert not np.allclose(a, b)


def test_overlay_png_opens(tmp_path, model):
    maps, _ = kp.gradcam(model, images(1))
    path = tmp_path / "overlay.png"
    save_overlay(images(1)[0], maps[0], "class 0 (50%)", path)
    picture = tf.io.decode_png(path.read_bytes())
    assert picture.shape[0] > 100 and picture.shape[1] > 300


def test_gradcam_command_writes_an_overlay_per_image(tmp_path, capsys):
    from keras_poolformer import cli
    from keras_poolformer.training import configs, trainer

    run = tmp_path / "run"
    trainer.train(configs.get_config("demo", smoke_run=True), "synthetic", str(run), log=print)
    samples = sorted(str(p) for p in (run / "samples").iterdir())
    assert (
        cli.main(["gradcam", *samples, "--run", str(run), "--output", str(tmp_path / "cam")]) == 0
    )
    written = sorted((tmp_path / "cam").iterdir())
    assert [p.name for p in written] == [
        f"{i}_{name}_gradcam.png"
        for i, name in enumerate(["top_left", "top_right", "bottom_left", "bottom_right"])
    ]
    for png in written:
        assert tf.io.decode_png(png.read_bytes()).shape[-1] in (3, 4)
