"""Porting official-layout state dicts: every tensor once, shapes checked, all or nothing."""

import numpy as np
import pytest
from conftest import TINY

import keras_poolformer as kp
from keras_poolformer import porting


def tiny(**kwargs):
    return kp.PoolFormer(**TINY, input_shape=(64, 64, 3), **kwargs)


def random_state(model, seed=0):
    rng = np.random.default_rng(seed)
    return {
        key: rng.normal(size=value.shape).astype(np.float32)
        for key, value in porting.export_state_dict(model).items()
    }


def test_official_shapes_describe_the_model():
    model = tiny()
    exported = porting.export_state_dict(model)
    shapes = porting.official_shapes(TINY["depths"], TINY["dims"])
    assert {k: v.shape for k, v in exported.items()} == shapes
    assert list(exported) == list(shapes)  # the same order, too


def test_round_trip_is_exact_and_transposes_convs():
    model = tiny()
    state = random_state(model)
    report = porting.load_state_dict(model, state)
    assert report.loaded == tuple(state) and report.skipped == ()
    back = porting.export_state_dict(model)
    for key in state:
        np.testing.assert_array_equal(back[key], state[key])
    kernel = model.get_layer("stem").kernel.numpy()
    np.testing.assert_array_equal(kernel, state["patch_embed.proj.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.get_layer("head").kernel.numpy(), state["head.weight"].T)
    block = model.get_layer("stage2_block1")
    np.testing.assert_array_equal(
        block.layer_scale_2.scale.numpy(), state["network.4.1.layer_scale_2"]
    )
    np.testing.assert_array_equal(
        model.get_layer("downsample3").bias.numpy(), state["network.5.proj.bias"]
    )


def test_every_problem_is_listed_and_nothing_is_written():
    model = tiny()
    before = [w.numpy().copy() for w in model.weights]
    state = random_state(model)
    del state["network.0.0.norm1.weight"]
    del state["network.4.1.layer_scale_1"]
    state["network.8.0.norm1.weight"] = np.ones(8, np.float32)
    state["network.2.0.mlp.fc1.weight"] = state["network.2.0.mlp.fc1.weight"][:, :, 0]
    state["head.bias"] = np.zeros(10, np.float32)
    state["norm.weight"] = state["norm.weight"].astype(np.int64)
    with pytest.raises(ValueError) as info:
        porting.load_state_dict(model, state)
    message = str(info.value)
    for expected in [
        "2 missing",
        "network.0.0.norm1.weight",
        "network.4.1.layer_scale_1",
        "1 unexpected",
        "network.8.0.norm1.weight",
        "3 wrong shape or dtype",
        "network.2.0.mlp.fc1.weight: checkpoint (64, 16, 1), model (64, 16, 1, 1)",
        "head.bias: checkpoint (10,), model (1000,)",
        "norm.weight: dtype int64",
    ]:
        assert expected in message
    for old, new in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(old, new.numpy())


def test_headless_model_skips_only_the_classifier():
    full = tiny()
    state = random_state(full)
    headless = tiny(include_top=False)
    report = porting.load_state_dict(headless, state)
    assert report.skipped == ("head.weight", "head.bias")
    np.testing.assert_array_equal(headless.get_layer("norm").gamma.numpy(), state["norm.weight"])


def test_feature_extractor_with_dense_prediction_norms():
    """A detection/segmentation checkpoint (norm0/2/4/6, no final norm or head) fits
    the feature extractor with out_norms; a classifier's extra tensors are skipped."""
    features = kp.feature_extractor(tiny(include_top=False), out_norms=True)
    shapes = porting.official_shapes(
        TINY["depths"], TINY["dims"], classes=None, final_norm=False, out_norms=True
    )
    rng = np.random.default_rng(1)
    state = {key: rng.normal(size=shape).astype(np.float32) for key, shape in shapes.items()}
    report = porting.load_state_dict(features, state)
    assert report.skipped == ()
    assert list(porting.export_state_dict(features)) == list(shapes)
    np.testing.assert_array_equal(features.get_layer("out_norm2").beta.numpy(), state["norm4.bias"])

    classifier_state = {**state, **random_state(tiny())}
    report = porting.load_state_dict(features, classifier_state)
    assert set(report.skipped) == {"norm.weight", "norm.bias", "head.weight", "head.bias"}
