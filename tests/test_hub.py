"""KerasHub presets of our models (keras_poolformer.presets), the export command's
--preset, and our backbone (keras_poolformer.hub) in KerasHub's and keras-cv's detection
and segmentation models.

Tiny trunks everywhere but the PoolFormer S12 preset round trip."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import imagenet_val_files

import keras_poolformer as kp
from keras_poolformer import cli, hub, presets

keras_hub = pytest.importorskip("keras_hub")

TINY_TRUNK = {"depths": (1, 1, 1, 1), "dims": (16, 32, 48, 64)}
SMALL = {"input_shape": (64, 64, 3)}
# CAFormer's parts (sepconv, attention in heads of 32 channels, MLP head) on a tiny trunk.
TINY_CAFORMER = {"depths": (1, 1, 1, 1), "dims": (32, 32, 64, 64)}


def tiny_backbone(model="poolformer_s12", size=128, **trunk):
    return hub.MetaFormerBackbone(model, image_shape=(size, size, 3), **(trunk or TINY_TRUNK))


def tiny_caformer(classes=5):
    spec = kp.registry.get("caformer_s18")
    return kp.baselines.MetaFormerBaseline(
        **{**spec.config, **TINY_CAFORMER},
        classes=classes,
        classifier_activation=None,
        input_shape=(64, 64, 3),
        name="caformer_s18_custom",  # as the trainer names a trunk override
    )


def uint8_images(count, height, width, seed):
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


# --- the classifier and its preprocessor, in this process ----------------------------------


def test_classifier_has_our_head_and_our_numbers():
    """The head layers carry our models' names and kinds, and the classifier computes what
    the model computes (softmax kept, as the model has it)."""
    keras.utils.set_random_seed(3)
    v1 = kp.PoolFormer(**TINY_TRUNK, **SMALL, classes=7, name="poolformer_custom")
    baseline = tiny_caformer()
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    for model, layers in ((v1, ["avg_pool", "head", "predictions"]), (baseline, None)):
        classifier = presets.classifier_from_model(model, image_size=64)
        assert isinstance(classifier, keras_hub.models.ImageClassifier)
        names = [layer.name for layer in classifier.layers[2:]]
        assert names == (layers or ["avg_pool", "norm", "head"])
        np.testing.assert_allclose(classifier(x), model(x), atol=1e-6, rtol=0)
    assert classifier.activation is None and classifier.head == "mlp"
    assert isinstance(classifier.get_layer("head"), kp.baselines.layers.MlpHead)
    assert classifier.get_layer("norm").epsilon == 1e-6
    # A classifier rebuilt from its config is the same architecture.
    clone = presets.MetaFormerImageClassifier.from_config(classifier.get_config())
    assert [w.shape for w in clone.weights] == [w.shape for w in classifier.weights]


def test_classifier_from_model_refuses_what_it_cannot_carry():
    keras.utils.set_random_seed(0)
    trunk = kp.PoolFormer(**TINY_TRUNK, **SMALL, include_top=False, name="poolformer_custom")
    with pytest.raises(ValueError, match="no classifier"):
        presets.classifier_from_model(trunk)
    odd = kp.PoolFormer(**TINY_TRUNK, **SMALL, classes=3, name="my_model")
    with pytest.raises(ValueError, match="spec_name"):
        presets.classifier_from_model(odd)
    # The wrong architecture for the name: weights would copy, numbers would not match.
    gelu_free = kp.MetaFormer(
        **TINY_TRUNK,
        **SMALL,
        token_mixers="pooling",
        activation="relu",
        layer_scale_init_value=1.0,  # (1e-5 would hide the blocks' difference)
        classes=3,
        name="poolformer_custom",
    )
    with pytest.raises(ValueError, match="does not reproduce"):
        presets.classifier_from_model(gelu_free)


def test_converter_takes_one_image_a_batch_a_list_and_any_dtype():
    converter = presets.MetaFormerImageConverter(image_size=32, crop_pct=0.875)
    images = uint8_images(2, 45, 70, seed=1)
    expected = np.stack([kp.eval_transform(image, 32, 0.875).numpy() for image in images])
    np.testing.assert_array_equal(converter(images[0]), expected[0])
    np.testing.assert_array_equal(converter(images), expected)
    np.testing.assert_array_equal(converter(images.astype("int64")), expected)
    # images of different sizes in one list
    ragged = converter([images[0], images[1][:40, :50]])
    np.testing.assert_array_equal(ragged[0], expected[0])
    np.testing.assert_array_equal(ragged[1], kp.eval_transform(images[1][:40, :50], 32, 0.875))
    floats = converter(images.astype("float32"))
    assert floats.shape == (2, 32, 32, 3) and floats.dtype == "float32"
    # float images take eval_transform's float path (one tf.image.resize), as they are
    floats_expected = [kp.eval_transform(image.astype("float32"), 32, 0.875) for image in images]
    np.testing.assert_allclose(floats, np.stack(floats_expected), atol=1e-4, rtol=0)
    config = converter.get_config()
    assert (config["image_size"], config["crop_pct"]) == (32, 0.875)
    again = presets.MetaFormerImageConverter.from_config(config)
    np.testing.assert_array_equal(again(images), expected)
    with pytest.raises(ValueError, match="crop_pct"):
        presets.MetaFormerImageConverter(224, crop_pct=1.5)


def test_preprocessor_matches_load_image_on_real_jpegs():
    """The preset's preprocessing is our evaluation transform: on real ImageNet JPEGs of
    all sizes, the preprocessor's pixels are load_image's (Pillow-exact resize)."""
    files = imagenet_val_files(8)
    decoded = [kp.decode_image(Path(path).read_bytes()).numpy() for path, _ in files]
    for crop_pct in (0.9, 1.0):
        preprocessor = presets.MetaFormerImageClassifierPreprocessor(
            presets.MetaFormerImageConverter(224, crop_pct=crop_pct)
        )
        batch = np.asarray(preprocessor(decoded))
        expected = np.stack([kp.load_image(path, crop_pct=crop_pct) for path, _ in files])
        assert batch.shape == (8, 224, 224, 3)
        assert np.abs(batch - expected).max() <= 1e-4
        print(f"crop {crop_pct}: max |preprocessor - load_image| {np.abs(batch - expected).max()}")
        labels = np.arange(8)
        x, y = preprocessor(decoded[0], labels[0])
        assert np.abs(np.asarray(x) - expected[0]).max() <= 1e-4 and int(y) == 0


# --- presets --------------------------------------------------------------------------------

_LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras_poolformer, keras_hub

    folder = sys.argv[1]
    out = {}
    for name in json.loads(open(folder + "/names.json").read()):
        preset = f"{folder}/{name}"
        classifier = keras_hub.models.ImageClassifier.from_preset(preset)
        backbone = keras_hub.models.Backbone.from_preset(preset)
        x = np.load(f"{folder}/{name}_x.npy")
        raw = np.load(f"{folder}/{name}_raw.npy")
        np.save(f"{folder}/{name}_logits.npy", np.asarray(classifier(x)))
        np.save(f"{folder}/{name}_features.npy", np.asarray(backbone(x)))
        np.save(f"{folder}/{name}_predict.npy", classifier.predict(raw, verbose=0))
        out[name] = [type(classifier).__name__, type(backbone).__name__,
                     type(classifier.preprocessor.image_converter).__name__]
    print("TYPES " + json.dumps(out))
    """
)

