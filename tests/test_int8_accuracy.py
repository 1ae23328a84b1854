"""benchmarks/int8_accuracy.py end to end, small: a tiny PoolFormer run folder with random
weights, two Imagenette images per class and split, ten calibration images."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import keras
import pytest
from conftest import TINY, shared_data

from keras_poolformer.training import configs, trainer

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location(
        "int8_accuracy", ROOT / "benchmarks" / "int8_accuracy.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_imagenette(source, folder, per_class=2):
    """``folder`` with Imagenette's layout holding links to the first ``per_class``
    images of each class of ``source``'s train and val splits."""
    for split in ("train", "val"):
        for class_folder in sorted((source / split).iterdir()):
            target = folder / split / class_folder.name
            target.mkdir(parents=True)
            for image in sorted(class_folder.iterdir())[:per_class]:
                (target / image.name).symlink_to(image)
    return sorted(p.name for p in (folder / "train").iterdir())


def tiny_run(folder, classes, data_folder):
    """A run folder as ``keras-poolformer train`` leaves it (config, classes, final
    weights), of a tiny PoolFormer with random weights."""
    keras.utils.set_random_seed(0)
    config = configs.Config(
        model="custom", depths=TINY["depths"], dims=TINY["dims"], image_size=48, crop_pct=0.875
    )
    folder.mkdir()
    saved = {**dataclasses.asdict(config), "data": f"folder:{data_folder}", "init": None}
    (folder / "config.json").write_text(json.dumps(saved))
    (folder / "classes.json").write_text(json.dumps(classes))
    trainer.build_model(config, len(classes)).save_weights(folder / "final.weights.h5")


def test_int8_accuracy_reports_three_models_on_a_tiny_run(tmp_path):
    pytest.importorskip("ai_edge_litert")
    imagenette = shared_data("imagenette2-160")
    data_folder = tmp_path / "imagenette"
    classes = small_imagenette(imagenette, data_folder)
    tiny_run(tmp_path / "run", classes, data_folder)
    script = load_script()
    output = tmp_path / "results"
    argv = ["--run", str(tmp_path / "run"), "--data", str(data_folder)]
    report = script.main([*argv, "--calibration", "10", "--output", str(output)], log=print)

    assert json.loads((output / "int8_accuracy.json").read_text()) == json.loads(json.dumps(report))
    assert "| TFLite int8 |" in (output / "int8_accuracy.md").read_text()
    n = len(classes) * 2
    assert report["data"]["val_images"] == n
    assert report["calibration"] == {
        "images": 10,
        "split": "train",
        "draw": "balanced",
        "seed": 0,
        "per_class": [1] * len(classes),
    }
    for name in ("keras", "tflite_fp32", "tflite_int8"):
        result = report["results"][name]
        assert result["correct"] == round(result["top1"] * n)
        assert result["top1"] <= result["top5"] <= 1.0
    assert [row["class"] for row in report["per_class"]] == classes
    assert all(row["val_images"] == 2 for row in report["per_class"])
    # float32 TFLite is the Keras model to rounding: the same answers on every image.
    fp32 = report["agreement"]["tflite_fp32_vs_keras"]
    assert report["results"]["tflite_fp32"]["correct"] == report["results"]["keras"]["correct"]
    assert fp32["top1_agreement"] == 1.0 and fp32["max_abs_logit_difference"] < 1e-3
    int8 = report["agreement"]["tflite_int8_vs_fp32"]
    assert int8["disagreements"] == round((1 - int8["top1_agreement"]) * n)
    assert report["tflite"]["int8_quantization"]["input"]["dtype"] == "uint8"
    assert report["tflite"]["int8_quantization"]["weights"]["CONV_2D"]["per_channel"] > 0
    assert report["run"]["logged_val_top1"] is None  # no log.csv in this run
    assert report["keras_top1_equals_logged"] is None
