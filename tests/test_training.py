"""Training: augmentations, schedule, optimizer, distribution, fault tolerance, bad input."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

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


def test_a_run_killed_mid_way_resumes_to_the_same_weights(tmp_path):
    # Every source of randomness on: augmentation, mixup/cutmix, stochastic depth.
    args = [
        "train", "--config", "demo", "steps_per_epoch=8", "epochs=3", "checkpoint_every=3",
        "eval_steps=1", "randaugment=rand-m9-mstd0.5-inc1", "random_erasing=0.25",
        "mixup_alpha=0.8", "cutmix_alpha=1.0", "drop_path_rate=0.2", "--data", "synthetic",
    ]  # fmt: skip
    plain = run_cli(*args, "--output", str(tmp_path / "plain"), timeout=600)
    assert plain.returncode == 0, plain.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_poolformer", *args, "--output", str(killed_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        found = tf.train.latest_checkpoint(str(killed_dir / "checkpoints"))
        if found and int(found.rsplit("-", 1)[1]) >= 9:  # mid-way through the second epoch
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "final.weights.h5").exists()

    resumed = run_cli(*args, "--output", str(killed_dir), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    last_row = (killed_dir / "log.csv").read_text().strip().splitlines()[-1]
    assert last_row.split(",")[1] == "24"  # the same step count as the plain run
    assert_same_weights(final_weights(tmp_path / "plain"), final_weights(killed_dir), atol=1e-5)


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
    for accum in (1, 2):
        config = configs.get_config("demo", [*base, f"accum_steps={accum}", "drop_path_rate=0.0"])
        trainer.train(config, "synthetic", str(tmp_path / f"accum{accum}"), log=lambda *a: None)
    assert_same_weights(final_weights(tmp_path / "accum1"), final_weights(tmp_path / "accum2"))


def test_mixed_precision_and_xla_train(tmp_path):
    config = configs.get_config("demo", ["precision=mixed", "xla=true"], smoke_run=True)
    metrics = trainer.train(config, "synthetic", str(tmp_path / "run"), log=lambda *a: None)
    assert np.isfinite(metrics["train_loss"])


def test_resuming_another_experiment_is_refused(tmp_path):
    config = configs.get_config("demo", smoke_run=True)
    trainer.train(config, "synthetic", str(tmp_path), log=lambda *a: None)
    with pytest.raises(ValueError, match=r"different run \(epochs: 2 -> 3\)"):
        trainer.train(config.replace(epochs=3), "synthetic", str(tmp_path), log=lambda *a: None)


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
    full = list(data.train_dataset(source.train, config, 1, 8, 4, 0, 4).as_numpy_iterator())
    resumed = list(data.train_dataset(source.train, config, 1, 8, 4, 2, 4).as_numpy_iterator())
    assert len(full) == 4 and len(resumed) == 2
    for a, b in zip(full[2:], resumed, strict=True):  # the same batches after a resume
        np.testing.assert_array_equal(a[0], b[0])
    metrics = trainer.train(
        config.replace(epochs=1, warmup_epochs=0), "tfds:tiny_quadrants", str(tmp_path / "run"),
        data_dir=str(tmp_path / "tfds"), log=lambda *a: None,
    )  # fmt: skip
    assert 0.0 <= metrics["val_top1"] <= 1.0
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
    config = configs.get_config("ppaa_s12", ["batch_size=8", "image_size=64"], smoke_run=True)
    metrics = trainer.train(config, "synthetic", str(tmp_path / "ppaa"), log=lambda *a: None)
    assert np.isfinite(metrics["train_loss"])
    _, _, model, _ = trainer.load_run(str(tmp_path / "ppaa"))
    assert model.get_layer("stage2_block0").mixer["type"] == "attention"
    assert model.get_layer("stage2_pos_embed").embedding.shape == (4, 4, 320)

    ablation = [
        "token_mixers=identity,random,dwconv,spatial_mlp",
        "norm=batchnorm",
        "activation=silu",
    ]
    config = configs.get_config("demo", ablation, smoke_run=True)
    trainer.train(config, "synthetic", str(tmp_path / "ablation"), log=lambda *a: None)
    _, _, model, _ = trainer.load_run(str(tmp_path / "ablation"))
    kinds = [model.get_layer(f"stage{s}_block0").mixer["type"] for s in range(4)]
    assert kinds == ["identity", "random", "dwconv", "spatial_mlp"]
    with pytest.raises(ValueError, match="unknown token mixer 'conv'"):
        trainer.build_model(configs.get_config("demo", ["token_mixers=conv"]), 4)
