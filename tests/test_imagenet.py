"""Class names, decode_predictions and the evaluation transform."""

import json

import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY, imagenet_val_files, shared_data
from PIL import Image

import keras_poolformer as kp
from keras_poolformer.imagenet import class_names, resize_like_pil


def test_shipped_class_names_are_the_standard_index():
    names = class_names()
    assert len(names) == 1000
    assert names[0] == ("n01440764", "tench") and names[999] == ("n15075141", "toilet_tissue")
    index = shared_data("imagenet_class_index.json")
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


def pillow_eval(image, image_size=224, crop_pct=0.9, passes="pillow"):
    """timm's evaluation transform as torchvision applies it to a PIL image, written
    here from Pillow: ``Resize(int(image_size / crop_pct), BICUBIC)`` (the shorter
    side; the longer one is ``int(size * long / short)``), then ``CenterCrop``, whose
    offsets are ``int(round(margin / 2))``.

    ``passes="pillow"`` resizes with one ``Image.resize`` call, as torchvision does.
    ``passes="width-first"`` makes the two passes Pillow's resize is made of one call
    each, width then height, which is what every Pillow release did until Pillow 13
    began to resize height first where the height shrinks much more than the width.
    """
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, np.uint8))
    width, height = image.size
    short = int(image_size / crop_pct)
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    if passes == "pillow":
        image = image.resize((new_w, new_h), Image.BICUBIC)
    else:
        if new_w != width:
            image = image.resize((new_w, height), Image.BICUBIC)
        if new_h != height:
            image = image.resize((new_w, new_h), Image.BICUBIC)
    top = int(round((new_h - image_size) / 2.0))
    left = int(round((new_w - image_size) / 2.0))
    return np.asarray(image.crop((left, top, left + image_size, top + image_size)), np.float32)


