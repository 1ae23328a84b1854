"""Resuming a training run whose checkpoints were damaged: fall back to the newest one
that reads back whole, never restart from step 0 over an existing log, clean a killed
run's temporaries. Every case trains the demo config a few steps, in-process."""

import csv
import os
import shutil
import time

import numpy as np
import pytest
from conftest import final_weights

from keras_poolformer.training import configs, data, trainer

# 2 epochs x 3 steps, a checkpoint every 2 steps: the run ends holding ckpt-4 (mid-way
# through epoch 2) and ckpt-6 (the end), and log.csv rows for steps 3 and 6.
CONFIG = configs.get_config(
    "demo", ["steps_per_epoch=3", "epochs=2", "checkpoint_every=2", "eval_steps=1", "batch_size=8"]
)


def log_rows(folder):
    with open(os.path.join(folder, "log.csv"), newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted run: the reference every resumed run must end equal to."""
    folder = tmp_path_factory.mktemp("finished") / "run"
    trainer.train(CONFIG, "synthetic", str(folder), log=lambda *a: None)
    assert sorted(os.listdir(folder / "checkpoints")) == [
        "checkpoint",
        "ckpt-4.data-00000-of-00001",
        "ckpt-4.index",
        "ckpt-6.data-00000-of-00001",
        "ckpt-6.index",
    ]
    return folder


def interrupted_copy(finished, tmp_path):
    """The finished run as if killed just before its final weights were written."""
    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    os.remove(folder / "final.weights.h5")
    return folder


def flip_byte(path, position=0.5):
    content = bytearray(path.read_bytes())
    content[int(len(content) * position)] ^= 0x01
    path.write_bytes(bytes(content))


def damage_flip_data_byte(ckpt):
    flip_byte(ckpt / "ckpt-6.data-00000-of-00001")


def damage_half_index(ckpt):
    index = ckpt / "ckpt-6.index"
    index.write_bytes(index.read_bytes()[: index.stat().st_size // 2])


def damage_files_missing(ckpt):  # the state file still names ckpt-6 as the latest
    os.remove(ckpt / "ckpt-6.index")
    os.remove(ckpt / "ckpt-6.data-00000-of-00001")


@pytest.mark.parametrize(
    "damage",
    [damage_flip_data_byte, damage_half_index, damage_files_missing],
    ids=lambda f: f.__name__[7:],
)
def test_resume_falls_back_past_a_damaged_newest_checkpoint(
    finished, tmp_path, monkeypatch, damage
):
    folder = interrupted_copy(finished, tmp_path)
    ckpt = folder / "checkpoints"
    damage(ckpt)
    trained = []  # (epoch, steps skipped) of every epoch the run trains: a restart shows (0, 0)
    original = data.train_dataset

    def recording(split, config, epoch, batch, steps, skip, classes):
        trained.append((epoch, skip))
        return original(split, config, epoch, batch, steps, skip, classes)

    monkeypatch.setattr(data, "train_dataset", recording)
    messages = []
    trainer.train(CONFIG, "synthetic", str(folder), log=messages.append)

    assert trained == [(1, 1)]  # epoch 2 from its second step: resumed at step 4, not 0
    warning = next(m for m in messages if m.startswith("warning: skipped checkpoint ckpt-6"))
    if damage is not damage_files_missing:
        assert "moved to" in warning
        assert sorted(os.listdir(ckpt / "damaged")) == [
            "ckpt-6.data-00000-of-00001",
            "ckpt-6.index",
        ]
    assert any(m.startswith(f"resumed from {ckpt / 'ckpt-4'} at step 4 of 6") for m in messages)
    # One row per epoch; epoch 1's row is the original one (epoch 1 did not run again).
    rows, before = log_rows(folder), log_rows(finished)
    assert [(r["epoch"], r["step"]) for r in rows] == [("1", "3"), ("2", "6")]
    assert rows[0] == before[0]
    # The resumed run ends exactly where the uninterrupted one did.
    reference, resumed = final_weights(finished), final_weights(folder)
    assert reference.keys() == resumed.keys()
    for key in reference:
        np.testing.assert_array_equal(reference[key], resumed[key], err_msg=key)
    # The checkpoint resumed from was kept, and the state file points at the new latest.
    assert trainer.checkpoint_problem(str(ckpt / "ckpt-4")) is None
    assert trainer.checkpoint_problem(str(ckpt / "ckpt-6")) is None
    assert 'model_checkpoint_path: "ckpt-6"' in (ckpt / "checkpoint").read_text()


def test_a_log_without_a_usable_checkpoint_stops_and_keeps_every_file(finished, tmp_path):
    folder = interrupted_copy(finished, tmp_path)
    ckpt = folder / "checkpoints"
    damage_flip_data_byte(ckpt)
    flip_byte(ckpt / "ckpt-4.data-00000-of-00001")
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    with pytest.raises(
        ValueError, match=r"cannot resume: its log.csv has 2 epoch row\(s\)"
    ) as info:
        trainer.train(CONFIG, "synthetic", str(folder), log=lambda *a: None)
    assert "Checksum does not match" in str(info.value) and "new --output" in str(info.value)
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before  # nothing moved or rotated
    assert len(log_rows(folder)) == 2

    shutil.rmtree(ckpt)  # checkpoints deleted, log kept: still not a silent restart
    with pytest.raises(ValueError, match=r"no checkpoint is usable \(there are none\)"):
        trainer.train(CONFIG, "synthetic", str(folder), log=lambda *a: None)
    assert not ckpt.exists()


def test_a_killed_runs_temporaries_are_removed(finished, tmp_path):
    folder = interrupted_copy(finished, tmp_path)
    ckpt = folder / "checkpoints"
    shard = ckpt / "ckpt-8_temp" / "part-00000-of-00001.data-00000-of-00001"
    shard.parent.mkdir()
    shard.write_bytes(b"half a shard")
    leftovers = [
        ckpt / "checkpoint.tmp0123456789abcdef0123456789abcdef",  # TF's state file temporary
        ckpt / ".checkpoint.abcd_123.part",
        folder / ".config.json.k3j9x0qa.part.json",  # files.atomic_path's temporaries
        folder / ".final.weights.h5.zz81mmq2.part.weights.h5",
    ]
    for path in leftovers:
        path.write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(folder / ".config.json.k3j9x0qa.part.json", (old, old))
    os.utime(folder / ".final.weights.h5.zz81mmq2.part.weights.h5", (old, old))
    young = folder / ".log.csv.q0w9e8r7.part.csv"  # may be another process's write in progress
    young.write_bytes(b"partial")
    kept = [folder / "notes.part", folder / ".hidden.json"]  # not atomic_path's names
    for path in kept:
        path.write_bytes(b"mine")

    messages = []
    trainer.train(CONFIG, "synthetic", str(folder), log=messages.append)
    assert not shard.parent.exists()
    assert not any(path.exists() for path in leftovers)
    assert young.exists() and all(path.exists() for path in kept)
    assert any(m.startswith("removed 5 temporary file(s) of an interrupted run") for m in messages)
    # The finished run resumed at its last step: nothing trained again, the log unchanged.
    assert any(m.startswith("resumed from") and "at step 6 of 6" in m for m in messages)
    assert log_rows(folder) == log_rows(finished)
