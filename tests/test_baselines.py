"""The MetaFormer baselines' layers, builder, constructors and official layout, on tiny
configs: every family builds, trains a step, survives a `.keras` round trip and gives
its weights to the official layout and back; the builder refuses bad arguments before
building; the constructors' parameter counts are the published ones (timm's, for the
families timm has). Parity with an independent implementation is in test_baselines_parity.
"""

import keras
import numpy as np
import pytest

import keras_poolformer as kp
from keras_poolformer import registry
from keras_poolformer.baselines import FAMILIES, MetaFormerBaseline, layout
from keras_poolformer.baselines.layers import StarReLU

TINY = {"depths": (1, 1, 2, 1), "dims": (32, 32, 64, 64)}
SIZE = 64


def tiny(family, **kwargs):
    """The family's architecture at the tiny depths and widths, 64x64 inputs."""
    config = {**FAMILIES[family].config, **TINY}
    return MetaFormerBaseline(
        **config, input_shape=(SIZE, SIZE, 3), classes=5, classifier_activation=None, **kwargs
    )


def random_images(count=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, SIZE, SIZE, 3)).astype("float32")


def test_star_relu_is_scale_times_squared_relu_plus_bias():
    layer = StarReLU(scale_value=0.5, bias_value=-0.25)
    x = np.array([[-2.0, -0.1, 0.0, 0.3, 3.0]], "float32")
    expected = 0.5 * np.maximum(x, 0) ** 2 - 0.25
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-6)
    assert [w.shape for w in layer.weights] == [(1,), (1,)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_trains_a_step_and_survives_a_keras_round_trip(family, tmp_path):
    model = tiny(family)
    images, labels = random_images(4), np.array([0, 1, 2, 3])
    model.compile(
        keras.optimizers.AdamW(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    before = {w.path: w.numpy().copy() for w in model.weights}
    assert np.isfinite(model.train_on_batch(images, labels))
    for w in model.weights:
        moved = not np.array_equal(w.numpy(), before[w.path])
        assert moved == w.trainable, w.path  # the random matrices stay frozen
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(reloaded(images).numpy(), model(images).numpy(), atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_official_layout_round_trip_and_shapes(family):
    model = tiny(family)
    config = {**FAMILIES[family].config, **TINY}
    shapes = layout.official_shapes(config, classes=5, image_size=SIZE)
    state = layout.export_state_dict(model)
    assert {k: v.shape for k, v in state.items()} == shapes
    assert sum(v.size for v in state.values()) == model.count_params()

    other = tiny(family)
    images = random_images()
    assert not np.allclose(other(images).numpy(), model(images).numpy())
    report = layout.load_state_dict(other, state)
    assert report.skipped == () and len(report.loaded) == len(state)
    np.testing.assert_array_equal(other(images).numpy(), model(images).numpy())

    # Without the top, the classifier and the final norm are skipped, nothing else.
    trunk = tiny(family, include_top=False)
    report = layout.load_state_dict(trunk, state)
    assert sorted(report.skipped) == sorted(k for k in state if k.startswith(("norm.", "head.")))


def test_a_state_dict_that_does_not_fit_changes_nothing():
    model = tiny("caformer")
    state = layout.export_state_dict(model)
    before = [w.numpy().copy() for w in model.weights]
    broken = {k: v for k, v in state.items() if "qkv" not in k}
    broken["stages.0.0.mlp.fc1.weight"] = np.zeros((3, 3), "float32")
    with pytest.raises(ValueError, match=r"3 missing, 1 wrong shape") as error:
        layout.load_state_dict(model, {k: v + 1 for k, v in broken.items()})
    assert "token_mixer.qkv.weight" in str(error.value)
    assert all(np.array_equal(w.numpy(), b) for w, b in zip(model.weights, before, strict=True))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"token_mixers": "conv"}, "unknown token mixer 'conv'"),
        ({"token_mixers": ["pooling"] * 3}, "one mixer per stage"),
        ({"dims": (32, 32, 48, 64), "token_mixers": "attention"}, "stage 2: attention"),
        ({"norm": "batchnorm"}, "unknown norm 'batchnorm'"),
        ({"head": "conv"}, "unknown head 'conv'"),
        ({"head_dropout": 0.3}, "MLP head only"),
        ({"head": "mlp", "head_dropout": 1.0}, "head_dropout must be in"),
        ({"res_scale_init_values": (None, 1.0)}, "res_scale_init_values"),
        ({"token_mixers": "random", "input_shape": (None, None, 3)}, "fixed size"),
        ({"weights": "model.pth"}, "weights must be None or a Keras"),
    ],
)
def test_builder_refuses_bad_arguments_by_name(kwargs, message):
    config = {"depths": TINY["depths"], "dims": TINY["dims"], **kwargs}
    with pytest.raises(ValueError, match=message):
        MetaFormerBaseline(**config)