def noise(height, width, seed=0):
    """uint8 RGB noise: every pixel and channel differs, so a crop or resize that is off
    by one position, or swaps channels or axes, changes most of the output."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "height, width, image_size, crop_pct",
    [
        (227, 227, 224, 0.9),  # square, shrunk
        (300, 500, 224, 0.9),  # landscape: the crop moves along the width
        (500, 300, 224, 0.95),  # portrait, M-size crop
        (333, 517, 224, 0.875),  # odd sides, odd margins
        (517, 333, 160, 1.0),  # no crop margin on the short side
        (97, 181, 224, 0.9),  # enlarged on both axes
        (61, 1200, 224, 0.9),  # aspect ratio near the limit of 20
        (1600, 2400, 224, 0.9),  # shrunk 6.5x: 27 taps a pass
        (248, 400, 224, 0.9),  # the short side already at 248: one pass only
    ],
)
def test_eval_transform_gives_pillows_pixels(height, width, image_size, crop_pct):
    image = noise(height, width)
    out = kp.eval_transform(tf.constant(image), image_size, crop_pct).numpy()
    assert out.shape == (image_size, image_size, 3) and out.dtype == np.float32
    # Both the classic width-then-height passes and Pillow's own call (Pillow 13 may
    # pick height first, but not where both sides shrink alike, as here).
    np.testing.assert_array_equal(out, pillow_eval(image, image_size, crop_pct, "width-first"))
    np.testing.assert_array_equal(out, pillow_eval(image, image_size, crop_pct))


@pytest.mark.parametrize(
    "size, new_size",
    [
        ((40, 60), (90, 33)),  # taller and narrower
        ((90, 33), (40, 60)),  # shorter and wider
        ((50, 70), (50, 20)),  # width only
        ((50, 70), (13, 70)),  # height only
        ((7, 9), (7, 9)),  # nothing to do
        ((300, 20), (3, 200)),  # 100x shrink of the height, 10x growth of the width
    ],
)
def test_resize_like_pil_equals_pillows_width_then_height_passes(size, new_size):
    image = noise(*size, seed=1)
    out = resize_like_pil(tf.constant(image), *new_size).numpy()
    assert out.dtype == np.uint8 and out.shape == (*new_size, 3)
    expected = Image.fromarray(image)
    if new_size[1] != size[1]:
        expected = expected.resize((new_size[1], size[0]), Image.BICUBIC)
    if new_size[0] != size[0]:
        expected = expected.resize((new_size[1], new_size[0]), Image.BICUBIC)
    np.testing.assert_array_equal(out, np.asarray(expected))
    with pytest.raises(TypeError, match="uint8"):
        resize_like_pil(tf.constant(image, tf.float32), *new_size)


def test_eval_transform_of_a_float_image_is_one_tensorflow_resize():
    """A float image has no Pillow counterpart: one float32 antialiased bicubic resize.
    On smooth content it stays within rounding of Pillow's pixels, so a wrong crop
    offset or axis would still show."""
    rows, cols = np.mgrid[0:300, 0:500].astype(np.float32)
    smooth = np.stack([rows * 0.8, cols * 0.5, (rows + cols) * 0.3], axis=-1)
    out = kp.eval_transform(tf.constant(smooth)).numpy()
    expected = pillow_eval(np.round(smooth), passes="width-first")
    assert np.abs(out - expected).max() <= 1.5


def test_load_image_equals_pillow_on_real_jpegs():
    """The released weights' input: Pillow's decode, bicubic resize and centre crop
    (timm's evaluation transform), on real ImageNet validation JPEGs of many sizes."""
    worst, differing = 0.0, 0
    for path, _ in imagenet_val_files(80):
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        decoded = kp.decode_image(tf.constant(path.read_bytes())).numpy()
        np.testing.assert_array_equal(decoded, np.asarray(rgb), err_msg=str(path))
        ours = kp.load_image(path)
        np.testing.assert_array_equal(ours, pillow_eval(rgb, passes="width-first"))
        difference = np.abs(ours - pillow_eval(rgb))  # the Pillow installed, one call
        worst, differing = max(worst, difference.max()), differing + (difference.max() > 0)
    assert worst <= 1, f"{differing} images differ from Pillow by up to {worst}"


def test_other_formats_decode_to_pillows_pixels(tmp_path):
    """PNG, BMP and GIF are lossless: their pixels must be Pillow's exactly, grey and
    palette images included."""
    rgb = noise(37, 53, seed=2)
    images = {
        "rgb.png": Image.fromarray(rgb),
        "grey.png": Image.fromarray(rgb[..., 0]),
        "rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]])),
        "rgb.bmp": Image.fromarray(rgb),
        "palette.gif": Image.fromarray(rgb).quantize(64),
    }
    for name, image in images.items():
        path = tmp_path / name
        image.save(path)
        with Image.open(path) as reread:
            expected = np.asarray(reread.convert("RGB"))
        decoded = kp.decode_image(tf.constant(path.read_bytes())).numpy()
        np.testing.assert_array_equal(decoded, expected, err_msg=name)


def test_serving_signature_gives_load_image_and_the_model(tmp_path):
    """The SavedModel's ``serving_default`` (image bytes in) decodes and transforms as
    ``load_image`` does: its probabilities equal the model's on ``load_image``'s
    pixels, for JPEGs and a PNG."""
    from keras_poolformer import export

    model = kp.PoolFormer(
        **TINY, input_shape=(160, 160, 3), classes=1000, weights=None, classifier_activation=None
    )
    rng = np.random.default_rng(3)
    model.set_weights([rng.normal(0, 0.2, w.shape).astype(np.float32) for w in model.weights])
    paths = [path for path, _ in imagenet_val_files(5)]
    paths.append(tmp_path / "noise.png")
    Image.fromarray(noise(90, 130, seed=4)).save(paths[-1])
    served = tf.saved_model.load(export.export_saved_model(model, tmp_path / "m", crop_pct=0.9))
    out = served.signatures["serving_default"](
        image_bytes=tf.constant([path.read_bytes() for path in paths])
    )
    pixels = np.stack([kp.load_image(path, image_size=160, crop_pct=0.9) for path in paths])
    expected = tf.nn.softmax(model(pixels)).numpy()
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-6)
    assert len(set(np.argmax(expected, axis=1))) > 1  # the weights tell images apart


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


def test_training_evaluation_data_gives_pillows_pixels(tmp_path):
    """The evaluation batches of a training run over an image folder are the released
    weights' inputs too: Pillow's decode, resize and crop of each file, in order."""
    from training import configs, data

    folder = shared_data("imagenette2-160/val")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())[:2]
    for split in ("train", "val"):  # a small folder source: links to real JPEGs
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            for path in sorted((folder / name).iterdir())[:3]:
                (tmp_path / split / name / path.name).symlink_to(path)
    source = data.folder_source(str(tmp_path))
    config = configs.Config(image_size=160, crop_pct=0.875)
    batches = data.eval_dataset(source.val, config, batch=4)
    images = np.concatenate([images.numpy() for images, _ in batches])
    assert images.shape == (6, 160, 160, 3)
    for image, path in zip(images, source.val.images, strict=True):
        with Image.open(path) as pil:
            expected = pillow_eval(pil.convert("RGB"), 160, 0.875, passes="width-first")
        np.testing.assert_array_equal(image, expected, err_msg=str(path))
