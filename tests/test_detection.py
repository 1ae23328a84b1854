"""The detection task (training/detection.py) on the shared raccoon set: the VOC reader
and its refusals, the deterministic resumable training data, the per-example loss, COCO
mAP through pycocotools, drawing, and the SavedModel served by TensorFlow alone."""

import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from conftest import shared_data

from keras_poolformer.training import configs, detection

TINY = configs.Config(
    model="custom",
    depths=(1, 1, 1, 1),
    dims=(16, 32, 48, 64),
    image_size=128,
    drop_path_rate=0.0,
    seed=5,
)


@pytest.fixture(scope="module")
def raccoon():
    return shared_data("raccoon")


@pytest.fixture(scope="module")
def source(raccoon):
    return detection.DetectionTask().load_source(f"voc:{raccoon}")


@pytest.fixture(scope="module")
def model(source):
    import keras

    keras.utils.set_random_seed(0)
    return detection.DetectionTask().build_model(TINY, source)


@pytest.fixture(scope="module")
def scoring_model(source):
    """An untrained detector whose classification bias is 0 (score about 0.5 everywhere),
    so that it returns its full 100 detections: something to map back and compare."""
    import keras

    keras.utils.set_random_seed(1)
    built = detection.DetectionTask().build_model(TINY, source)
    bias = built.classification_head.prediction_layer.bias
    bias.assign(np.zeros(bias.shape, np.float32))
    return built


def small(split, count):
    return detection.DetectionSplit(split.records[:count], split.class_names, split.max_boxes)


# --- the VOC reader ----------------------------------------------------------------------


def test_voc_source_reads_every_annotation(raccoon, source):
    assert source.class_names == ["raccoon"]
    assert (len(source.train), len(source.val)) == (160, 40)
    assert source.train.skipped == [] and source.val.skipped == []
    names = [r["annotation"].rsplit("/", 1)[-1] for r in source.train.records + source.val.records]
    assert names == sorted(names) and len(set(names)) == 200
    record = next(r for r in source.train.records if r["annotation"].endswith("/raccoon-1.xml"))
    text = (raccoon / "annotations" / "raccoon-1.xml").read_text()
    xmin, ymin, xmax, ymax = (
        float(re.search(f"<{field}>(\\d+)</{field}>", text).group(1))
        for field in ("xmin", "ymin", "xmax", "ymax")
    )
    np.testing.assert_array_equal(record["boxes"], [[xmin - 1, ymin - 1, xmax, ymax]])
    assert (record["width"], record["height"], record["names"]) == (650, 417, ["raccoon"])
    with pytest.raises(ValueError, match="voc:PATH"):
        detection.DetectionTask().load_source(f"folder:{raccoon}")


GOOD = """<annotation><filename>raccoon-1.jpg</filename>
<size><width>650</width><height>417</height><depth>3</depth></size>
<object><name>raccoon</name><bndbox><xmin>81</xmin><ymin>88</ymin><xmax>522</xmax>
<ymax>408</ymax></bndbox></object></annotation>"""

