"""The segmentation task (training/segmentation.py): the masks reader and its refusals,
the resumable augmented dataset, the loss, mean IoU, the overlay and the SavedModel.

The real-data tests read ../shared/data/camvid (skipped naming the path when it is
absent, failed in CI); the others build small folders in ``tmp_path``. The models are
tiny (depths 1-1-1-1, dims 16-64) so that the file runs in a few minutes on a CPU."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import shared_data
from PIL import Image

from keras_poolformer.training import configs
from keras_poolformer.training import segmentation as seg

TINY = configs.Config(
    model="custom",
    depths=(1, 1, 1, 1),
    dims=(16, 32, 48, 64),
    image_size=128,
    batch_size=2,
    drop_path_rate=0.0,
    seed=3,
)


@pytest.fixture(scope="module")
def camvid():
    return shared_data("camvid")


@pytest.fixture(scope="module")
def camvid_source(camvid, tmp_path_factory):
    return seg.SegmentationTask().load_source(
        f"masks:{camvid}", cache_dir=str(tmp_path_factory.mktemp("scan"))
    )


@pytest.fixture(scope="module")
def tiny_model(camvid_source):
    keras.utils.set_random_seed(0)
    return seg.SegmentationTask().build_model(TINY, camvid_source)


# --- synthetic folders whose colours encode the classes ----------------------------------


def colour_of(classes):
    """The RGB colour that encodes each class index (for images that say their mask)."""
    classes = np.asarray(classes, np.int32)
    return np.stack([classes * 20 + 10, 250 - classes * 20, np.full_like(classes, 128)], -1)


def class_of(pixels):
    """The class whose colour is nearest the red channel of ``pixels``."""
    return np.clip(np.round((np.asarray(pixels)[..., 0] - 10) / 20), 0, 10).astype(np.int32)


def block_mask(rng, height, width, block):
    grid = rng.integers(0, 11, (-(-height // block), -(-width // block)))
    return np.kron(grid, np.ones((block, block), np.int32))[:height, :width].astype(np.uint8)


def write_folder(root, sizes, seed=0, block=16, ignore_band=True):
    """A masks:PATH folder: train/ and val/ with PNG images whose colour encodes each
    pixel's class; a band of ignore-index (11) pixels in every mask when asked."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        os.makedirs(root / split / "images", exist_ok=True)
        os.makedirs(root / split / "labels", exist_ok=True)
        for index, (height, width) in enumerate(sizes):
            mask = block_mask(rng, height, width, block)
            image = colour_of(mask).astype(np.uint8)
            if ignore_band:
                mask[:, :3] = seg.IGNORE_INDEX  # the image keeps class colours there
            Image.fromarray(image).save(root / split / "images" / f"{index:03d}.png")
            Image.fromarray(mask, mode="L").save(root / split / "labels" / f"{index:03d}.png")
    return root


def colour_predictor(confuse=None):
    """A 'model' reading each pixel's class off its colour: logits one-hot of that
    class, optionally with ``confuse = (a, b)`` predicting b wherever the colour says a."""

    def model(images, training=False):
        classes = tf.cast(tf.clip_by_value(tf.round((images[..., 0] - 10) / 20), 0, 10), tf.int32)
        if confuse:
            classes = tf.where(classes == confuse[0], confuse[1], classes)
        return tf.one_hot(classes, 11) * 10.0

    return model


# --- the reader ----------------------------------------------------------------------------


def test_reader_on_camvid(camvid, camvid_source, tmp_path):
    source = camvid_source
    assert (len(source.train), len(source.val)) == (367, 101)
    assert source.class_names == list(seg.CAMVID_CLASSES)
    assert source.ignore_index == seg.IGNORE_INDEX == 11
    assert source.train.skipped == () and source.val.skipped == ()
    for image, mask in zip(source.train.images, source.train.masks, strict=True):
        assert (
            os.path.splitext(os.path.basename(image))[0]
            == os.path.splitext(os.path.basename(mask))[0]
        )
    largest = max(int(seg.read_mask(p).max()) for p in [*source.train.masks, *source.val.masks])
    assert largest < 12
    # The check is kept: a second load reads the cache, not the masks.
    cache = tmp_path / "cache"
    seg.masks_source(str(camvid), str(cache))
    assert sorted(os.listdir(cache)) == ["mask_scan_train.json", "mask_scan_val.json"]


