"""The benchmark's machinery (benchmarks/metaformer_bench), on toy contenders and a tiny
PoolFormer: the order of the alternating rounds, a contender registered in a test
running in a real worker process, a loader that raises reported as failed while the
others finish, the goal ratios of the report, and the gpu phase's code run on the CPU.

The contenders below are module-level functions: a spawned worker finds its loader by
importing this module, so nothing here imports TensorFlow at module level.
"""

import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from metaformer_bench import phases, report  # noqa: E402
from metaformer_bench.contenders import contender, registered  # noqa: E402
from metaformer_bench.runner import schedule  # noqa: E402
from metaformer_bench.settings import PHASES, Mode, Settings  # noqa: E402

# One measurement a call long, two rounds, two batches: the machinery, not the speed.
TINY_MODE = Mode(
    name="test",
    rounds=2,
    seconds=0.0,
    batches=(1, 2),
    train_batch=2,
    train_rounds=1,
    train_seconds=0.0,
    scaling_variants=(),
    scaling_sizes=(),
    scaling_batch=1,
    scaling_rounds=1,
    check_images=3,
    calibration_images=0,
)


@contender("test_toys", "numpy: mean colour times a matrix")
def numpy_model(settings):
    matrix = np.random.default_rng(0).normal(size=(3, 10)).astype(np.float32)
    return lambda images: images.mean(axis=(1, 2)) @ matrix


@contender("test_toys", "a runtime that is not installed")
def broken(settings):
    raise RuntimeError("this runtime is not installed")


def _log(message):
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def _settings(tmp_path):
    return Settings(threads=1, inter_op_threads=1, workdir=str(tmp_path), spin=False)


def test_rounds_rotate_and_time_every_job_once_a_round():
    jobs = [(name, batch) for batch in (1, 32) for name in ("a", "b", "c")]
    order = schedule(jobs, rounds=4)
    assert len(order) == 4
    for r, round_ in enumerate(order):
        assert sorted(round_) == sorted(jobs)  # each (contender, batch) exactly once
        shift = r * len(jobs) // 4
        assert round_ == jobs[shift:] + jobs[:shift]  # the same cycle, rotated
    assert len({round_[0] for round_ in order}) == 4  # a new start every round


def test_registering_keeps_order_and_refuses_a_second_name():
    names = [c.name for c in registered("test_toys")]
    assert names == ["numpy_model", "broken"]
    assert registered("test_toys", names=["broken"])[0].load is broken
    assert registered("test_toys", size=8)[0].options == {"size": 8}
    with pytest.raises(ValueError, match="already"):
        contender("test_toys", "again", name="broken")(numpy_model)
    with pytest.raises(ValueError, match="no contenders"):
        registered("test_toys", names=["nothing"])
    # the groups the phases read
    assert [c.name for c in registered("families")] == [
        "keras",
        "saved_model",
        "keras_onednn",
        "saved_model_onednn",
        "tflite_fp32",
        "tflite_int8",
        "torch",
        "torch_onnx",
    ]


def test_a_contender_runs_in_a_worker_and_a_failing_one_is_reported(tmp_path):
    contenders = registered("test_toys")
    check = np.random.default_rng(1).uniform(0, 255, (3, 224, 224, 3)).astype(np.float32)
    result = phases.measure_inference(
        contenders, TINY_MODE, _settings(tmp_path), check, False, tmp_path, _log, "numpy_model"
    )
    ok, failed = result["contenders"]
    assert ok["error"] is None and set(ok["speed"]) == {"1", "2"}
    assert len(ok["speed"]["2"]["rounds"]) == TINY_MODE.rounds
    assert ok["agreement"]["max_abs_diff"] == 0.0 and ok["agreement"]["within_tolerance"]
    assert ok["memory"]["peak_rss_mib"] > 0
    assert failed["error"] == "RuntimeError: this runtime is not installed"
    assert failed["speed"] == {} and "agreement" not in failed
    table = "\n".join(report._speed_table(result["batches"], result["contenders"]))
    assert "| a runtime that is not installed | failed | failed |" in table


def _record(name, speeds, peak=None, error=None):
    speed = {str(b): {"median": v, "min": v, "max": v} for b, v in speeds.items()}
    return {
        "name": name,
        "label": name,
        "error": error,
        "speed": speed,
        "memory": {"peak_rss_mib": peak} if peak else None,
    }


