"""The command line, run in-process (and once as a module, as a user runs it)."""

import re
import subprocess
import sys

import pytest
from conftest import imagenet_val_files, reference

import keras_poolformer as kp
from keras_poolformer import cli


def test_summary_prints_counts_beside_the_paper(capsys):
    images = [str(path) for path, _ in imagenet_val_files(2)]
    args = ["summary", "--variants", "s12", "--images", *images]
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


@pytest.fixture(scope="module")
def s12_checkpoint(tmp_path_factory):
    """Random S12 weights as an official release file (torch.save of the state dict)."""
    torch = pytest.importorskip("torch")
    _, state = reference("s12")
    path = tmp_path_factory.mktemp("release") / "poolformer_s12.pth.tar"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    return path


def test_predict_with_imagenet_weights_and_with_a_checkpoint(
    s12_checkpoint, tmp_path, monkeypatch, capsys, requires_shared_data
):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("KERAS_POOLFORMER_MIRROR", s12_checkpoint.parent.as_uri())
    paths = [str(path) for path, _ in imagenet_val_files(3)]
    assert cli.main(["predict", *paths]) == 0  # --model s12 --weights imagenet by default
    from_imagenet = capsys.readouterr().out
    assert cli.main(["predict", *paths, "--weights", str(s12_checkpoint)]) == 0
    assert capsys.readouterr().out == from_imagenet  # the same weights, the same answers
    lines = from_imagenet.splitlines()
    assert [lines[0], lines[6], lines[12]] == paths and len(lines) == 18


def test_convert_with_verify_on_real_images(s12_checkpoint, tmp_path, capsys):
    images = [str(path) for path, _ in imagenet_val_files(4)]
    output = tmp_path / "s12.weights.h5"
    args = ["convert", str(s12_checkpoint), "--output", str(output), "--verify"]
    assert cli.main([*args, "--images", *images]) == 0
    out = capsys.readouterr().out
    assert "official layout, PoolFormer-S12, 132 tensors" in out
    diff = float(re.search(r"max \|logit difference\|: (\S+)", out)[1])
    assert diff <= 1e-4
    assert (
        "top-1 agreement: 100%" in out and "top-5 agreement (same classes, same order): 100%" in out
    )
    assert output.is_file()


def test_verify_catches_a_broken_conversion(s12_checkpoint, tmp_path, monkeypatch, capsys):
    # Kernels stored with height and width swapped: shapes still fit (3x3, 7x7), values do not.
    monkeypatch.setitem(kp.porting._TO_KERAS, "conv", lambda w: w.transpose(3, 2, 1, 0))
    output = tmp_path / "x.weights.h5"
    args = ["convert", str(s12_checkpoint), "--output", str(output), "--verify"]
    assert cli.main(args) == 1
    assert "does not match; nothing was written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no output, no leftover temporary


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
    assert all(command in result.stdout for command in ("summary", "predict", "convert"))


def test_unknown_variant_is_refused():
    with pytest.raises(SystemExit):
        cli.main(["summary", "--variants", "s13"])