def test_random_mixers_are_frozen_and_differ_per_block():
    model = tiny("randformer")
    matrices = [w for w in model.weights if w.path.endswith("matrix")]
    assert len(matrices) == 3 and not any(w.trainable for w in matrices)
    first, second = matrices[0].numpy(), matrices[1].numpy()
    assert first.shape == second.shape == (16, 16) and not np.array_equal(first, second)
    np.testing.assert_allclose(first.sum(axis=1), 1.0, rtol=1e-6)  # rows are softmaxes


def test_include_top_false_pooling():
    images = random_images()
    full = tiny("convformer")
    features = tiny("convformer", include_top=False)
    pooled = tiny("convformer", include_top=False, pooling="avg")
    for model in (features, pooled):
        layout.load_state_dict(model, layout.export_state_dict(full))
    assert features(images).shape == (2, 2, 2, 64)
    # pooling="avg" is the original's features: pooled, then the final norm.
    mean = features(images).numpy().mean(axis=(1, 2))
    norm = full.get_layer("norm")
    np.testing.assert_allclose(pooled(images).numpy(), norm(mean).numpy(), atol=1e-5)


def test_every_family_is_registered_with_its_constructor():
    names = {spec.name for spec in registry.MODELS.values() if spec.family in FAMILIES}
    assert names == {
        *(f"{f}_{s}" for f in ("poolformerv2", "identityformer", "randformer")
          for s in ("s12", "s24", "s36", "m36", "m48")),
        *(f"{f}_{s}" for f in ("convformer", "caformer") for s in ("s18", "s36", "m36", "b36")),
    }  # fmt: skip
    for name in names:
        spec = registry.get(name)
        constructor = getattr(kp, spec.constructor)
        assert constructor.__name__ == spec.constructor
        assert f"{spec.params:,} parameters" in constructor.__doc__
        assert ("head_dropout" in constructor.__doc__) == (spec.config["head"] == "mlp")


# The published parameter counts (timm 1.0.31's for the families it has; the official
# README's 11.9M... for IdentityFormer, and those plus the frozen matrices for RandFormer).
PUBLISHED = {
    "caformer_s18": 26_341_656,
    "caformer_s36": 39_297_102,
    "caformer_m36": 56_204_878,
    "caformer_b36": 98_753_614,
    "convformer_s18": 26_774_448,
    "convformer_s36": 40_012_152,
    "convformer_m36": 57_051_640,
    "convformer_b36": 99_882_616,
    "poolformerv2_s12": 11_891_712,
    "poolformerv2_s24": 21_341_464,
    "poolformerv2_s36": 30_791_216,
    "poolformerv2_m36": 56_077_168,
    "poolformerv2_m48": 73_346_056,
}


@pytest.mark.parametrize(
    "name", sorted(n for n, spec in registry.MODELS.items() if spec.family in FAMILIES)
)
def test_parameter_counts(name):
    spec = registry.get(name)
    shapes = layout.official_shapes(spec.config)
    assert sum(int(np.prod(s)) for s in shapes.values()) == spec.params
    if name in PUBLISHED:
        assert spec.params == PUBLISHED[name]