def test_goal_ratios_on_hand_made_results():
    results = {
        "inference": {
            "batches": [1, 32],
            "contenders": [
                _record("keras", {1: 40.0, 32: 90.0}),
                _record("saved_model", {1: 80.0, 32: 80.0}),
                _record("onnx", {1: 70.0, 32: 50.0}),
                _record("tflite_int8", {1: 100.0, 32: 200.0}),
                _record("torch_onnx", {1: 80.0, 32: 80.0}),
            ],
        },
        "families": {
            "models": [
                {
                    "title": "CAFormer-S18",
                    "batches": [1, 32],
                    "contenders": [
                        _record("tflite_fp32", {}, error="RuntimeError: no"),
                        _record("saved_model", {1: 12.0, 32: 15.0}),
                        _record("tflite_int8", {1: 30.0, 32: 30.0}),
                        _record("torch_onnx", {1: 10.0, 32: 20.0}),
                    ],
                }
            ]
        },
        "training": {
            "batch": 32,
            "contenders": [
                _record("keras_train", {32: 18.0}, peak=5000),
                _record("torch_train", {32: 12.0}, peak=2500),
            ],
        },
    }
    rows = {(r["goal"], r["model"], r["batch"]): r for r in report.goal_rows(results)}
    keras_b1 = rows["TF path: Keras graph >= ort on the PyTorch export", "S12", 1]
    assert keras_b1["ratio"] == pytest.approx(0.5) and keras_b1["met"] is False
    assert rows["TF path: Keras graph >= ort on the PyTorch export", "S12", 32]["met"] is True
    assert rows["TF path: SavedModel >= ort on the PyTorch export", "S12", 1]["met"] is True
    assert rows["our ONNX >= the PyTorch export, both on ort", "S12", 32]["met"] is False
    int8 = [r for r in rows.values() if r["goal"] == "int8 >= 2.5x fp32 ort"]
    assert [(r["batch"], r["ratio"], r["met"]) for r in int8] == [(32, 2.5, True)]
    family = "CAFormer-S18"
    assert rows["TFLite fp32 >= ort on timm's export", family, 1]["met"] is None  # failed
    assert rows["SavedModel >= ort on timm's export", family, 1]["met"] is True
    assert rows["SavedModel >= ort on timm's export", family, 32]["met"] is False
    assert rows["int8 >= 1.5x ort on timm's export", family, 32]["ratio"] == pytest.approx(1.5)
    assert rows["training step >= 1.5x PyTorch eager", "S12", 32]["met"] is True
    memory = rows["peak RSS <= PyTorch's", "S12", 32]
    assert memory["ratio"] == pytest.approx(2.0) and memory["met"] is False
    # phases that did not run give no rows; a skipped gpu phase says so
    assert report.goal_rows({"training": results["training"]}) == [
        r for r in report.goal_rows(results) if r["goal"].startswith(("training", "peak"))
    ]
    text = "\n".join(report._goals_md(results))
    assert "| TF path: Keras graph >= ort on the PyTorch export | S12 | 1 | 0.50x |" in text
    assert "| peak RSS <= PyTorch's | S12 | 32 | 2.00x | <= 1.0x | **miss** |" in text
    table = "\n".join(report._speed_table([1, 32], results["inference"]["contenders"]))
    int8_row = "| tflite_int8 | 100.00 (100.00..100.00) | 200.00 (200.00..200.00) | 1.25x | 2.50x |"
    assert int8_row in table
    skipped = report._gpu_md({"skipped": "no GPU found (torch.cuda.is_available() is False)"})
    assert "GPU phase: skipped, no GPU found" in "\n".join(skipped)


def test_the_command_line_knows_every_phase():
    import benchmark

    args = benchmark.parse_args(["--quick", "--gpu-phase-on-cpu", "--phases", "gpu"])
    assert args.quick and args.gpu_phase_on_cpu and args.phases == ["gpu"]
    assert benchmark.parse_args([]).phases == list(PHASES)
    assert PHASES == ("inference", "training", "scaling", "families", "gpu")


def _gpu_phase_on_cpu(tmp_path, names):
    """The gpu phase's contenders ``names`` on the CPU (bfloat16), on a tiny PoolFormer."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from conftest import TINY
    from metaformer_bench.prepare import reference_artifacts

    settings = _settings(tmp_path)
    reference_artifacts(settings, "tiny", arch=TINY)
    check = np.random.default_rng(2).uniform(0, 255, (3, 224, 224, 3)).astype(np.float32)
    np.save(settings.artifact("check", "tiny"), check)
    result = phases.gpu_phase(
        TINY_MODE, settings, False, tmp_path, _log, "cpu", model="tiny", arch=TINY, names=names
    )
    assert result["half_precision"] == "bfloat16"
    inference = {r["name"]: r for r in result["inference"]["contenders"]}
    training = {r["name"]: r for r in result["training"]["contenders"]}
    assert list(inference) + list(training) == names
    for record in [*inference.values(), *training.values()]:
        assert record["error"] is None, record
    assert all(set(r["speed"]) == {"1", "2"} for r in inference.values())
    assert all(set(r["speed"]) == {"2"} for r in training.values())
    assert inference["keras"]["agreement"]["max_abs_diff"] == 0.0
    for name, record in inference.items():
        if name != "keras":
            assert record["precision"] == "bf16"
            loose = record["agreement"]
            assert loose["within_tolerance"] is None  # no fp32 gate on half precision
            assert 0 < loose["max_abs_diff"] < 0.5 and loose["cosine_mean"] > 0.99
    text = "\n".join(report._gpu_md(result))
    assert "on cpu" in text and "Run on the CPU (--gpu-phase-on-cpu)" in text


def test_the_gpu_phase_runs_on_the_cpu(tmp_path):
    # Inference only; torch.compile on a CPU takes minutes, so it is left out here.
    _gpu_phase_on_cpu(tmp_path, ["keras", "keras_mixed", "torch_autocast"])


@pytest.mark.slow
def test_the_gpu_phase_trains_on_the_cpu(tmp_path):
    names = ["keras", "keras_mixed_xla", "keras_mixed_train", "keras_mixed_train_xla"]
    _gpu_phase_on_cpu(tmp_path, names + ["torch_autocast_train"])
