"""Training: augmentations, schedule, optimizer, distribution, fault tolerance, bad input."""

import csv
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import final_weights

import keras_poolformer as kp
from keras_poolformer.training import augment, configs, data, trainer

FULL_AUG = configs.get_config("demo").replace(
    randaugment="rand-m9-mstd0.5-inc1", random_erasing=1.0, hflip=True, rrc_scale=(0.08, 1.0)
)


def natural_image(height=80, width=96, seed=0):
    """A smooth, non-constant image (so every op changes something)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 2.5, y * 3.0, (x + y) * 1.2], axis=-1) % 256
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.float32)


def run_cli(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "keras_poolformer", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        **kwargs,
    )


# --- augmentations ---------------------------------------------------------------------


def test_train_transform_is_the_same_eagerly_and_in_dataset_map():
    image = natural_image()
    seeds = [tf.constant([3, i], tf.int64) for i in range(6)]
    eager = [augment.train_transform(image, s, FULL_AUG).numpy() for s in seeds]
    dataset = tf.data.Dataset.from_tensor_slices(tf.stack(seeds)).map(
        lambda s: augment.train_transform(image, s, FULL_AUG)
    )
    for a, b in zip(eager, dataset.as_numpy_iterator(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3)
    assert not np.allclose(eager[0], eager[1])  # different seeds, different images


@pytest.mark.parametrize("name", [name for name, _ in augment.RAND_OPS])
def test_each_randaugment_op_is_the_same_eagerly_and_in_dataset_map(name):
    op = dict(augment.RAND_OPS)[name]
    image = natural_image()
    seed = tf.constant([1, 2], tf.int64)
    eager = op(tf.constant(image), tf.constant(9.0), seed).numpy()
    mapped = next(
        tf.data.Dataset.from_tensors(image)
        .map(lambda x: op(x, tf.constant(9.0), seed))
        .as_numpy_iterator()
    )
    np.testing.assert_allclose(eager, mapped, atol=1e-3)
    assert eager.shape == image.shape and eager.min() >= 0 and eager.max() <= 255
    assert np.abs(eager - image).mean() > 0.5, f"{name} at magnitude 9 changed nothing"


def test_mix_batch_is_the_same_eagerly_and_in_dataset_map():
    images = tf.constant(np.stack([natural_image(32, 32, i) for i in range(4)]))
    labels = tf.constant([0, 1, 2, 3])

    def mix(seed):
        return augment.mix_batch(images, labels, seed, 5, 0.8, 1.0, 0.5, 0.1)

    seeds = [tf.constant([9, i], tf.int64) for i in range(4)]
    eager = [mix(s) for s in seeds]
    mapped = list(tf.data.Dataset.from_tensor_slices(tf.stack(seeds)).map(mix).as_numpy_iterator())
    for (a_img, a_tgt, _), (b_img, b_tgt, _) in zip(eager, mapped, strict=True):
        np.testing.assert_allclose(a_img.numpy(), b_img, atol=1e-4)
        np.testing.assert_allclose(a_tgt.numpy(), b_tgt, atol=1e-6)


@pytest.mark.parametrize("switch_prob", [0.0, 1.0])  # always mixup, always cutmix
def test_mixed_targets_sum_to_one_and_cutmix_lambda_is_the_pasted_area(switch_prob):
    n, size, classes, smoothing = 6, 40, 10, 0.1
    images = tf.constant(
        np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, size, size, 3))
    )
    labels = tf.constant([0, 1, 2, 3, 4, 5])
    for i in range(10):
        mixed, targets, lam = augment.mix_batch(
            images, labels, tf.constant([i, 0], tf.int64), classes, 0.8, 1.0, switch_prob, smoothing
        )
        np.testing.assert_allclose(targets.numpy().sum(axis=1), 1.0, atol=1e-6)
        lam = float(lam)
        off = smoothing / classes
        expected = np.full(classes, off)
        expected[0] += (1 - smoothing) * lam
        expected[5] += (1 - smoothing) * (1 - lam)  # image 0 is mixed with the last one
        np.testing.assert_allclose(targets.numpy()[0], expected, atol=1e-6)
        first = mixed.numpy()[0]
        if switch_prob == 1.0:  # cutmix: each pixel is from image 0 or image 5
            pasted = np.mean(first[..., 0] == 5.0)
            assert set(np.unique(first)) <= {0.0, 5.0}
            assert lam == pytest.approx(1 - pasted, abs=1e-6)
        else:  # mixup: every pixel is the same blend
            np.testing.assert_allclose(first, 5.0 * (1 - lam), atol=1e-4)


def test_random_resized_crop_sizes_and_interpolations():
    image = natural_image(60, 200)
    crops = [
        augment.random_resized_crop(image, 48, tf.constant([5, i], tf.int64)) for i in range(20)
    ]
    assert all(c.shape == (48, 48, 3) for c in crops)
    # Distinct crops; a few seeds may share timm's fallback (the centre crop) on so wide an image.
    assert len({float(c.numpy().sum()) for c in crops}) >= 15


def test_random_erasing_fills_one_box_with_noise_or_nothing():
    image = natural_image(64, 64)
    erased = [
        augment.random_erasing(image, tf.constant([2, i], tf.int64), 0.25).numpy()
        for i in range(40)
    ]
    changed = [np.any(e != image, axis=-1) for e in erased]
    rate = np.mean([c.any() for c in changed])
    assert 0.1 <= rate <= 0.45  # about a quarter
    for mask in changed:
        if mask.any():  # the changed pixels form one filled rectangle
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            assert mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
            area = len(rows) * len(cols) / mask.size
            assert 0.02 - 0.01 <= area <= 1 / 3 + 0.05


def test_randaugment_spec_is_parsed():
    assert augment.parse_randaugment("rand-m9-mstd0.5-inc1") == (2, 9.0, 0.5)
    with pytest.raises(ValueError, match="unsupported"):
        augment.parse_randaugment("rand-m9-x3")


# --- schedule and optimizer --------------------------------------------------------------


def test_lr_schedule_follows_the_formula():
    config = configs.get_config("s12")  # batch 4096: peak 4e-3
    steps_per_epoch = 100
    schedule = trainer.WarmupCosine(
        config.peak_lr, 5 * steps_per_epoch, 300 * steps_per_epoch, config.warmup_lr, config.min_lr
    )
    peak, warm, low, decay = 4e-3, 1e-6, 1e-5, 300 * steps_per_epoch

    def cosine(step):
        return low + 0.5 * (peak - low) * (1 + math.cos(math.pi * step / decay))

    assert config.peak_lr == pytest.approx(peak)
    expected = {
        0: warm,
        250: warm + (peak - warm) * 0.5,
        500: cosine(500),  # end of warmup
        15000: cosine(15000),  # the middle: (peak + min) / 2
        30000: low,  # end of the cosine
        30999: low,  # cooldown
    }
    for step, value in expected.items():
        assert float(schedule(step)) == pytest.approx(value, rel=1e-5), step
    assert cosine(15000) == pytest.approx((peak + low) / 2)


def test_weight_decay_spares_one_dimensional_parameters():
    config = configs.get_config("demo")
    model = trainer.build_model(config, 4)
    optimizer = trainer.make_optimizer(config, model, steps_per_epoch=10)
    before = [v.numpy().copy() for v in model.trainable_variables]
    zeros = [tf.zeros_like(v) for v in model.trainable_variables]
    optimizer.apply_gradients(zip(zeros, model.trainable_variables, strict=True))
    lr = config.warmup_lr  # step 0
    decayed = exempt = 0
    for old, var in zip(before, model.trainable_variables, strict=True):
        if len(var.shape) <= 1:  # biases, norm affines, layer scales
            np.testing.assert_array_equal(var.numpy(), old)
            exempt += 1
        else:
            np.testing.assert_allclose(var.numpy(), old * (1 - lr * config.weight_decay), rtol=1e-6)
            decayed += 1
    assert exempt > decayed > 0


def test_fine_tuning_init_keeps_the_trunk_and_makes_a_fresh_head(tmp_path):
    import keras_poolformer as kp

    config = configs.get_config("demo")
    donor = kp.PoolFormer(
        config.depths, config.dims, input_shape=(64, 64, 3), classes=7, weights=None
    )
    donor.save_weights(tmp_path / "donor.weights.h5")
    model = trainer.build_model(config, 3, init=str(tmp_path / "donor.weights.h5"))
    assert model.get_layer("head").kernel.shape == (64, 3)
    np.testing.assert_array_equal(
        model.get_layer("stage2_block1").mlp.fc1.kernel.numpy(),
        donor.get_layer("stage2_block1").mlp.fc1.kernel.numpy(),
    )


# --- end to end, distribution, fault tolerance -------------------------------------------


def assert_same_weights(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=atol, err_msg=key)


SMALL = ["steps_per_epoch=6", "epochs=2", "checkpoint_every=2", "eval_steps=2"]


def test_mirrored_on_two_cpus_matches_one_device_and_checks_the_batch(tmp_path):
    script = f"""