PRESET_FILES = (
    "config.json",
    "model.weights.h5",
    "metadata.json",
    "task.json",
    "task.weights.h5",
    "preprocessor.json",
    "image_converter.json",
)


def test_preset_round_trip_in_a_fresh_process(tmp_path):
    """PoolFormer S12 (seeded random weights) and a tiny CAFormer (MLP head, LayerNorm)
    saved as presets; a fresh Python loads them with KerasHub's base classes and gets the
    in-process model's logits and features to 1e-6, and through the preprocessor the
    model's logits on eval_transform's pixels."""
    keras.utils.set_random_seed(12)
    s12 = kp.PoolFormerS12(weights=None, classifier_activation=None)
    keras.utils.set_random_seed(18)
    caformer = tiny_caformer()
    cases = {"s12": (s12, 224, 0.9), "caformer": (caformer, 64, 1.0)}
    expected = {}
    for name, (model, size, crop_pct) in cases.items():
        directory = presets.save_preset(model, tmp_path / name, image_size=size)
        assert sorted(os.listdir(directory)) == sorted(PRESET_FILES)
        converter = json.loads((tmp_path / name / "image_converter.json").read_text())
        assert converter["config"]["crop_pct"] == crop_pct  # the registry's default
        rng = np.random.default_rng(len(name))
        x = rng.uniform(0, 255, (2, size, size, 3)).astype("float32")
        raw = uint8_images(2, size + 37, size + 80, seed=len(name))
        np.save(tmp_path / f"{name}_x.npy", x)
        np.save(tmp_path / f"{name}_raw.npy", raw)
        # The backbone's output: PoolFormer v1's final norm, the baselines' last block.
        last = (
            model.get_layer("norm") if name == "s12" else hub.models.stage_output_layers(model)[-1]
        )
        trunk = keras.Model(model.input, last.output)
        pixels = np.stack([kp.eval_transform(image, size, crop_pct) for image in raw])
        expected[name] = {
            "logits": np.asarray(model(x)),
            "features": np.asarray(trunk(x)),
            "predict": np.asarray(model(pixels)),
        }
    (tmp_path / "names.json").write_text(json.dumps(list(cases)))
    script = tmp_path / "load.py"
    script.write_text(_LOADER)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    types_line = [line for line in done.stdout.splitlines() if line.startswith("TYPES ")]
    for name in cases:
        assert json.loads(types_line[0][6:])[name] == [
            "MetaFormerImageClassifier",
            "MetaFormerBackbone",
            "MetaFormerImageConverter",
        ]
        logits = np.load(tmp_path / f"{name}_logits.npy")
        np.testing.assert_allclose(logits, expected[name]["logits"], atol=1e-6, rtol=0)
        predict = np.load(tmp_path / f"{name}_predict.npy")
        np.testing.assert_allclose(predict, expected[name]["predict"], atol=1e-5, rtol=0)
        features = np.load(tmp_path / f"{name}_features.npy")
        np.testing.assert_allclose(features, expected[name]["features"], atol=1e-6, rtol=0)
        print(
            f"{name}: max |difference| logits {np.abs(logits - expected[name]['logits']).max():.3g}"
            f", features {np.abs(features - expected[name]['features']).max():.3g}, through "
            f"the preprocessor {np.abs(predict - expected[name]['predict']).max():.3g}"
        )