def _copy_pairs(camvid, root, count=2):
    for split in ("train", "val"):
        for sub in ("images", "labels"):
            os.makedirs(root / split / sub)
        stems = sorted(os.listdir(camvid / split / "labels"))[:count]
        for name in stems:
            stem = os.path.splitext(name)[0]
            shutil.copy(camvid / split / "images" / f"{stem}.jpg", root / split / "images")
            shutil.copy(camvid / split / "labels" / name, root / split / "labels")
    return sorted((root / "train" / "labels").iterdir())[0]


def _break(kind, mask_path):
    """Breaks the first training pair one way; returns the file the error must name."""
    stem = mask_path.stem
    image_path = mask_path.parent.parent / "images" / f"{stem}.jpg"
    mask = np.asarray(Image.open(mask_path))
    if kind == "image without mask":
        mask_path.unlink()
        return image_path
    if kind == "mask without image":
        image_path.unlink()
        return mask_path
    if kind == "rgb mask":
        Image.fromarray(np.stack([mask] * 3, -1)).save(mask_path)
    elif kind == "not a png":
        mask_path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated")
    elif kind == "jpeg named png":
        Image.fromarray(mask).save(mask_path, format="JPEG")
    elif kind == "wrong size":
        Image.fromarray(mask[:-8]).save(mask_path)
    elif kind == "value out of range":
        mask = mask.copy()
        mask[5, 7] = 12
        Image.fromarray(mask).save(mask_path)
    return mask_path


@pytest.mark.parametrize(
    "kind",
    [
        "image without mask",
        "mask without image",
        "rgb mask",
        "not a png",
        "jpeg named png",
        "wrong size",
        "value out of range",
    ],
)
def test_broken_masks_are_refused_naming_the_file(camvid, tmp_path, kind):
    mask_path = _copy_pairs(camvid, tmp_path / "data")
    named = _break(kind, mask_path)
    with pytest.raises(ValueError, match=named.name):
        seg.SegmentationTask().load_source(f"masks:{tmp_path / 'data'}")


def test_classes_txt_sets_classes_and_ignore_index(tmp_path):
    root = write_folder(tmp_path / "data", [(32, 32)], ignore_band=False)
    (root / "classes.txt").write_text("\n".join(f"c{i}" for i in range(11)) + "\n")
    source = seg.masks_source(str(root))
    assert source.class_names == [f"c{i}" for i in range(11)] and source.ignore_index == 11
    # Fewer classes: the values 5..10 of the masks are now out of range.
    (root / "classes.txt").write_text("a\nb\nc\nd\ne\n")
    with pytest.raises(ValueError, match=r"labels/000\.png"):
        seg.masks_source(str(root))


# --- the training dataset ---------------------------------------------------------------------