import json, sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from keras_poolformer.training import configs, trainer
config = configs.get_config("demo", {SMALL + ["drop_path_rate=0.0"]!r})
results = {{}}
for name, strategy in [
    ("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
    ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
]:
    output = {str(tmp_path)!r} + "/" + name
    metrics = trainer.train(config, "synthetic", output, strategy=strategy, log=lambda *a: None)
    results[name] = metrics["train_loss"]
try:
    trainer.train(config.replace(batch_size=7), "synthetic", {str(tmp_path)!r} + "/odd",
                  strategy=tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
except ValueError as error:
    results["error"] = str(error)
print(json.dumps(results))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["one"] == pytest.approx(out["two"], abs=1e-5)
    assert_same_weights(final_weights(tmp_path / "one"), final_weights(tmp_path / "two"))
    assert "not divisible by the 2 replicas" in out["error"]


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_with_two_processes_matches_one_process(tmp_path):
    args = ["train", "--config", "demo", *SMALL, "drop_path_rate=0.0", "--data", "synthetic"]
    single = run_cli(
        *args, "--output", str(tmp_path / "single"), "--strategy", "one-device", timeout=600
    )
    assert single.returncode == 0, single.stderr[-3000:]

    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "keras_poolformer",
                *args,
                "--output",
                str(tmp_path / "multi"),
                "--strategy",
                "multi-worker",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "TF_CPP_MIN_LOG_LEVEL": "2",
                "TF_CONFIG": json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": i}}
                ),
            },
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=600) for w in workers]
    for worker, (_, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr[-3000:]
    assert "2 replica(s)" in outputs[0][0]
    assert_same_weights(final_weights(tmp_path / "single"), final_weights(tmp_path / "multi"))
    assert not (tmp_path / "multi" / ".worker_1_checkpoints").exists()  # scratch cleaned up


def log_rows(folder):
    with open(os.path.join(folder, "log.csv"), newline="") as f:
        return list(csv.DictReader(f))


def assert_equal_weights(a, b):
    """Bit for bit: on one CPU the whole pipeline is deterministic (a restart from a
    checkpoint computes every later step from the same bits)."""
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def checkpoint_number(prefix):
    return int(os.path.basename(prefix).split("-")[1])


def folder_data(root, count=32):
    """``count`` synthetic images of the 4 classes as a folder dataset with a training
    split only (so runs skip evaluation): quicker than ``synthetic``'s 1,280 images,
    for the tests that train many short runs."""
    images, labels = data.synthetic_images(count, 5)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / "train" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.png").write_bytes(tf.io.encode_png(image).numpy())
    return f"folder:{root}"


def resume_from_copy(run, folder, step, config, spec, data_dir=None, compare=None):
    """Copies the finished, single-epoch ``run`` to ``folder`` as it stood when killed just
    after checkpoint ``step`` (no later checkpoint, no log row, no final weights yet),
    trains it again there, and checks that it resumed from that step and ended with
    ``run``'s weights, bit for bit."""
    shutil.copytree(run, folder)
    ckpt = folder / "checkpoints"
    for path in ckpt.glob("ckpt-*"):
        if checkpoint_number(path.name.split(".")[0]) > step:
            path.unlink()
    for name in ("log.csv", "curve.png", "final.weights.h5"):
        (folder / name).unlink(missing_ok=name == "curve.png")  # no curve without matplotlib
    shutil.rmtree(folder / "tensorboard")
    kept = sorted({p.name.split(".")[0] for p in ckpt.glob("ckpt-*.index")}, key=checkpoint_number)
    assert kept[-1] == f"ckpt-{step}", kept
    tf.compat.v1.train.update_checkpoint_state(str(ckpt), kept[-1], all_model_checkpoint_paths=kept)
    messages = []
    trainer.train(config, spec, str(folder), data_dir=data_dir, log=messages.append)
    total = (config.epochs + config.cooldown_epochs) * config.steps_per_epoch
    assert total == config.steps_per_epoch  # one epoch: no log row before the cut
    assert f"resumed from {ckpt / kept[-1]} at step {step} of {total}" in messages, messages
    assert [(r["epoch"], r["step"]) for r in log_rows(folder)] == [("1", str(total))]
    (compare or assert_equal_weights)(final_weights(run), final_weights(folder))


def freeze_after_checkpoint(process, ckpt_dir, at_least, timeout=300):
    """Stops ``process`` (SIGSTOP) once the newest checkpoint its state file names is
    number ``at_least`` or later and no newer save is under way; returns that number."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        found = tf.train.latest_checkpoint(str(ckpt_dir))
        if found and checkpoint_number(found) >= at_least:
            process.send_signal(signal.SIGSTOP)
            number = checkpoint_number(tf.train.latest_checkpoint(str(ckpt_dir)))
            matches = [re.match(r"ckpt-(\d+)", name) for name in os.listdir(ckpt_dir)]
            busy = any(int(m[1]) > number for m in matches if m) or any(
                name.startswith("checkpoint.tmp") for name in os.listdir(ckpt_dir)
            )
            if not busy:
                return number
            process.send_signal(signal.SIGCONT)  # caught mid-save: let it finish
        time.sleep(0.02)
    raise AssertionError("the run ended (or stalled) before it could be stopped mid-way")


def test_a_run_killed_mid_way_resumes_to_the_same_weights(tmp_path):
    # Every source of randomness on: augmentation, mixup/cutmix, stochastic depth.
    steps_per_epoch = 8
    args = [
        "train", "--config", "demo", f"steps_per_epoch={steps_per_epoch}", "epochs=3",
        "checkpoint_every=3", "eval_steps=1", "randaugment=rand-m9-mstd0.5-inc1",
        "random_erasing=0.25", "mixup_alpha=0.8", "cutmix_alpha=1.0", "drop_path_rate=0.2",
        "--data", "synthetic",
    ]  # fmt: skip
    plain_log = tmp_path / "plain_output.txt"
    with open(plain_log, "w") as output:  # the uninterrupted run, alongside the other
        plain = subprocess.Popen(
            [sys.executable, "-m", "keras_poolformer", *args, "--output", str(tmp_path / "plain")],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        resume_a_killed_run(args, tmp_path, steps_per_epoch)
        plain.wait(timeout=600)
    finally:
        plain.kill()  # when the test failed before it ended
        plain.wait()
    assert plain.returncode == 0, plain_log.read_text()[-3000:]
    # The killed-and-resumed run ends where the uninterrupted one did, bit for bit: a
    # resume at the wrong batch, with other augmentations, other mixup draws or other
    # drop-path masks would not.
    assert_equal_weights(final_weights(tmp_path / "plain"), final_weights(tmp_path / "killed"))


def resume_a_killed_run(args, tmp_path, steps_per_epoch):
    """Kills a run of ``args`` mid-way through epoch 2, trains it again to the end and
    checks that it resumed from the step the killed run had checkpointed last."""
    killed_dir, ckpt_dir = tmp_path / "killed", tmp_path / "killed" / "checkpoints"
    killed_log = tmp_path / "killed_output.txt"
    with open(killed_log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "keras_poolformer", *args, "--output", str(killed_dir)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:  # checkpoints come at steps 3, 6, 8 (epoch end), 9, 12, 15, 16...
            number = freeze_after_checkpoint(process, ckpt_dir, at_least=9)
        except AssertionError as error:
            raise AssertionError(f"{error}:\n{killed_log.read_text()[-3000:]}") from None
        finally:
            process.kill()  # SIGKILL, stopped or not
            process.wait()
    assert not (killed_dir / "final.weights.h5").exists()
    # What the killed run left: its newest checkpoint holds step `number`, mid-way
    # through epoch 2 (so a resume has to skip the batches of epoch 2 already trained),
    # and log.csv has epoch 1's row.
    prefix = ckpt_dir / f"ckpt-{number}"
    reader = tf.train.load_checkpoint(str(prefix))
    assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == number
    assert reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == number
    epoch, batch = divmod(number, steps_per_epoch)
    assert epoch == 1 and batch > 0, number
    rows_at_kill = log_rows(killed_dir)
    assert [(r["epoch"], r["step"]) for r in rows_at_kill] == [("1", "8")]

    resumed = run_cli(*args, "--output", str(killed_dir), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # It restored that checkpoint and went on from its step: epoch 2, batch `batch`.
    # (A restart would print the fresh run's banner and no resume point.)
    assert f"resumed from {prefix} at step {number} of 24" in resumed.stdout
    assert "training poolformer_custom" not in resumed.stdout
    rows = log_rows(killed_dir)
    assert [(r["epoch"], r["step"]) for r in rows] == [("1", "8"), ("2", "16"), ("3", "24")]
    assert rows[0] == rows_at_kill[0]  # epoch 1 was not trained (or logged) again


def test_demo_life_cycle_train_evaluate_predict(tmp_path):
    run = tmp_path / "demo"
    trained = run_cli(
        "train", "--config", "demo", "--data", "synthetic", "--output", str(run), timeout=600
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "val top-1" in trained.stdout
    evaluated = run_cli("evaluate", "--run", str(run), timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    top1 = float(evaluated.stdout.split("top-1 ")[1].split("%")[0])
    assert top1 >= 90.0  # the synthetic task is easy: the quadrant of a bright square
    # The same weights as a PyTorch-layout checkpoint, through --model/--weights/--data.
    import keras_poolformer as kp

    _, _, model, _ = trainer.load_run(str(run))
    state = kp.porting.export_state_dict(model)
    np.savez(run / "demo_official.npz", **state)
    from_checkpoint = run_cli(
        "evaluate", "--model", "demo", "--weights", str(run / "demo_official.npz"),
        "--data", "synthetic", "--batch-size", "16", timeout=600,
    )  # fmt: skip
    assert from_checkpoint.returncode == 0, from_checkpoint.stderr[-3000:]
    assert f"top-1 {top1:.2f}%" in from_checkpoint.stdout
    samples = sorted(str(p) for p in (run / "samples").iterdir())
    predicted = run_cli("predict", *samples, "--run", str(run), timeout=600)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    lines = predicted.stdout.splitlines()
    for sample in samples:  # each sample is named after its class: the top answer must be it
        top = lines[lines.index(sample) + 1]
        assert os.path.basename(sample).split("_", 1)[1][:-4] in top
    exported = run_cli(
        "export", "--run", str(run), "--saved-model", str(run / "serving"),
        "--tflite", str(run / "model.tflite"), "--quantize", "int8",
        "--calibration", str(run / "samples"), timeout=600,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (run / "serving" / "1" / "saved_model.pb").is_file()
    assert "SavedModel (JPEG bytes in): max |difference|" in exported.stdout
    assert "TFLite int8:" in exported.stdout and "top-1 agreement" in exported.stdout


# --- bad input ---------------------------------------------------------------------------


def test_bad_data_and_configs_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "no_images" / "cat").mkdir(parents=True)
    cases = [
        (f"folder:{tmp_path / 'missing'}", "does not exist"),
        (f"folder:{tmp_path / 'empty'}", "has no class sub-folders"),
        (f"folder:{tmp_path / 'no_images'}", "holds no images"),
        ("tfds:no_such_dataset_here", "unknown TFDS dataset"),
        ("imagenet", "unknown data spec"),
    ]
    for spec, message in cases:
        with pytest.raises(ValueError, match=message):
            data.load_source(spec)
    with pytest.raises(ValueError, match="unknown config 'nope'"):
        configs.get_config("nope")
    with pytest.raises(ValueError, match="not key=value"):
        configs.get_config("s12", ["epochs"])
    with pytest.raises(ValueError, match="override 'epochs=many'"):
        configs.get_config("s12", ["epochs=many"])
    result = run_cli(
        "train", "--config", "nope", "--data", "synthetic", "--output", str(tmp_path / "x")
    )
    assert result.returncode == 2 and "unknown config 'nope'" in result.stderr


def test_gradient_accumulation_computes_the_full_batch_update(tmp_path):
    """batch 16 as 2 micro-batches of 8 = batch 16 at once: the same images, the same
    augmentations, the same mean loss (mixup is off: it mixes within a micro-batch)."""
    base = ["steps_per_epoch=4", "epochs=1", "warmup_epochs=0", "batch_size=16", "eval_steps=1"]
    spec = folder_data(tmp_path / "data", count=64)  # 4 steps of 16, no evaluation
    for accum in (1, 2):
        config = configs.get_config("demo", [*base, f"accum_steps={accum}", "drop_path_rate=0.0"])
        trainer.train(config, spec, str(tmp_path / f"accum{accum}"), log=lambda *a: None)
    # The two sum the gradients in another order; Adam divides by sqrt(v), which magnifies
    # that rounding where a gradient is tiny: up to 1.3e-5 seen after 4 steps on an AVX2
    # machine (one weight in 27,648). Other images or augmentations differ by far more.
    assert_same_weights(
        final_weights(tmp_path / "accum1"), final_weights(tmp_path / "accum2"), atol=5e-5
    )


def test_mixed_precision_and_xla_agree_with_float32(tmp_path):
    """The same 2 steps (one an epoch, so that log.csv has each step's loss) in float32,
    in mixed precision (bfloat16 on CPU) and in float32 under XLA."""
    spec = folder_data(tmp_path / "data")
    base = ["steps_per_epoch=1", "epochs=2", "warmup_epochs=0", "batch_size=8"]
    losses = {}
    for name, extra in [("float32", []), ("mixed", ["precision=mixed"]), ("xla", ["xla=true"])]:
        config = configs.get_config("demo", [*base, *extra])
        trainer.train(config, spec, str(tmp_path / name), log=lambda *a: None)
        losses[name] = np.array([float(r["train_loss"]) for r in log_rows(tmp_path / name)])
    # The first step's loss (the initial weights) and the second's (after one update).
    assert np.all(np.isfinite(losses["float32"])) and losses["float32"].shape == (2,)
    # bfloat16 keeps 8 significant bits (relative rounding 2**-9 per op): 1e-2 is a few
    # dozen roundings' worth; about 1e-3 is seen here.
    np.testing.assert_allclose(losses["mixed"], losses["float32"], rtol=1e-2)
    assert not np.array_equal(losses["mixed"], losses["float32"])  # it did not run in float32
    # XLA runs the same float32 ops fused and reordered: rounding only (about 1e-7 seen).
    np.testing.assert_allclose(losses["xla"], losses["float32"], rtol=1e-5)

    # The logits of the float32 run's trained model on the same images, in each mode.
    keras.config.set_dtype_policy("float32")
    config, _, model, _ = trainer.load_run(str(tmp_path / "float32"))
    source = data.load_source(spec, cache_dir=str(tmp_path / "float32"))
    images = next(iter(data.eval_dataset(source.train, config, 4)))[0]
    logits = model(images, training=False).numpy()
    xla_logits = tf.function(lambda x: model(x, training=False), jit_compile=True)(images)
    keras.config.set_dtype_policy("mixed_bfloat16")
    mixed_model = trainer.build_model(config, 4)
    mixed_model.set_weights(model.get_weights())
    mixed_logits = mixed_model(images, training=False)
    assert mixed_logits.dtype == tf.bfloat16
    scale = np.abs(logits).max()
    assert scale > 0.1  # logits of real size, so that the tolerances below mean something
    np.testing.assert_allclose(xla_logits.numpy(), logits, atol=1e-5 * scale)
    # bfloat16 rounds every op's output to 8 significant bits; from the pixels to the
    # logits that adds up to a few percent of the logits' scale (2% seen).
    mixed_logits = tf.cast(mixed_logits, tf.float32).numpy()
    np.testing.assert_allclose(mixed_logits, logits, atol=5e-2 * scale)


def test_resuming_another_experiment_is_refused(tmp_path):
    config, spec = configs.get_config("demo", smoke_run=True), folder_data(tmp_path / "data")
    trainer.train(config, spec, str(tmp_path / "run"), log=lambda *a: None)
    with pytest.raises(ValueError, match=r"different run \(epochs: 2 -> 3\)"):
        trainer.train(config.replace(epochs=3), spec, str(tmp_path / "run"), log=lambda *a: None)


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    for c, name in enumerate(["a", "b"]):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for i in range(12):
            image = np.full((40, 40, 3), 60 + 120 * c, np.uint8)
            (folder / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    (tmp_path / "data" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg at all")
    (tmp_path / "data" / "b" / "empty.png").write_bytes(b"")
    source = data.load_source(f"folder:{tmp_path / 'data'}", cache_dir=str(tmp_path))
    skipped = sorted(os.path.basename(p) for p in source.train.skipped + source.val.skipped)
    assert skipped == ["broken.jpg", "empty.png"]
    assert len(source.train) + len(source.val) == 24
    result = run_cli(
        "train", "--config", "demo", "--smoke", "--data", f"folder:{tmp_path / 'data'}",
        "--output", str(tmp_path / "run"), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "unreadable training images" in result.stdout


# --- TFDS --------------------------------------------------------------------------------


def _tiny_tfds_builder():
    """A TFDS dataset prepared locally from the synthetic images (no download)."""
    import tensorflow_datasets as tfds

    class TinyQuadrants(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(64, 64, 3)),
                        "label": tfds.features.ClassLabel(names=["tl", "tr", "bl", "br"]),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples(96, 1),
                "validation": self._generate_examples(32, 2),
            }

        def _generate_examples(self, count, seed):
            images, labels = data.synthetic_images(count, seed)
            for i, (image, label) in enumerate(zip(images, labels, strict=True)):
                yield i, {"image": image, "label": int(label)}

    return TinyQuadrants


def test_tfds_dataset_trains_streamed_and_resumes_exactly(tmp_path):
    builder = _tiny_tfds_builder()
    builder(data_dir=str(tmp_path / "tfds")).download_and_prepare()
    source = data.load_source("tfds:tiny_quadrants", data_dir=str(tmp_path / "tfds"))
    assert (len(source.train), len(source.val), source.class_names) == (
        96,
        32,
        ["tl", "tr", "bl", "br"],
    )
    config = configs.get_config("demo", ["steps_per_epoch=4", "batch_size=8"])
    # Every random choice on, each drawn from its position: an image's crop, flip,
    # RandAugment and erasing from its place in the epoch, a batch's mixup or cutmix
    # from the batch's index. A batch served from the wrong place would differ.
    randomised = config.replace(
        randaugment="rand-m9-mstd0.5-inc1", random_erasing=0.25, hflip=True,
        mixup_alpha=0.8, cutmix_alpha=1.0,
    )  # fmt: skip
    for recipe in (config, randomised):
        full = list(data.train_dataset(source.train, recipe, 1, 8, 4, 0, 4).as_numpy_iterator())
        resumed = list(data.train_dataset(source.train, recipe, 1, 8, 4, 2, 4).as_numpy_iterator())
        assert len(full) == 4 and len(resumed) == 2
        assert len({images.tobytes() for images, _ in full}) == 4  # four different batches
        # Resumed after 2 batches it serves batches 3 and 4 of the epoch, in that order:
        # the same images and the same targets, and no other batch of the epoch.
        for i, (images, targets) in enumerate(resumed):
            same = [
                j
                for j, (a, b) in enumerate(full)
                if np.array_equal(a, images) and np.array_equal(b, targets)
            ]
            assert same == [2 + i], (recipe.mixup_alpha, i, same)
        if recipe is config:  # no mixup: each target is a label, smoothed (0.925, 0.025...)
            off = config.label_smoothing / 4
            for _, targets in full:
                np.testing.assert_allclose(np.sort(targets), [[off] * 3 + [1 - 3 * off]] * 8)
            np.testing.assert_array_equal(
                [t.argmax(1) for _, t in resumed], [t.argmax(1) for _, t in full[2:]]
            )
        else:  # mixed: the two labels' weights vary from batch to batch
            assert len({float(t.max()) for _, t in full}) > 1

    # Through the trainer: 4 steps streamed, then the same run killed after step 2 and
    # resumed ends with the same weights.
    config = config.replace(epochs=1, warmup_epochs=0, checkpoint_every=2)
    spec, tfds_dir = "tfds:tiny_quadrants", str(tmp_path / "tfds")
    metrics = trainer.train(
        config, spec, str(tmp_path / "run"), data_dir=tfds_dir, log=lambda *a: None
    )
    assert 0.0 <= metrics["val_top1"] <= 1.0
    resume_from_copy(tmp_path / "run", tmp_path / "resumed", 2, config, spec, tfds_dir)
    with pytest.raises(ValueError, match="has no split 'nope'"):
        data.load_source("tfds:tiny_quadrants:nope", data_dir=str(tmp_path / "tfds"))


def test_hybrid_configs_carry_their_recipe_and_train(tmp_path):
    """The official hybrids' recipe (batch 1024, peak lr 1e-3; LayerNorm for the attention
    hybrids, as the official code builds them), and a MetaFormer ablation set from the
    command line, each trains a few steps through the ordinary trainer and resumes."""
    for key in kp.HYBRID_CONFIGS:
        config = configs.get_config(key)
        assert (config.batch_size, config.peak_lr) == (1024, 1e-3)
        assert config.token_mixers == kp.HYBRID_CONFIGS[key]["token_mixers"]
        assert config.norm == ("layernorm" if "a" in key.split("_")[0] else "mln")
    # At full size the trainer builds the hybrid on S12's trunk.
    full_size = trainer.build_model(configs.get_config("ppaa_s12"), 1000)
    assert full_size.count_params() == kp.HYBRID_CONFIGS["ppaa_s12"]["params"]
    assert full_size.get_layer("stage2_pos_embed").embedding.shape == (14, 14, 320)
    del full_size

    # Each config's token mixers, norm and position embeddings on a tiny trunk (channels
    # divisible by attention's 32-channel heads), 64 px images (2 x 2 tokens at the last
    # stage, so that attention has several to attend to), 2 steps of batch 4.
    tiny = [
        "model=custom", "depths=1,1,1,1", "dims=8,16,32,32", "image_size=64", "batch_size=4",
        "steps_per_epoch=2", "epochs=1", "warmup_epochs=0", "cooldown_epochs=0",
        "checkpoint_every=1",
    ]  # fmt: skip
    # Augmentation off: its resume is the kill test's; here it would only cost time.
    tiny += ["randaugment=", "random_erasing=0", "mixup_alpha=0", "cutmix_alpha=0"]
    ablation = ["token_mixers=identity,random,dwconv,spatial_mlp", "norm=batchnorm"]
    cases = {key: configs.get_config(key, tiny) for key in kp.HYBRID_CONFIGS}
    cases["ablation"] = configs.get_config("demo", [*ablation, "activation=silu", *tiny])
    spec = folder_data(tmp_path / "data")
    for name, config in cases.items():
        run = tmp_path / name
        metrics = trainer.train(config, spec, str(run), log=lambda *a: None)
        assert np.isfinite(metrics["train_loss"]), name
        _, _, model, _ = trainer.load_run(str(run))
        kinds = [model.get_layer(f"stage{s}_block0").mixer["type"] for s in range(4)]
        assert tuple(kinds) == config.token_mixers, name
        for stage in config.position_embeddings:
            side = 64 // 4 // 2**stage
            shape = (side, side, 32)
            assert model.get_layer(f"stage{stage}_pos_embed").embedding.shape == shape, name
        # Killed after its first step, it resumes from that step to the same weights:
        # every part's variables (BatchNorm's moving statistics too) are checkpointed.
        resume_from_copy(run, tmp_path / f"{name}_resumed", 1, config, spec)
    with pytest.raises(ValueError, match="unknown token mixer 'conv'"):
        trainer.build_model(configs.get_config("demo", ["token_mixers=conv"]), 4)
