"""Detection and segmentation through the shared training loop and the command line:
the run's log has the task's metrics, it resumes bit for bit, and its model is evaluated,
drawn and exported from the run folder."""

import csv
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import shared_data
from test_training import resume_from_copy

from keras_poolformer import cli
from keras_poolformer.training import configs, trainer

CASES = {
    "detection": ("raccoon", "voc", ("val_map50", "val_map"), "images/raccoon-197.jpg"),
    "segmentation": (
        "camvid",
        "masks",
        ("val_miou", "val_pixel_acc"),
        "val/images/0016E5_07959.jpg",
    ),
}


def tiny(task):
    return configs.get_config(
        "raccoon_retinanet" if task == "detection" else "camvid_deeplab",
        [
            "depths=1,1,1,1",
            "dims=16,32,48,64",
            "image_size=128",
            "epochs=1",
            "warmup_epochs=0",
            "steps_per_epoch=4",
            "batch_size=2",
            "checkpoint_every=1",
            "eval_steps=1",
        ],
    )


@pytest.fixture(scope="module", params=sorted(CASES))
def finished(request, tmp_path_factory):
    task = request.param
    folder, kind, _, _ = CASES[task]
    spec = f"{kind}:{shared_data(folder)}"
    run = tmp_path_factory.mktemp(task) / "run"
    trainer.train(tiny(task), spec, str(run), log=lambda *a: None)
    return task, spec, run


def test_the_log_has_the_tasks_metrics_and_a_curve(finished):
    task, _, run = finished
    with open(run / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "step", "lr", "train_loss", *CASES[task][2], "seconds"]
    assert [r["step"] for r in rows] == ["4"]
    for key in CASES[task][2]:
        assert 0.0 <= float(rows[0][key]) <= 1.0
    assert os.path.getsize(run / "curve.png") > 5000


def close_weights(a, b):
    """To rounding: a segmentation run resumed in the process that trained it first ends
    a few last bits away (two runs in separate processes agree bit for bit; two in one
    process do not: 1e-11 after 4 steps, up to 4e-8 in biases that feed a batch norm,
    whose near-zero gradients Adam divides by their near-zero sqrt(v)). A step on other
    data, or batch-norm statistics that restart (trainer.untracked_variables), moves
    weights by about 1e-4."""
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_a_dense_run_resumes_where_it_stopped(finished, tmp_path):
    """Detection resumes bit for bit; segmentation to float rounding (see close_weights)."""
    task, spec, run = finished
    compare = close_weights if task == "segmentation" else None
    resume_from_copy(run, tmp_path / "resumed", 3, tiny(task), spec, compare=compare)  # 3, 4 kept


def test_the_command_line_evaluates_draws_and_exports_the_run(finished, tmp_path, capsys):
    task, spec, run = finished
    folder, _, metrics, image = CASES[task]
    image = os.path.join(shared_data(folder), image)
    assert cli.main(["evaluate", "--run", str(run)]) == 0
    printed = capsys.readouterr().out
    assert all(f"{key} " in printed for key in metrics), printed
    assert cli.main(["predict", image, "--run", str(run), "--output", str(tmp_path)]) == 0
    drawn = tf.io.decode_png(
        tf.io.read_file(str(tmp_path / (os.path.basename(image)[:-4] + ".png")))
    )
    assert drawn.shape[0] >= 128 and drawn.shape[-1] in (3, 4)
    assert cli.main(["export", "--run", str(run), "--saved-model", str(tmp_path / "s")]) == 0
    assert set(tf.saved_model.load(str(tmp_path / "s" / "1")).signatures) >= {"serving_default"}
    # What a dense run cannot export, and predict without a folder for the PNGs: one line.
    assert cli.main(["export", "--run", str(run), "--tflite", str(tmp_path / "m.tflite")]) == 2
    assert "exports a SavedModel only" in capsys.readouterr().err
    assert cli.main(["predict", image, "--run", str(run)]) == 2
    assert "needs --output DIR" in capsys.readouterr().err