def _batches(dataset):
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def test_dataset_deterministic_resumable_and_wrapping(camvid_source):
    task = seg.SegmentationTask()
    split = seg.MaskSplit(camvid_source.train.images[:5], camvid_source.train.masks[:5])
    config = TINY.replace(image_size=64)
    full = _batches(task.train_dataset(split, config, epoch=1, batch=2, num_batches=4))
    assert len(full) == 4  # 8 examples from 5 images: the order wraps round
    for images, masks in full:
        assert images.shape == (2, 64, 64, 3) and images.dtype == np.float32
        assert masks.shape == (2, 64, 64) and masks.dtype == np.int32
        assert images.min() >= 0 and images.max() <= 255 and masks.max() <= 11
    again = _batches(task.train_dataset(split, config, epoch=1, batch=2, num_batches=4))
    tail = _batches(task.train_dataset(split, config, 1, 2, 4, skip_batches=2))
    assert len(tail) == 2
    for a, b in zip(full, again, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    for a, b in zip(full[2:], tail, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    other = _batches(task.train_dataset(split, config, epoch=2, batch=2, num_batches=4))
    assert not np.array_equal(full[0][0], other[0][0])


def test_augmentation_keeps_image_and_mask_aligned(tmp_path):
    root = write_folder(tmp_path / "data", [(96, 128), (48, 40)], block=32)
    task = seg.SegmentationTask()
    source = task.load_source(f"masks:{root}")
    config = TINY.replace(image_size=64, hflip=True)
    agree, padded, flipped_seen = [], 0, False
    for epoch in range(6):
        for images, masks in _batches(task.train_dataset(source.train, config, epoch, 2, 2)):
            labelled = masks != seg.IGNORE_INDEX
            agree.append(np.mean(class_of(images)[labelled] == masks[labelled]))
            # Padding (the 48x40 image at scale < 1.33 is smaller than the crop): black,
            # ignored. Black decodes as class 0 by colour, so count it apart.
            black = np.all(images == 0, axis=-1)
            padded += int(black.sum())
            assert np.all(masks[black] == seg.IGNORE_INDEX)
            # The ignore band (first 3 columns) lands on the right after a flip.
            flipped_seen |= bool(np.any(masks[:, :, -1] == seg.IGNORE_INDEX))
    assert np.mean(agree) > 0.9, agree  # bilinear edges differ; a misaligned crop ~0.1
    assert min(agree) > 0.75, agree
    assert padded > 0 and flipped_seen


# --- the model and the loss ----------------------------------------------------------------------


def test_model_outputs_logits_at_input_resolution(tiny_model):
    logits = tiny_model(np.full((1, 128, 160, 3), 100.0, np.float32), training=False)
    assert tuple(logits.shape) == (1, 128, 160, 11)
    sums = tf.reduce_sum(logits, -1).numpy()
    assert not np.allclose(sums, 1.0)  # not softmax probabilities


def test_cheaper_logits_equal_the_models(tiny_model):
    images = tf.constant(np.random.default_rng(1).uniform(0, 255, (1, 96, 128, 3)), tf.float32)
    fast = seg.logits_function(tiny_model)
    assert fast is not tiny_model
    expected = tiny_model(images, training=False).numpy()
    got = fast(images, training=False).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())
    # Training mode goes through the same layers: batch norm statistics move.
    norm = tiny_model.backbone.get_layer("segmentation_head_norm")
    before = norm.moving_mean.numpy().copy()
    fast(images, training=True)
    moved = not np.allclose(before, norm.moving_mean.numpy())
    norm.moving_mean.assign(before)
    assert moved


def test_resnet18_segmenter(camvid_source):
    config = TINY.replace(model="resnet18", depths=(), dims=(64, 64, 128, 256))
    model = seg.SegmentationTask().build_model(config, camvid_source)
    assert tuple(model(np.zeros((1, 64, 96, 3)), training=False).shape) == (1, 64, 96, 11)


def test_init_from_classifier_weights(camvid_source, tmp_path):
    from keras_poolformer.training import trainer

    config = TINY.replace(task="classification")
    classifier = trainer.build_model(config, 3)
    path = str(tmp_path / "clf.weights.h5")
    classifier.save_weights(path)
    (tmp_path / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    model = seg.SegmentationTask().build_model(TINY, camvid_source, init=path)
    encoder = model.backbone.image_encoder
    checked = 0
    for layer in encoder.layers:
        if layer.weights:
            for ours, theirs in zip(
                layer.get_weights(), classifier.get_layer(layer.name).get_weights(), strict=True
            ):
                np.testing.assert_array_equal(ours, theirs)
            checked += 1
    assert checked > 5


def test_init_from_classification_run_folder(camvid_source, tmp_path):
    import dataclasses

    from keras_poolformer.training import trainer

    config = TINY.replace(task="classification")
    keras.utils.set_random_seed(5)
    classifier = trainer.build_model(config, 4)
    run = tmp_path / "run"
    run.mkdir()
    classifier.save_weights(str(run / "final.weights.h5"))
    saved = {**dataclasses.asdict(config), "data": "synthetic", "init": None}
    (run / "config.json").write_text(json.dumps(saved))
    (run / "classes.json").write_text(json.dumps(["a", "b", "c", "d"]))
    model = seg.SegmentationTask().build_model(TINY, camvid_source, init=str(run))
    layer = next(
        layer for layer in model.backbone.image_encoder.layers if len(layer.get_weights()) == 2
    )
    for ours, theirs in zip(
        layer.get_weights(), classifier.get_layer(layer.name).get_weights(), strict=True
    ):
        np.testing.assert_array_equal(ours, theirs)
    with pytest.raises(ValueError, match="expected 'imagenet', a classification run folder"):
        seg.SegmentationTask().build_model(TINY, camvid_source, init=str(tmp_path / "nothing"))


def test_one_gradient_step_is_finite(tiny_model, camvid_source):
    task = seg.SegmentationTask()
    images, masks = next(iter(task.train_dataset(camvid_source.train, TINY, 0, 2, 1)))
    optimizer = keras.optimizers.AdamW(1e-3)
    with tf.GradientTape() as tape:
        per_example = task.loss(tiny_model, images, masks)
        loss = tf.reduce_mean(per_example)
    grads = tape.gradient(loss, tiny_model.trainable_variables)
    assert per_example.shape == (2,) and per_example.dtype == tf.float32
    assert np.isfinite(loss.numpy()) and 1.0 < loss.numpy() < 10.0
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)
    optimizer.apply_gradients(zip(grads, tiny_model.trainable_variables, strict=True))
    after = task.loss(tiny_model, images, masks).numpy()
    assert np.all(np.isfinite(after))


def test_loss_ignores_the_ignore_index():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 8, 8, 11)).astype(np.float32)
    targets = rng.integers(0, 11, (2, 8, 8)).astype(np.int32)
    targets[0, :4] = seg.IGNORE_INDEX
    targets[1] = seg.IGNORE_INDEX  # an image with no labelled pixel: loss 0
    task = seg.SegmentationTask()
    loss = task.loss(lambda x, training: tf.constant(x), logits, targets).numpy()
    changed = logits.copy()
    changed[targets == seg.IGNORE_INDEX] = rng.normal(size=11) * 50
    again = task.loss(lambda x, training: tf.constant(x), changed, targets).numpy()
    np.testing.assert_array_equal(loss, again)
    # The first image's loss: the mean cross-entropy of its 32 labelled pixels.
    labelled = targets[0, 4:]
    log_p = logits[0, 4:] - np.log(np.exp(logits[0, 4:]).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_p, labelled[..., None], -1).mean()
    np.testing.assert_allclose(loss[0], expected, rtol=1e-5)
    assert loss[1] == 0.0


