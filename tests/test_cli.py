"""The command line, run in-process (and once as a module, as a user runs it)."""

import subprocess
import sys

import pytest
from conftest import imagenet_val_files

import keras_poolformer as kp
from keras_poolformer import cli


def test_summary_prints_counts_beside_the_paper(capsys):
    files = imagenet_val_files(2)
    images = [str(path) for path, _ in files] if files else []
    args = ["summary", "--variants", "s12"] + (["--images", *images] if images else [])
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.strip().startswith("S12"))
    assert row.count("11,915,176") == 2
    assert "1.812G" in row and "1.8G" in row and "+0.7%" in row


def test_predict_prints_top5_for_each_image(tmp_path, capsys, requires_shared_data):
    weights = tmp_path / "s12.weights.h5"
    kp.PoolFormerS12(weights=None).save_weights(weights)
    paths = [str(path) for path, _ in imagenet_val_files(2)]
    assert cli.main(["predict", *paths, "--model", "s12", "--weights", str(weights)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == paths[0] and lines[6] == paths[1]
    assert all("%" in line and "(n" in line for line in lines[1:6])


def test_predict_names_a_bad_weights_file(tmp_path, capsys):
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    code = cli.main(["predict", str(image), "--weights", str(tmp_path / "none.weights.h5")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_module_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "keras_poolformer", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "summary" in result.stdout and "predict" in result.stdout


def test_unknown_variant_is_refused():
    with pytest.raises(SystemExit):
        cli.main(["summary", "--variants", "s13"])