BROKEN = {
    "unparsable": (GOOD[:-20], "not a readable XML"),
    "no bndbox": (re.sub("<bndbox>.*</bndbox>", "", GOOD, flags=re.S), "no <bndbox>"),
    "no width": (GOOD.replace("<width>650</width>", ""), "missing <width>"),
    "no size": (re.sub("<size>.*</size>", "", GOOD, flags=re.S), "missing <size>"),
    "not a number": (GOOD.replace("<xmin>81<", "<xmin>eighty<"), "not a number"),
    "empty box": (GOOD.replace("<xmax>522<", "<xmax>81<"), "empty box"),
    "outside": (GOOD.replace("<xmax>522<", "<xmax>652<"), "outside"),
    "no image": (GOOD.replace("raccoon-1.jpg", "gone.jpg"), "does not exist"),
    "unknown class": (GOOD.replace("<name>raccoon<", "<name>dog<"), "unknown class 'dog'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_annotations_are_refused(raccoon, tmp_path, case):
    text, problem = BROKEN[case]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images").mkdir()
    shutil.copy(raccoon / "images" / "raccoon-1.jpg", tmp_path / "images")
    good = tmp_path / "annotations" / "a-good.xml"
    good.write_text(GOOD)
    assert detection.read_voc(good)["boxes"].shape == (1, 4)  # the unbroken copy reads
    broken = tmp_path / "annotations" / "b-broken.xml"
    broken.write_text(text)
    with pytest.raises(ValueError, match=re.escape(problem)) as error:
        if case == "unknown class":
            detection.voc_source(tmp_path, class_names=["raccoon"])
        else:
            detection.voc_source(tmp_path)
    assert str(broken) in str(error.value)


def test_a_box_one_pixel_beyond_the_image_is_clipped(raccoon, tmp_path):
    (tmp_path / "images").mkdir()
    shutil.copy(raccoon / "images" / "raccoon-1.jpg", tmp_path / "images")
    path = tmp_path / "one.xml"
    path.write_text(GOOD.replace("<xmax>522<", "<xmax>651<").replace("<xmin>81<", "<xmin>0<"))
    record = detection.read_voc(path, tmp_path / "images")
    np.testing.assert_array_equal(record["boxes"], [[0, 87, 650, 408]])


# --- training data -------------------------------------------------------------------------


def batches(dataset):
    return [(x.numpy(), y["boxes"].numpy(), y["labels"].numpy()) for x, y in dataset]


def test_train_dataset_is_deterministic_and_resumable(source):
    task, split = detection.DetectionTask(), small(source.train, 10)
    full = batches(task.train_dataset(split, TINY, 1, 4, 5))  # 20 examples: wraps around
    assert len(full) == 5
    images, boxes, labels = full[0]
    assert images.shape == (4, 128, 128, 3) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 255
    assert boxes.shape == (4, source.train.max_boxes, 4) and labels.shape[1] == boxes.shape[1]
    valid = labels >= 0
    assert valid[:, 0].all() and (boxes[~valid] == -1).all()
    assert (boxes[valid] >= 0).all() and (boxes[valid] <= 128).all()
    assert (boxes[valid][:, 2:] > boxes[valid][:, :2]).all()
    again = batches(task.train_dataset(split, TINY, 1, 4, 5))
    tail = batches(task.train_dataset(split, TINY, 1, 4, 5, skip_batches=3))
    assert len(tail) == 2
    for a, b in zip(full + full[3:], again + tail, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    other = batches(task.train_dataset(split, TINY, 2, 4, 5))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(full, other, strict=True))


def test_flipped_boxes_follow_the_image(source):
    """Each example's boxes are its annotation's, scaled into the letterboxed square, or
    their mirror image when that example was flipped; over a few epochs both happen."""
    split = small(source.train, 4)
    seen = set()
    for epoch in range(4):
        _, boxes, labels = batches(detection.train_dataset(split, TINY, epoch, 4, 1))[0]
        order = detection.data_lib.epoch_order(4, TINY.seed, epoch)
        for i, index in enumerate(order):
            record = split.records[index]
            scale = 128 / max(record["width"], record["height"])
            plain = record["boxes"] * scale
            width = record["width"] * scale
            mirror = np.stack(
                [width - plain[:, 2], plain[:, 1], width - plain[:, 0], plain[:, 3]], 1
            )
            got = boxes[i][labels[i] >= 0]
            is_plain, is_mirror = (
                np.allclose(got, plain, atol=1e-3),
                np.allclose(got, mirror, atol=1e-3),
            )
            assert is_plain or is_mirror
            seen.add(bool(is_plain))
    assert seen == {True, False}


# --- loss and evaluation -----------------------------------------------------------------


def test_loss_per_example_and_one_finite_gradient_step(source, model):
    import keras

    task = detection.DetectionTask()
    images, targets = next(iter(task.train_dataset(small(source.train, 8), TINY, 0, 2, 1)))
    with tf.GradientTape() as tape:
        per_example = task.loss(model, images, targets)
        loss = tf.reduce_mean(per_example)
    grads = tape.gradient(loss, model.trainable_variables)
    assert per_example.shape == (2,) and per_example.dtype == tf.float32
    assert np.isfinite(per_example.numpy()).all() and 0 < float(loss) < 100
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)
    optimizer = keras.optimizers.SGD(1e-3)
    before = [v.numpy() for v in model.trainable_variables]
    optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)
    for variable, old in zip(model.trainable_variables, before, strict=True):
        variable.assign(old)
    # one image: the same number as KerasHub's own compute_loss
    model.compile()
    one = {k: v[:1] for k, v in targets.items()}
    ours = float(task.loss(model, images[:1], one)[0])
    theirs = float(model.compute_loss(images[:1], one, model(images[:1], training=True), None))
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_coco_map_of_a_perfect_predictor_is_one(source):
    truth = detection.ground_truth(source.val)
    perfect = [
        {"boxes": t["boxes"], "scores": np.ones(len(t["boxes"])), "classes": t["classes"]}
        for t in truth
    ]
    assert detection.coco_map(truth, perfect, 1) == {"val_map50": 1.0, "val_map": 1.0}
    shifted = [{**p, "boxes": p["boxes"] + [20, 0, 20, 0]} for p in perfect]
    shifted_map = detection.coco_map(truth, shifted, 1)
    assert shifted_map["val_map"] < 1.0
    empty = [{"boxes": np.zeros((0, 4)), "scores": [], "classes": []} for _ in truth]
    assert detection.coco_map(truth, empty, 1) == {"val_map50": 0.0, "val_map": 0.0}