# --- evaluation -----------------------------------------------------------------------------------


def test_evaluate_perfect_and_known_confusion(tmp_path):
    # One size a multiple of 32, one not: the padding must count nowhere.
    root = write_folder(tmp_path / "data", [(64, 96), (50, 70)], block=16)
    task = seg.SegmentationTask()
    source = task.load_source(f"masks:{root}")
    config = TINY.replace(batch_size=2)
    perfect = task.evaluate(colour_predictor(), source.val, config)
    assert perfect == {"val_miou": 1.0, "val_pixel_acc": 1.0}

    # Predict class 2 wherever the truth is class 1: IoU(1) = 0, IoU(2) = n2 / (n1 + n2).
    masks = np.concatenate([seg.read_mask(p).ravel() for p in source.val.masks])
    counts = np.bincount(masks, minlength=12)
    present = counts[:11] > 0
    assert present[1] and present[2]
    iou = np.where(present, 1.0, np.nan)
    iou[1], iou[2] = 0.0, counts[2] / (counts[1] + counts[2])
    confused = task.evaluate(colour_predictor((1, 2)), source.val, config)
    np.testing.assert_allclose(confused["val_miou"], np.nanmean(iou), rtol=1e-6)
    labelled = counts[:11].sum()
    np.testing.assert_allclose(confused["val_pixel_acc"], 1 - counts[1] / labelled, rtol=1e-6)
    per_class = seg.per_class_iou(colour_predictor((1, 2)), source.val, config, source.class_names)
    for c, name in enumerate(source.class_names):
        if present[c]:
            np.testing.assert_allclose(per_class[name], iou[c], rtol=1e-6, atol=1e-7)
        else:
            assert np.isnan(per_class[name])