def test_save_preset_is_atomic_and_refuses_a_non_empty_folder(tmp_path, monkeypatch):
    keras.utils.set_random_seed(0)
    model = kp.PoolFormer(**TINY_TRUNK, **SMALL, classes=3, name="poolformer_custom")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        presets.save_preset(model, taken)
    assert os.listdir(taken) == ["notes.txt"]

    def half_written(self, directory):
        open(os.path.join(directory, "config.json"), "w").close()
        raise OSError("disk full")

    monkeypatch.setattr(presets.MetaFormerImageClassifier, "save_to_preset", half_written)
    with pytest.raises(OSError, match="disk full"):
        presets.save_preset(model, tmp_path / "new")
    assert sorted(os.listdir(tmp_path)) == ["taken"]  # neither the preset nor its draft
    monkeypatch.undo()
    (tmp_path / "empty").mkdir()
    presets.save_preset(model, tmp_path / "empty", image_size=64)  # an empty folder is fine
    assert "task.weights.h5" in os.listdir(tmp_path / "empty")
    assert sorted(os.listdir(tmp_path)) == ["empty", "taken"]


# --- the export command -------------------------------------------------------------------


def test_export_preset_through_the_command_line(tmp_path, capsys):
    destination = tmp_path / "preset"
    assert (
        cli.main(["export", "--model", "s12", "--weights", "none", "--preset", str(destination)])
        == 0
    )
    assert "KerasHub preset" in capsys.readouterr().out
    classifier = keras_hub.models.ImageClassifier.from_preset(str(destination))
    assert isinstance(classifier, presets.MetaFormerImageClassifier)
    assert classifier.preprocessor.image_converter.crop_pct == 0.9  # S12's evaluation crop
    assert classifier.activation is None  # export writes logits, as its other formats
    # a non-empty destination: the one-line error, status 2, nothing overwritten
    before = sorted(os.listdir(destination))
    status = cli.main(
        ["export", "--model", "s12", "--weights", "none", "--preset", str(destination)]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("keras-poolformer: error: ") and "not empty" in err
    assert err.count("\n") == 1
    assert sorted(os.listdir(destination)) == before
    assert cli.main(["export", "--model", "s12", "--weights", "none"]) == 2
    assert "at least one of" in capsys.readouterr().err


# --- detection and segmentation on our backbone ---------------------------------------------

BOXES = np.array([[[10, 10, 60, 60], [30, 40, 100, 120]], [[5, 5, 50, 90], [-1, -1, -1, -1]]])
CLASSES = np.array([[0, 2], [1, -1]])


def test_keras_hub_retinanet_trains_a_step_on_our_backbone():
    keras.utils.set_random_seed(0)
    encoder = tiny_backbone()
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=encoder, min_level=3, max_level=7, use_p5=False, image_shape=(128, 128, 3)
    )
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone, num_classes=3, bounding_box_format="xyxy"
    )
    detector.compile(optimizer=keras.optimizers.SGD(1e-3))
    images = uint8_images(2, 128, 128, seed=0).astype("float32")
    y = {"boxes": BOXES.astype("float32"), "labels": CLASSES.astype("int32")}
    before = encoder.get_layer("stem").get_weights()[0].copy()
    history = detector.fit(images, y, batch_size=2, epochs=1, verbose=0)
    loss = history.history["loss"][0]
    assert np.isfinite(loss) and loss > 0
    assert not np.array_equal(before, encoder.get_layer("stem").get_weights()[0])


