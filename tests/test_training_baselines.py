"""Training the MetaFormer baselines: one config per registered model with its official
recipe (sail-sg/metaformer's scripts over train.py's defaults), timm's LAMB for CAFormer,
and tiny-trunk runs of a SepConv family and RandFormer that train, checkpoint and
resume bit for bit."""

import dataclasses
import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_training import folder_data, resume_from_copy

import keras_poolformer as kp
from keras_poolformer import baselines, registry
from keras_poolformer.baselines import layout
from keras_poolformer.training import configs, trainer

BASELINE_NAMES = [
    name for name, spec in registry.MODELS.items() if spec.family in baselines.FAMILIES
]

# train.py's defaults (the paper's recipe), which no script changes.
TRAIN_PY = {
    "warmup_lr": 1e-6,
    "cooldown_epochs": 10,
    "randaugment": "rand-m9-mstd0.5-inc1",
    "mixup_switch_prob": 0.5,
    "rrc_scale": (0.08, 1.0),
    "hflip": True,
    "beta_1": 0.9,
    "beta_2": 0.999,
}


def test_every_baseline_has_a_config_with_its_registry_recipe():
    sizes = {key: [s.key for s in family.sizes] for key, family in baselines.FAMILIES.items()}
    expected = [f"{family}_{size}" for family, keys in sizes.items() for size in keys]
    assert sorted(BASELINE_NAMES) == sorted(expected) and len(expected) == 23
    for name in BASELINE_NAMES:
        recipe = registry.MODELS[name].recipe
        config = configs.get_config(name)  # validates
        assert config.model == name
        assert config.peak_lr == pytest.approx(recipe["lr"], rel=1e-12), name
        assert config.batch_size == recipe["batch_size"] == 4096
        assert config.optimizer == recipe["optimizer"]
        assert config.epsilon == (1e-6 if recipe["optimizer"] == "lamb" else 1e-8)
        got = (
            config.epochs, config.warmup_epochs, config.weight_decay, config.min_lr,
            config.label_smoothing, config.mixup_alpha, config.cutmix_alpha,
            config.random_erasing, config.drop_path_rate, config.head_dropout,
        )  # fmt: skip
        want = (
            recipe["epochs"], recipe["warmup_epochs"], recipe["weight_decay"], recipe["min_lr"],
            recipe["label_smoothing"], recipe["mixup"], recipe["cutmix"],
            recipe["random_erasing"], recipe["drop_path_rate"], recipe.get("head_dropout", 0.0),
        )  # fmt: skip
        assert got == want, name
        assert {k: getattr(config, k) for k in TRAIN_PY} == TRAIN_PY, name
        assert config.crop_pct == 1.0  # as the released checkpoints were evaluated

    # The official scripts' numbers, written out for a few.
    b36 = configs.get_config("caformer_b36")
    assert (b36.optimizer, b36.batch_size, b36.drop_path_rate, b36.head_dropout) == (
        "lamb", 4096, 0.6, 0.5
    )  # fmt: skip
    assert b36.peak_lr == pytest.approx(8e-3) and b36.warmup_epochs == 20
    m48 = configs.get_config("randformer_m48")
    assert (m48.optimizer, m48.drop_path_rate, m48.head_dropout, m48.warmup_epochs) == (
        "adamw", 0.3, 0.0, 5
    )  # fmt: skip
    assert m48.peak_lr == pytest.approx(4e-3)
    s18 = configs.get_config("convformer_s18")
    assert (s18.optimizer, s18.warmup_epochs, s18.drop_path_rate) == ("adamw", 20, 0.2)
    # The lr follows the batch as in the v1 recipe (linear, per 1024 images); --smoke
    # keeps the peak.
    assert configs.get_config("caformer_s18", ["batch_size=1024"]).peak_lr == pytest.approx(2e-3)
    assert configs.get_config("poolformerv2_s12", ["batch_size=256"]).peak_lr == pytest.approx(
        2.5e-4
    )
    smoke = configs.get_config("caformer_s36", smoke_run=True)
    assert (smoke.batch_size, smoke.image_size) == (8, 64)
    assert smoke.peak_lr == pytest.approx(8e-3) and smoke.head_dropout == 0.4