def test_evaluate_tiny_model_on_camvid(tiny_model, camvid_source):
    task = seg.SegmentationTask()
    metrics = task.evaluate(tiny_model, camvid_source.val, TINY.replace(eval_steps=1))
    assert set(metrics) == {"val_miou", "val_pixel_acc"}
    assert 0.0 <= metrics["val_miou"] <= 1.0 and 0.0 <= metrics["val_pixel_acc"] <= 1.0


# --- prediction, overlay, export --------------------------------------------------------------


def test_overlay_png(camvid_source, tmp_path):
    image_path = camvid_source.val.images[0]
    mask = seg.read_mask(camvid_source.val.masks[0]).astype(np.int32)
    out = tmp_path / "overlay.png"
    seg.draw_overlay(image_path, mask, str(out), camvid_source.class_names)
    picture = Image.open(out)
    assert picture.size[0] == 960 and picture.size[1] > 360
    pixels = np.asarray(picture.convert("RGB"))
    np.testing.assert_array_equal(pixels[:360, :480], np.asarray(Image.open(image_path)))
    assert not np.array_equal(pixels[:360, 480:], pixels[:360, :480])
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.png"]  # no temporaries left


def test_exported_saved_model_answers_jpeg_bytes_in_a_fresh_process(
    tiny_model, camvid_source, tmp_path
):
    image_path = camvid_source.val.images[0]
    expected = seg.predict_masks(tiny_model, [image_path], TINY)[0]
    assert expected.shape == (360, 480)
    directory = seg.export_saved_model(
        tiny_model, TINY, camvid_source.class_names, tmp_path / "segmenter"
    )
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import tensorflow as tf
        loaded = tf.saved_model.load({str(directory)!r})
        serve = loaded.signatures["serving_default"]
        data = tf.io.read_file({str(image_path)!r})
        out = serve(image_bytes=data)
        np.save({str(tmp_path / "map.npy")!r}, out["class_map"].numpy())
        assert out["probabilities"].shape == (360, 480, 11), out["probabilities"].shape
        # Other sizes: smaller than the canvas (padded), larger (resized to fit and back).
        for shape in [(100, 150, 3), (500, 900, 3)]:
            png = tf.io.encode_png(tf.fill(shape, tf.constant(90, tf.uint8)))
            assert serve(image_bytes=png)["class_map"].shape == shape[:2]
        # (TensorFlow itself imports parts of keras; our code and KerasHub stay out.)
        assert not any(m.startswith(("keras_poolformer", "keras_hub")) for m in sys.modules)
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    class_map = np.load(tmp_path / "map.npy")
    assert class_map.dtype == np.int32 and class_map.shape == (360, 480)
    np.testing.assert_array_equal(class_map, expected)
    names = json.loads((tmp_path / "segmenter" / "assets.extra" / "class_names.json").read_text())
    assert names == list(seg.CAMVID_CLASSES)
