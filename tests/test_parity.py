"""Parity with an independent PyTorch implementation (transformers' PoolFormer).

Random non-trivial weights are set in the reference, renamed to the official layout
and ported into our model with ``porting.load_state_dict``; both models then see the
same real ImageNet validation images (from the shared data). Our model takes the raw
0..255 RGB pixels and normalises them itself (``include_preprocessing=True``); the
reference takes them normalised in torch as torchvision does, with the ImageNet
constants written as literals in tests/reference.py. A wrong constant or swapped
channels in our normalisation therefore fails parity.
"""

import numpy as np
import pytest
from conftest import imagenet_val_images, reference
from reference import reference_logits, torchvision_normalize

import keras_poolformer as kp
from keras_poolformer import layers

TOLERANCE = 1e-4
VARIANTS = [
    "s12",
    pytest.param("s24", marks=pytest.mark.slow),
    pytest.param("s36", marks=pytest.mark.slow),
    pytest.param("m36", marks=pytest.mark.slow),
    pytest.param("m48", marks=pytest.mark.slow),
]


def ported(variant, size, **kwargs):
    torch_model, state = reference(variant)
    model = kp.VARIANTS[variant](
        weights=None, classifier_activation=None, input_shape=(*size, 3), **kwargs
    )
    # Our model normalises its 0..255 inputs itself, in this layer.
    assert isinstance(model.get_layer("preprocessing"), layers.ImageNormalization)
    report = kp.porting.load_state_dict(model, state)
    # Every tensor is used exactly once; a headless model skips the classifier alone.
    assert sorted(report.loaded + report.skipped) == sorted(state)
    assert report.skipped == (
        () if kwargs.get("include_top", True) else ("head.weight", "head.bias")
    )
    return model, torch_model


def compare(variant, size, count=4):
    pixels = imagenet_val_images(count, size)
    model, torch_model = ported(variant, size)
    ours = model(pixels).numpy()  # raw pixels, through the model's own normalisation
    theirs = reference_logits(torch_model, torchvision_normalize(pixels))
    return ours, theirs


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_the_reference(variant):
    ours, theirs = compare(variant, (224, 224))
    assert theirs.std() > 0.3  # the logits carry signal: every branch contributes
    assert np.abs(ours - theirs).max() <= TOLERANCE
    np.testing.assert_array_equal(ours.argmax(1), theirs.argmax(1))


def test_odd_non_square_input_matches_the_reference():
    """193x257 leaves partial windows at every border: padding and pooling edges."""
    ours, theirs = compare("s12", (193, 257))
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_stage_features_match_the_reference():
    import torch

    pixels = imagenet_val_images(2, (193, 257))
    model, torch_model = ported("s12", (193, 257), include_top=False)
    features = kp.feature_extractor(model)
    normalized = torchvision_normalize(pixels)
    with torch.no_grad():
        hidden = torch_model.poolformer(
            torch.from_numpy(normalized.transpose(0, 3, 1, 2).copy()), output_hidden_states=True
        ).hidden_states
    for ours, theirs in zip(features(pixels), hidden, strict=True):
        theirs = theirs.numpy().transpose(0, 2, 3, 1)
        assert ours.shape == theirs.shape
        assert np.abs(ours.numpy() - theirs).max() <= TOLERANCE * max(1.0, np.abs(theirs).max())


class _PaddedPooling(layers.Pooling):
    """The count_include_pad=True mistake: zeros padded in are averaged."""

    def call(self, inputs):
        from keras import ops

        r = self.pool_size // 2
        padded = ops.pad(inputs, [[0, 0], [r, r], [r, r], [0, 0]])
        return ops.average_pool(padded, self.pool_size, strides=1, padding="valid") - inputs


def test_the_parity_test_catches_known_port_mistakes(monkeypatch):
    """Each mistake other ports made moves the logits far past the tolerance, so the
    tests above would fail on it."""
    import keras

    size = (193, 257)
    pixels = imagenet_val_images(2, size)
    model, torch_model = ported("s12", size)
    theirs = reference_logits(torch_model, torchvision_normalize(pixels))
    assert np.abs(model(pixels).numpy() - theirs).max() <= TOLERANCE

    def gap(ours):
        return np.abs(ours - theirs).max()

    # A wrong ImageNet constant (red's and green's means swapped), and BGR channel order.
    normalization = model.get_layer("preprocessing")
    mean = normalization.mean
    normalization.mean = (mean[1], mean[0], mean[2])
    assert gap(model(pixels).numpy()) > 10 * TOLERANCE
    normalization.mean = mean
    assert gap(model(pixels[..., ::-1]).numpy()) > 10 * TOLERANCE

    # Keras' default GroupNormalization epsilon (1e-3) instead of PyTorch's 1e-5.
    norms = [
        layer for layer in model._flatten_layers() if isinstance(layer, layers.ModifiedLayerNorm)
    ]
    for norm in norms:
        norm.epsilon = 1e-3
    assert gap(model(pixels).numpy()) > 10 * TOLERANCE
    for norm in norms:
        norm.epsilon = 1e-5

    # Padding counted in the pooling average.
    monkeypatch.setattr(layers.Pooling, "call", _PaddedPooling.call)
    assert gap(model(pixels).numpy()) > 10 * TOLERANCE
    monkeypatch.undo()

    # The final norm moved after the global pooling (as a LayerNorm over channels).
    trunk = keras.Model(model.input, model.get_layer("stage3_block1").output)
    pooled = trunk(pixels).numpy().mean(axis=(1, 2))
    final = model.get_layer("norm")
    mean, var = pooled.mean(-1, keepdims=True), pooled.var(-1, keepdims=True)
    normed = (pooled - mean) / np.sqrt(var + 1e-5) * final.gamma.numpy() + final.beta.numpy()
    head = model.get_layer("head")
    moved = normed @ head.kernel.numpy() + head.bias.numpy()
    assert gap(moved) > 10 * TOLERANCE