def test_baseline_configs_refuse_what_the_model_cannot_take():
    cases = {
        ("randformer_s12", "head_dropout=0.2"): "head_dropout=0.2 .must be 0: randformer_s12",
        ("demo", "head_dropout=0.1"): "only the baselines' MLP head",
        ("caformer_s18", "norm=layernorm"): "norm='layernorm' .model 'caformer_s18' has its",
        ("convformer_s18", "token_mixers=pooling"): "token_mixers=",
        ("identityformer_s12", "layer_scale_init_value=1e-6"): "layer_scale_init_value=1e-06",
        ("caformer_s18", "depths=1,1,1,1"): "needs both, four numbers each",
        ("caformer_s18", "optimizer=sgd"): "optimizer='sgd' .must be 'adamw' or 'lamb'",
        ("caformer_s18", "head_dropout=1.0"): r"head_dropout=1.0 .must be a number in \[0, 1\)",
    }
    for (name, override), message in cases.items():
        with pytest.raises(ValueError, match=message):
            configs.get_config(name, [override])
    with pytest.raises(ValueError, match="stage 2 has attention"):
        configs.get_config("caformer_s18", ["depths=1,1,1,1", "dims=8,16,24,32"])
    with pytest.raises(ValueError, match="model='caformer_t1'"):
        configs.Config(model="caformer_t1").validate()


def test_the_trainer_builds_each_constructor_with_the_recipe(monkeypatch):
    # Full size: the registry's model, its parameter count at 1000 classes.
    model = trainer.build_model(configs.get_config("caformer_s18"), 1000)
    assert model.count_params() == registry.MODELS["caformer_s18"].params
    assert model.get_layer("head").dropout == 0.0
    del model
    calls = {}

    def recorder(name):
        def constructor(**kwargs):
            calls[name] = kwargs
            return "built"

        return constructor

    for name in ("CAFormerB36", "RandFormerM48", "ConvFormerS36"):
        monkeypatch.setattr(kp, name, recorder(name))
    for key in ("caformer_b36", "randformer_m48", "convformer_s36"):
        assert trainer.build_model(configs.get_config(key), 7) == "built"
    common = {"classes": 7, "classifier_activation": None, "weights": None}
    assert calls["CAFormerB36"] == {
        **common, "input_shape": (224, 224, 3), "drop_path_rate": 0.6, "head_dropout": 0.5,
    }  # fmt: skip
    assert calls["RandFormerM48"] == {
        **common, "input_shape": (224, 224, 3), "drop_path_rate": 0.3,
    }  # fmt: skip
    assert calls["ConvFormerS36"]["head_dropout"] == 0.0


def test_optimizers_and_weight_decay_exemptions():
    tiny = ["depths=1,1,1,1", "dims=32,32,32,32", "image_size=64"]
    for name, kind in (("caformer_s18", trainer.Lamb), ("convformer_s18", keras.optimizers.AdamW)):
        config = configs.get_config(name, tiny)
        model = trainer.build_model(config, 4)
        optimizer = trainer.make_optimizer(config, model, steps_per_epoch=10)
        assert type(optimizer) is kind, name
        assert optimizer.weight_decay == 0.05
        decayed = {v.path for v in model.trainable_variables if optimizer._use_weight_decay(v)}
        spared = {v.path for v in model.trainable_variables} - decayed
        # StarReLU's scale and bias, residual scales, norms, biases: 1-D, spared.
        assert spared == {v.path for v in model.trainable_variables if len(v.shape) <= 1}
        assert any("scale" in p and "res_scale" not in p for p in spared), name
        assert any("res_scale" in p for p in spared), name
        assert decayed and all(
            len(v.shape) > 1 for v in model.trainable_variables if v.path in decayed
        )


