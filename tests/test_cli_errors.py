"""Bad input on the command line ends with one line on stderr and exit status 2, never a
traceback: missing or folder image paths, impossible numbers, configs that cannot train,
malformed checkpoints (built here, byte by byte).

Most cases run in-process with ``capfd``, which captures file descriptor 2 and so also
any line TensorFlow's C++ code would log; a few run as ``python -m keras_poolformer``
without TF_CPP_MIN_LOG_LEVEL, as a user types them."""

import io
import json
import os
import re
import struct
import subprocess
import sys
import zipfile

import pytest
import tensorflow as tf

from keras_poolformer import cli
from keras_poolformer.training import configs, trainer

# TensorFlow's CUDA build logs "failed call to cuInit" (an ERROR, above the CLI's log level)
# once per process when it first looks for devices on a machine without a GPU driver;
# look now, so that the line is not taken for one of the errors below.
tf.config.list_logical_devices()


def one_error_line(capfd):
    """The single stderr line of a failed command (nothing else on stderr)."""
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    lines = err.splitlines()
    assert len(lines) == 1, err[-2000:]
    assert "error: " in lines[0]
    return lines[0]


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if a command builds a model before it has checked its paths."""

    def refuse(args):
        raise AssertionError("a model was built before the image paths were checked")

    monkeypatch.setattr(cli, "_classifier", refuse)


def test_image_paths_are_checked_before_any_model_is_built(tmp_path, capfd, no_model):
    missing, folder = str(tmp_path / "missing.png"), str(tmp_path)
    cases = [
        (["predict", missing], f"image '{missing}' does not exist"),
        (["predict", folder], f"image '{folder}' is a folder"),
        (["gradcam", missing, "--output", str(tmp_path / "out")], "does not exist"),
        (["export", "--saved-model", str(tmp_path / "sm"), "--images", folder], "is a folder"),
        (["export", "--saved-model", str(tmp_path / "sm"), "--calibration", missing], "does not"),
        (["export", "--saved-model", str(tmp_path / "sm"), "--calibration", folder], "no images"),
        (["export", "--tflite", str(tmp_path / "m.tflite"), "--quantize", "int8"], "--calibration"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        assert message in one_error_line(capfd), argv


def test_an_undecodable_image_is_one_line(tmp_path, capfd):
    # A PNG signature and garbage. (A broken JPEG also makes libjpeg write a line of its
    # own straight to stderr, which no TensorFlow setting silences.)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 8)
    assert cli.main(["summary", "--variants", "s12", "--images", str(broken)]) == 2
    assert "broken.png" in one_error_line(capfd)


@pytest.mark.parametrize("value", ["-1", "0", "two"])
def test_batch_sizes_below_one_are_refused_by_the_parser(value, capfd):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", "x.png", "--batch-size", value])
    assert exit_info.value.code == 2
    line = one_error_line(capfd)
    assert f"argument --batch-size: must be an integer >= 1, got '{value}'" in line


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["checkpoint_every=0"], "checkpoint_every=0 (must be an integer >= 1)"),
        (["accum_steps=0"], "accum_steps=0 (must be an integer >= 1)"),
        (["batch_size=0"], "batch_size=0 (must be an integer >= 1)"),
        (["batch_size=10", "accum_steps=3"], "batch_size=10 (must be divisible by accum_steps=3)"),
        (["drop_path_rate=1"], "drop_path_rate=1.0 (must be a number in [0, 1))"),
        (["crop_pct=0", "mixup_switch_prob=2"], "crop_pct=0.0 (must be a number in (0, 1]); mix"),
    ],
)
def test_configs_that_cannot_train_stop_before_the_first_step(tmp_path, capfd, overrides, message):
    output = tmp_path / "run"
    argv = ["train", "--config", "demo", *overrides, "--data", "synthetic", "--output", str(output)]
    assert cli.main(argv) == 2
    assert f"invalid training config: {message}" in one_error_line(capfd)
    assert not output.exists()  # refused before anything was written


def test_train_validates_configs_of_api_callers(tmp_path):
    config = configs.get_config("demo").replace(checkpoint_every=0, eval_every=-1)
    with pytest.raises(ValueError, match=r"checkpoint_every=0 .*; eval_every=-1 \(must be an"):
        trainer.train(config, "synthetic", str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


# --- malformed checkpoints -------------------------------------------------------------


def torch_zip(path, data_pkl=None):
    """A torch.save zip of one small tensor, its pickle replaced by ``data_pkl``."""
    torch = pytest.importorskip("torch")
    buffer = io.BytesIO()
    torch.save({"w": torch.arange(64, dtype=torch.float32)}, buffer)
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            is_pickle = data_pkl is not None and info.filename.endswith("/data.pkl")
            target.writestr(info, data_pkl if is_pickle else source.read(info))
    return path


def crc_error_zip(path):
    """A torch.save zip with one byte of its tensor data flipped in place: the entry's
    recorded CRC no longer matches."""
    torch_zip(path)
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack(
        "<HH", raw[info.header_offset + 26 : info.header_offset + 30]
    )
    raw[info.header_offset + 30 + name_len + extra_len] ^= 0x01
    path.write_bytes(bytes(raw))
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() == info.filename  # zipfile itself sees the bad CRC
    return path


def _binunicode(text):
    encoded = text.encode()
    return b"X" + struct.pack("<I", len(encoded)) + encoded


def wrong_types_pickle():
    """{'w': torch._utils._rebuild_tensor_v2('a string', 'x', (2,), (1,))}: the rebuild
    function of every real tensor, given a string where the storage and offset go."""
    return (
        b"\x80\x02}"
        + _binunicode("w")
        + b"ctorch._utils\n_rebuild_tensor_v2\n("
        + _binunicode("a string")
        + _binunicode("x")
        + b"K\x02\x85K\x01\x85tRs."
    )


def deeply_nested_pickle(depth=100_000):
    """{'a': {'a': {... depth dicts ...}}}: cheap to unpickle, deep to walk."""
    return b"\x80\x02" + (b"}" + _binunicode("a")) * depth + b"}" + b"s" * depth + b"."


def fp8_safetensors(path):
    header = json.dumps({"w": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}})
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + bytes(4))
    return path


@pytest.mark.parametrize(
    "name, build",
    [
        ("wrong_types.pth", lambda p: torch_zip(p, data_pkl=wrong_types_pickle())),
        ("deep.pth", lambda p: torch_zip(p, data_pkl=deeply_nested_pickle())),
        ("crc.pth", crc_error_zip),
        ("fp8.safetensors", fp8_safetensors),
    ],
)
def test_malformed_checkpoints_are_one_line_naming_the_file(tmp_path, capfd, name, build):
    path = build(tmp_path / name)
    assert cli.main(["convert", str(path), "--output", str(tmp_path / "out.weights.h5")]) == 2
    assert name in one_error_line(capfd)
    assert not (tmp_path / "out.weights.h5").exists()


# --- as a user runs it ------------------------------------------------------------------


def run_module(*args):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-m", "keras_poolformer", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _without_stamp(line):
    """An absl/TF log line without its time and thread id, to compare across processes."""
    return re.sub(r"^([IWEF])\d{4} [\d:.]+\s+\d+ ", r"\1 ", line)


def test_the_installed_command_prints_one_line_and_no_traceback(tmp_path):
    # What TensorFlow prints on import before any of our code runs, on every command
    # (absl writes it before logging is initialised; no setting silences it): the baseline.
    baseline = run_module("configs")
    assert baseline.returncode == 0, baseline.stderr[-2000:]
    banner = {_without_stamp(line) for line in baseline.stderr.splitlines()}
    # TensorFlow's own INFO lines are off (the package sets TF_CPP_MIN_LOG_LEVEL=2 for
    # the command line before importing TensorFlow): no CPU-instructions notice.
    assert "rebuild TensorFlow with the appropriate compiler flags" not in baseline.stderr
    cases = [
        (["predict", str(tmp_path / "missing.png")], "does not exist"),
        (["predict", str(tmp_path)], "is a folder"),
        (
            ["train", "--config", "demo", "batch_size=0", "--data", "synthetic", "--output",
             str(tmp_path / "run")],
            "batch_size=0 (must be an integer >= 1)",
        ),
    ]  # fmt: skip
    for argv, message in cases:
        result = run_module(*argv)
        assert result.returncode == 2, (argv, result.stderr[-2000:])
        assert "Traceback" not in result.stderr
        extra = [x for x in result.stderr.splitlines() if _without_stamp(x) not in banner]
        assert len(extra) == 1 and message in extra[0], (argv, extra)
        assert extra[0].startswith("keras-poolformer: error: ")


def test_calibration_draws_across_classes_and_holds_the_checks_out():
    # A class-sorted folder (as ImageNet's val tree): the first 200 files are one class.
    found = [f"n{c:08d}/{i:03d}.jpg" for c in range(10) for i in range(50)]
    drawn, checks = cli.calibration_split(found[::-1], 16)  # the order found does not matter
    assert (drawn, checks) == cli.calibration_split(found, 16)
    assert len(drawn) == cli.CALIBRATION_IMAGES and len(checks) == 16
    assert not set(drawn) & set(checks)
    per_class = {c: sum(p.startswith(f"n{c:08d}/") for p in drawn) for c in range(10)}
    assert min(per_class.values()) >= 10, per_class  # 20 each on average
    assert cli.calibration_split(found, 16, seed=1) != (drawn, checks)
    # A folder too small to hold the checks out serves as both; none gives nothing.
    small_drawn, small_checks = cli.calibration_split(found[:5], 16)
    assert sorted(small_drawn) == sorted(small_checks) == found[:5]
    assert cli.calibration_split([], 16) == ([], [])