def test_evaluate_runs_on_the_model(source, model):
    metrics = detection.DetectionTask().evaluate(model, small(source.val, 4), TINY)
    assert set(metrics) == {"val_map50", "val_map"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())


# --- prediction, drawing, export -----------------------------------------------------------


def test_predictions_and_drawing(source, scoring_model, tmp_path):
    from PIL import Image

    paths = list(source.val.paths[:2])
    detections = detection.predict_images(scoring_model, paths, TINY, source.class_names)
    assert len(detections) == 2 and len(detections[0]["boxes"]) == 100
    for path, found in zip(paths, detections, strict=True):
        width, height = Image.open(path).size
        boxes = found["boxes"]
        assert len(boxes) <= 100 and (found["scores"] >= 0.05).all()
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= width).all()
        assert (boxes[:, [1, 3]] <= height).all()
        assert set(found["names"]) <= {"raccoon"}
    shown = {**detections[0], "scores": np.maximum(detections[0]["scores"], 0.9)}
    out = tmp_path / "drawn.png"
    detection.draw_detections(paths[0], shown, out, source.class_names)
    with Image.open(out) as drawn, Image.open(paths[0]) as original:
        assert drawn.format == "PNG" and drawn.size == original.size


SERVE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    assert not any(name.startswith(("keras_poolformer", "keras_hub")) for name in sys.modules)
    serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    data = [open(path, "rb").read() for path in sys.argv[2:]]
    out = serve(images=tf.constant(data))
    print(json.dumps({key: value.numpy().tolist() for key, value in out.items()}))
    """
)


def test_saved_model_serves_jpeg_bytes_without_our_code(source, scoring_model, tmp_path):
    import json

    paths = list(source.val.paths[:2])
    expected = detection.predict_images(scoring_model, paths, TINY)
    assert all(len(e["boxes"]) for e in expected)
    folder = detection.export_saved_model(
        scoring_model, TINY, source.class_names, tmp_path / "served"
    )
    assert (tmp_path / "served" / "assets" / "classes.txt").read_text() == "raccoon\n"
    assert not [p for p in tmp_path.iterdir() if p.name != "served"]  # no temporaries left
    result = subprocess.run(
        [sys.executable, "-c", SERVE, folder, *paths],
        capture_output=True,
        text=True,
        timeout=300,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(served) == ["boxes", "classes", "num_detections", "scores"]
    for i, want in enumerate(expected):
        count = served["num_detections"][i]
        assert count == len(want["boxes"])
        np.testing.assert_allclose(
            np.array(served["boxes"][i][:count]).reshape(-1, 4), want["boxes"], atol=1e-3
        )
        np.testing.assert_allclose(np.array(served["scores"][i][:count]), want["scores"], atol=1e-5)


# --- other backbones and initialisation ---------------------------------------------------


def test_resnet18_takes_pixels_and_trains(source, tmp_path):
    """KerasHub's ResNet behind ImageNet's normalisation of 0..255 pixels; it trains, and
    starts from a classifier trained with the same config (its .weights.h5)."""
    import json

    from keras_poolformer.training import classifiers

    config = TINY.replace(model="resnet18", depths=(), dims=(64, 64, 128, 256))
    task = detection.DetectionTask()
    built = task.build_model(config, source)
    encoder = built.backbone.image_encoder
    pixels = np.random.default_rng(0).uniform(0, 255, (1, 128, 128, 3)).astype(np.float32)
    mean = 255 * np.array([0.485, 0.456, 0.406])
    std = 255 * np.array([0.229, 0.224, 0.225])
    by_hand = encoder.get_layer("resnet_pyramid")((pixels - mean) / std)["P5"]
    np.testing.assert_allclose(encoder(pixels), by_hand, rtol=1e-4, atol=1e-4)
    images, targets = next(iter(task.train_dataset(small(source.train, 4), config, 0, 2, 1)))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(task.loss(built, images, targets))
    grads = tape.gradient(loss, built.trainable_variables)
    assert np.isfinite(float(loss)) and all(g is not None for g in grads)
    with pytest.raises(ValueError, match="first stage at 64"):
        task.build_model(config.replace(dims=(32, 64, 128, 256)), source)

    classifier = classifiers.build_model(config.replace(task="classification"), 10)
    classifier.save_weights(tmp_path / "final.weights.h5")
    (tmp_path / "classes.json").write_text(json.dumps([str(i) for i in range(10)]))
    started = task.build_model(config, source, init=str(tmp_path / "final.weights.h5"))
    ours = started.backbone.image_encoder.get_layer("resnet_pyramid").get_weights()
    theirs = classifier.get_layer("resnet_pyramid").get_weights()
    assert len(ours) == len(theirs) > 40
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_init_copies_a_classifiers_trunk(source, tmp_path):
    """A classifier's .weights.h5, or its run folder (trainer.load_run), fills the
    backbone by layer name; the detection heads stay as initialised."""
    import dataclasses
    import json

    import keras

    from keras_poolformer.training import trainer

    keras.utils.set_random_seed(3)
    classifier = trainer.build_model(TINY.replace(image_size=64), 10)
    classifier.save_weights(tmp_path / "final.weights.h5")
    (tmp_path / "config.json").write_text(
        json.dumps({**dataclasses.asdict(TINY), "image_size": 64, "data": "synthetic"})
    )
    (tmp_path / "classes.json").write_text(json.dumps([str(i) for i in range(10)]))
    task = detection.DetectionTask()
    fresh = task.build_model(TINY, source)
    for init in (str(tmp_path / "final.weights.h5"), str(tmp_path)):
        built = task.build_model(TINY, source, init=init)
        encoder = built.backbone.image_encoder
        for name in ("stem", "stage3_block0"):
            for ours, theirs in zip(
                encoder.get_layer(name).get_weights(),
                classifier.get_layer(name).get_weights(),
                strict=True,
            ):
                np.testing.assert_array_equal(ours, theirs)
        prior = built.classification_head.prediction_layer.bias.numpy()
        np.testing.assert_array_equal(prior, fresh.classification_head.prediction_layer.bias)
    with pytest.raises(ValueError, match="registry's trunks"):
        task.build_model(TINY, source, init="imagenet")
    with pytest.raises(ValueError, match="expected 'imagenet'"):
        task.build_model(TINY, source, init=str(tmp_path / "nothing.h5"))