def timm_lamb(params, grads_per_step, lr, weight_decay, decayed, eps=1e-6, max_grad_norm=1.0):
    """timm 0.6.11's Lamb in float64: global-norm clip, Adam, decay inside the update, trust
    ratio on the decayed parameters only."""
    p = [x.astype(np.float64) for x in params]
    m, v = [0 * x for x in p], [0 * x for x in p]
    for t, grads in enumerate(grads_per_step, 1):
        grads = [g.astype(np.float64) for g in grads]
        norm = np.sqrt(sum((g**2).sum() for g in grads))
        clip = norm / max_grad_norm if norm > max_grad_norm else 1.0
        for i, g in enumerate(grads):
            g = g / clip
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            update = (m[i] / (1 - 0.9**t)) / (np.sqrt(v[i]) / np.sqrt(1 - 0.999**t) + eps)
            if decayed[i]:
                update = update + weight_decay * p[i]
                update = update * (np.linalg.norm(p[i]) / np.linalg.norm(update))
            p[i] = p[i] - lr * update
    return p


def test_lamb_computes_timms_update():
    rng = np.random.default_rng(0)
    start = [rng.normal(size=(5, 3)), rng.normal(size=(3,)), rng.normal(size=(2, 2))]
    start = [x.astype("float32") for x in start]
    variables = [keras.Variable(x) for x in start]
    # Gradients above and below the clip norm of 1.
    steps = [[rng.normal(size=x.shape).astype("float32") * s for x in start] for s in (3, 0.1, 1)]
    optimizer = trainer.Lamb(learning_rate=0.05, weight_decay=0.05, epsilon=1e-6)
    optimizer.exclude_from_weight_decay(var_list=[variables[1]])
    optimizer.build(variables)

    @tf.function
    def apply(grads):
        optimizer.apply_gradients(zip(grads, variables, strict=True))

    for grads in steps:
        apply([tf.constant(g) for g in grads])
    want = timm_lamb(start, steps, 0.05, 0.05, decayed=[True, False, True])
    for variable, expected in zip(variables, want, strict=True):
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert trainer.Lamb.from_config(optimizer.get_config()).max_grad_norm == 1.0


# Tiny trunks at 64 px, 4 steps of batch 4 (one epoch), a checkpoint every 2 steps: the
# resumed copy restarts from step 2 and must end with the uninterrupted run's weights.
TINY = [
    "image_size=64", "batch_size=4", "steps_per_epoch=4", "epochs=1", "warmup_epochs=0",
    "cooldown_epochs=0", "checkpoint_every=2",
]  # fmt: skip


@pytest.mark.parametrize(
    "name, trunk",
    [
        # CAFormer B36's recipe (LAMB, drop path 0.6, head dropout 0.5) on a tiny trunk.
        ("caformer_b36", ["depths=1,1,1,1", "dims=32,32,32,32"]),
        # RandFormer's random matrices fixed at 64 px (16 and 4 tokens).
        ("randformer_m48", ["depths=1,1,1,1", "dims=8,16,24,32"]),
    ],
)
def test_tiny_baseline_trains_checkpoints_and_resumes_bit_for_bit(tmp_path, name, trunk):
    config = configs.get_config(name, [*TINY, *trunk])
    recipe = registry.MODELS[name].recipe
    assert (config.optimizer, config.drop_path_rate) == (
        recipe["optimizer"],
        recipe["drop_path_rate"],
    )
    spec = folder_data(tmp_path / "data")
    run = tmp_path / "run"
    metrics = trainer.train(config, spec, str(run), log=lambda *a: None)
    assert np.isfinite(metrics["train_loss"])
    saved, _, model, _ = trainer.load_run(str(run))
    assert dataclasses.asdict(saved) == dataclasses.asdict(config)
    assert model.name == f"{name}_custom"
    mixers = registry.MODELS[name].config["token_mixers"]
    kinds = [type(model.get_layer(f"stage{s}_block0").token_mixer).__name__ for s in range(4)]
    assert len(kinds) == len(mixers) == 4
    if name.startswith("caformer"):
        assert model.get_layer("head").dropout == 0.5
        # Three blocks' drop paths (the first block's rate is 0) and the head's dropout:
        # their generators' states are checkpointed, so the resumed masks are the same.
        assert len(trainer.seed_variables(model)) == 4
    else:
        assert "RandomMixing" in kinds
    resume_from_copy(run, tmp_path / "resumed", 2, config, spec)