def test_keras_hub_deeplab_trains_a_step_on_our_backbone():
    keras.utils.set_random_seed(0)
    encoder = tiny_backbone()
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder,
        low_level_feature_key="P2",
        spatial_pyramid_pooling_key="P5",
        dilation_rates=[6, 12, 18],
        upsampling_size=8,
    )
    segmenter = keras_hub.models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=3)
    segmenter.compile(
        optimizer=keras.optimizers.SGD(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    images = uint8_images(2, 128, 128, seed=1).astype("float32")
    masks = np.random.default_rng(1).integers(0, 3, (2, 128, 128, 1))
    before = encoder.get_layer("stem").get_weights()[0].copy()
    history = segmenter.fit(images, masks, batch_size=2, epochs=1, verbose=0)
    loss = history.history["loss"][0]
    assert np.isfinite(loss) and loss > 0
    assert segmenter.predict(images, verbose=0).shape == (2, 128, 128, 3)
    assert not np.array_equal(before, encoder.get_layer("stem").get_weights()[0])


def test_keras_cv_retinanet_trains_a_step_on_our_backbone():
    keras_cv = pytest.importorskip("keras_cv")
    keras.utils.set_random_seed(0)
    encoder = tiny_backbone()
    detector = keras_cv.models.RetinaNet(
        backbone=encoder, num_classes=3, bounding_box_format="xyxy"
    )
    detector.compile(
        optimizer=keras.optimizers.SGD(1e-3), classification_loss="focal", box_loss="smoothl1"
    )
    images = uint8_images(2, 128, 128, seed=2).astype("float32")
    y = {"boxes": BOXES.astype("float32"), "classes": CLASSES.astype("float32")}
    before = encoder.get_layer("stem").get_weights()[0].copy()
    history = detector.fit(images, y, batch_size=2, epochs=1, verbose=0)
    loss = history.history["loss"][0]
    assert np.isfinite(loss) and loss > 0
    assert not np.array_equal(before, encoder.get_layer("stem").get_weights()[0])


def test_keras_cv_yolo_and_deeplab_predict_on_our_backbone():
    keras_cv = pytest.importorskip("keras_cv")
    keras.utils.set_random_seed(0)
    images = uint8_images(2, 128, 128, seed=3).astype("float32")
    yolo = keras_cv.models.YOLOV8Detector(
        backbone=tiny_backbone(), num_classes=3, bounding_box_format="xyxy", fpn_depth=1
    )
    out = yolo.predict(images, verbose=0)
    assert out["boxes"].shape[:1] == (2,) and out["boxes"].shape[-1] == 4
    assert out["num_detections"].shape == (2,)
    deeplab = keras_cv.models.DeepLabV3Plus(backbone=tiny_backbone(), num_classes=3)
    masks = deeplab.predict(images, verbose=0)
    assert masks.shape == (2, 128, 128, 3) and np.isfinite(masks).all()
