"""The builder and the five variants: sizes, options, serialisation, bad arguments."""

import keras
import numpy as np
import pytest
from conftest import TINY

import keras_poolformer as kp
from keras_poolformer import porting

# The paper's figures (Table 2), checked against the architecture and the official
# checkpoints' tensor counts (design.md section 3).
PAPER = {
    "s12": (11_915_176, 1.8e9, 132),
    "s24": (21_388_968, 3.4e9, 252),
    "s36": (30_862_760, 5.0e9, 372),
    "m36": (56_172_520, 8.8e9, 372),
    "m48": (73_473_448, 11.6e9, 492),
}


def tiny(**kwargs):
    kwargs.setdefault("input_shape", (64, 64, 3))
    return kp.PoolFormer(**TINY, **kwargs)


def images(n=2, size=64, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("variant", list(PAPER))
def test_parameters_and_macs_match_the_paper(variant):
    params, macs, tensors = PAPER[variant]
    model = kp.VARIANTS[variant](weights=None)
    assert model.count_params() == params
    assert len(model.weights) == tensors
    measured = kp.count_macs(model)
    assert abs(measured / macs - 1) < 0.03, f"{measured:,} MACs vs the paper's {macs:,.0f}"
    config = kp.MODEL_CONFIGS[variant]
    shapes = porting.official_shapes(config["depths"], config["dims"])
    assert (porting.count_parameters(shapes), len(shapes)) == (params, tensors)


def test_variant_constructors_follow_keras_applications():
    model = kp.PoolFormerS12(weights=None)
    assert model.name == "poolformer_s12"
    assert model.input_shape == (None, 224, 224, 3)
    assert model.output_shape == (None, 1000)
    assert kp.PoolFormerS12.__name__ == "PoolFormerS12"
    assert "11,915,176" in kp.PoolFormerS12.__doc__
    assert "1e-06" not in str(model.get_layer("stage0_block0").layer_scale_init_value)
    assert model.get_layer("stage0_block0").layer_scale_init_value == 1e-5
    assert kp.PoolFormerM48(weights=None).get_layer("stage0_block0").layer_scale_init_value == 1e-6


def test_softmax_outputs_probabilities():
    probs = tiny()(images()).numpy()
    assert probs.shape == (2, 1000)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_config_round_trip():
    model = tiny(classifier_activation=None, drop_path_rate=0.1)
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    x = images()
    np.testing.assert_allclose(clone(x).numpy(), model(x).numpy(), atol=1e-6)
    assert clone.get_config() == model.get_config()


def test_keras_file_round_trip(tmp_path):
    model = kp.PoolFormerS12(weights=None, input_shape=(96, 96, 3))
    path = tmp_path / "s12.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    x = images(size=96)
    np.testing.assert_array_equal(restored.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize(
    "pooling, shape", [(None, (2, 2, 2, 32)), ("avg", (2, 32)), ("max", (2, 32))]
)
def test_headless_pooling(pooling, shape):
    model = tiny(include_top=False, pooling=pooling)
    assert model(images()).shape == shape


def test_headless_default_input_takes_any_size():
    model = tiny(input_shape=None, include_top=False, pooling="avg")
    assert model.input_shape == (None, None, None, 3)
    assert model(images(size=96)).shape == (2, 32)
    assert model(images(size=33)).shape == (2, 32)


def test_custom_input_shape_and_classes():
    model = tiny(input_shape=(96, 128, 3), classes=10)
    assert model.input_shape == (None, 96, 128, 3)
    x = np.random.default_rng(0).uniform(0, 255, (2, 96, 128, 3)).astype("float32")
    assert model(x).shape == (2, 10)


def test_input_tensor():
    inputs = keras.Input((64, 64, 3))
    model = tiny(input_tensor=inputs, include_top=False, pooling="avg")
    assert model.inputs[0] is inputs
    outer = keras.Model(inputs, keras.layers.Dense(3)(model.output))
    assert outer(images()).shape == (2, 3)


def test_include_preprocessing_is_the_documented_normalisation():
    inside = tiny(classifier_activation=None)
    outside = tiny(classifier_activation=None, include_preprocessing=False)
    outside.set_weights(inside.get_weights())
    x = images()
    assert kp.preprocess_input(x) is x  # a pass-through for models that normalise inside
    np.testing.assert_allclose(
        outside(kp.preprocess_input(x, include_preprocessing=False)).numpy(),
        inside(x).numpy(),
        atol=1e-5,
    )


def test_drop_path_grows_linearly_and_acts_only_in_training():
    model = tiny(drop_path_rate=0.3, classifier_activation=None)
    rates = [layer.drop_path_rate for layer in model.layers if "_block" in layer.name]
    np.testing.assert_allclose(rates, [0.0, 0.075, 0.15, 0.225, 0.3])
    x = images(8)
    np.testing.assert_array_equal(model(x).numpy(), model(x, training=False).numpy())
    assert not np.allclose(model(x, training=True).numpy(), model(x).numpy())


def test_trains_with_stochastic_depth_in_graph_mode():
    model = tiny(classes=5, drop_path_rate=0.2)
    model.compile(keras.optimizers.AdamW(1e-3), "sparse_categorical_crossentropy")
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(images(16), np.arange(16) % 5, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert all(
        not np.array_equal(old, new.numpy())
        for old, new in zip(before, model.trainable_weights, strict=True)
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    keras.config.set_dtype_policy(policy)
    for model in (tiny(), kp.PoolFormerS12(weights=None, input_shape=(64, 64, 3))):
        probs = model(images())
        assert probs.dtype == "float32"
        assert np.all(np.isfinite(probs.numpy()))
        np.testing.assert_allclose(probs.numpy().sum(axis=1), 1.0, rtol=1e-3)
        assert model.get_layer("stage0_block0").mlp.fc1.compute_dtype == policy[6:]
    logits = tiny(classifier_activation=None, include_top=True)(images())
    assert np.all(np.isfinite(logits.numpy()))


def test_feature_extractor_gives_four_strides(tmp_path):
    backbone = kp.PoolFormerS12(weights=None, include_top=False, input_shape=(128, 96, 3))
    features = kp.feature_extractor(backbone)
    shapes = [tuple(t.shape) for t in features.outputs]
    assert shapes == [(None, 32, 24, 64), (None, 16, 12, 128), (None, 8, 6, 320), (None, 4, 3, 512)]
    assert features.count_params() == backbone.count_params() - 2 * 512  # no final norm

    with_norms = kp.feature_extractor(backbone, out_norms=True)
    assert with_norms.count_params() == features.count_params() + 2 * (64 + 128 + 320 + 512)
    x = np.random.default_rng(0).uniform(0, 255, (1, 128, 96, 3)).astype("float32")
    for raw, normed in zip(features(x), with_norms(x), strict=True):
        flat = normed.numpy().reshape(-1)
        assert abs(flat.mean()) < 1e-4 and abs(flat.std() - 1) < 1e-3  # fresh MLN: normalised
        assert raw.shape == normed.shape
    path = tmp_path / "features.keras"
    with_norms.save(path)
    restored = keras.saving.load_model(path)
    for a, b in zip(restored(x), with_norms(x), strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


# --- bad arguments ---------------------------------------------------------------------


@pytest.fixture
def nothing_heavy(monkeypatch):
    """Makes building any block fail the test: errors must come before building."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was being built before the arguments were checked")

    monkeypatch.setattr("keras_poolformer.models.PoolFormerBlock", refuse)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"include_top": False, "pooling": "mean"}, "pooling must be one of"),
        ({"weights": "imagenet", "classes": 10}, "classes=1000"),
        ({"input_shape": (31, 224, 3)}, "height must be at least 32"),
        ({"input_shape": (224, 16, 3)}, "width must be at least 32"),
        ({"input_shape": (224, 224)}, "input_shape must be"),
        ({"input_shape": (64, 64, 1)}, "needs 3 channels"),
        ({"weights": "no/such/file.weights.h5"}, "does not exist"),
        ({"weights": "model.pth"}, "checkpoint 'model.pth' does not exist"),
        ({"weights": 3}, "weights must be"),
        ({"classes": 0}, "classes must be a positive integer"),
        ({"drop_path_rate": 1.0}, "drop_path_rate"),
        ({"classifier_activation": "softmaxx"}, "'softmaxx' is not a Keras activation"),
    ],
)
def test_bad_arguments_are_named_before_building(nothing_heavy, kwargs, message):
    with pytest.raises(ValueError, match=message):
        kp.PoolFormerS12(**{"weights": None, **kwargs})


def test_imagenet_weights_exist_only_for_named_variants(nothing_heavy):
    with pytest.raises(ValueError, match="only for the named variants"):
        kp.PoolFormer(**TINY, weights="imagenet")


def test_weights_file_round_trip_and_headless_load(tmp_path):
    model = kp.PoolFormerS12(weights=None, input_shape=(64, 64, 3))
    path = tmp_path / "s12.weights.h5"
    model.save_weights(path)
    loaded = kp.PoolFormerS12(weights=str(path), input_shape=(64, 64, 3))
    x = images()
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())

    headless = kp.PoolFormerS12(weights=path, include_top=False, input_shape=(64, 64, 3))
    trunk = keras.Model(model.input, model.get_layer("norm").output)
    np.testing.assert_array_equal(headless(x).numpy(), trunk(x).numpy())

    headless.save_weights(tmp_path / "notop.weights.h5")
    with pytest.raises(ValueError, match="has no classifier"):
        kp.PoolFormerS12(weights=tmp_path / "notop.weights.h5")
    with pytest.raises(ValueError, match="1000 classes.*pass classes=1000"):
        kp.PoolFormerS12(weights=path, classes=10)


def test_weights_file_of_another_variant_is_named(tmp_path, monkeypatch):
    path = tmp_path / "s24.weights.h5"
    kp.PoolFormerS24(weights=None, input_shape=(64, 64, 3)).save_weights(path)
    tiny_path = tmp_path / "tiny.weights.h5"
    tiny().save_weights(tiny_path)
    monkeypatch.setattr("keras_poolformer.models.PoolFormerBlock", None)  # nothing is built
    with pytest.raises(ValueError, match="does not fit model 'poolformer_s12'.*PoolFormer-S24"):
        kp.PoolFormerS12(weights=path)
    with pytest.raises(ValueError, match="fits no PoolFormer variant"):
        kp.PoolFormerS12(weights=tiny_path)


def test_weights_file_that_is_not_hdf5(tmp_path):
    path = tmp_path / "broken.weights.h5"
    path.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        kp.PoolFormerS12(weights=path)