def test_lamb_clips_the_norm_of_the_gradient_summed_over_replicas(tmp_path):
    """On two replicas whose gradients are each under the clip norm but whose sum (the
    update's gradient) is over it, the update is timm's on the clipped sum. (Two steps,
    the second unclipped: Adam's first step does not see a gradient's scale.)"""
    script = """
import json, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from keras_poolformer.training import trainer
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.default_rng(1)
start = [rng.normal(size=(4, 3)).astype("float32"), rng.normal(size=(3,)).astype("float32")]
grads = [rng.normal(size=x.shape).astype("float32") for x in start]
norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads))
shares = (0.8, 1.2)  # per-replica norms 0.56 and 0.84, summed 1.4
halves = [[(g / norm * 0.7 * s).astype("float32") for g in grads] for s in shares]
with strategy.scope():
    variables = [keras.Variable(x) for x in start]
    optimizer = trainer.Lamb(learning_rate=0.05, weight_decay=0.05, epsilon=1e-6)
    optimizer.exclude_from_weight_decay(var_list=[variables[1]])
    optimizer.build(variables)

def replica(scale):
    first = tf.distribute.get_replica_context().replica_id_in_sync_group == 0
    local = [tf.where(first, a, b) * scale for a, b in zip(*halves)]
    optimizer.apply_gradients(zip(local, variables))

step = tf.function(lambda scale: strategy.run(replica, (scale,)))
step(tf.constant(1.0))
step(tf.constant(0.3))
print(json.dumps([v.numpy().tolist() for v in variables] + [start[0].tolist(), start[1].tolist()]
                 + [[(a + b).tolist() for a, b in zip(*halves)]]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    *got, w0, b0, summed = json.loads(result.stdout.strip().splitlines()[-1])
    start = [np.array(w0, np.float32), np.array(b0, np.float32)]
    summed = [np.array(g, np.float32) for g in summed]
    assert np.sqrt(sum((g**2).sum() for g in summed)) > 1.3  # clipped to 1
    steps = [summed, [g * np.float32(0.3) for g in summed]]
    want = timm_lamb(start, steps, 0.05, 0.05, decayed=[True, False])
    for variable, expected in zip(got, want, strict=True):
        np.testing.assert_allclose(np.array(variable), expected, rtol=1e-5, atol=1e-6)


def test_a_run_saved_before_the_optimizer_fields_still_resumes(tmp_path):
    """config.json of a run started before ``optimizer`` and ``head_dropout`` existed
    lacks them; it ran with their defaults, so it is the same run."""
    config = configs.get_config("demo")
    run_config = {**dataclasses.asdict(config), "data": "synthetic", "init": None}
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "ckpt-3.index").write_bytes(b"")
    old = {k: v for k, v in run_config.items() if k not in ("optimizer", "head_dropout")}
    (tmp_path / "config.json").write_text(json.dumps(old))
    trainer._check_same_run(str(tmp_path), run_config)
    lamb = {**run_config, "optimizer": "lamb"}
    with pytest.raises(ValueError, match="optimizer: None -> 'lamb'"):
        trainer._check_same_run(str(tmp_path), lamb)


def test_init_fine_tunes_from_pretrained_weights_with_a_fresh_head(tmp_path):
    # A tiny CAFormer trunk stands in for a release checkpoint: everything but the
    # classifier comes from the file (official layout), the head is the new model's own.
    config = configs.get_config("caformer_s18", ["depths=1,1,1,1", "dims=32,32,64,64"])
    config = dataclasses.replace(config, image_size=64)
    donor = trainer.build_model(config, 1000)
    for weight in donor.weights:
        weight.assign(np.random.default_rng(len(weight.path)).normal(0, 0.1, weight.shape))
    state = layout.export_state_dict(donor)
    path = tmp_path / "pretrained.npz"
    np.savez(path, **state)

    model = trainer.build_model(config, 7, init=str(path))
    ported = layout.export_state_dict(model)
    assert sorted(ported) == sorted(state)
    for key, value in ported.items():
        if not key.startswith("head."):  # the trunk and the final norm: the file's
            np.testing.assert_array_equal(value, state[key], err_msg=key)
    assert ported["head.fc2.weight"].shape == (7, 256)  # a new head for 7 classes
    assert not np.allclose(ported["head.fc1.weight"], state["head.fc1.weight"])
