"""Each layer against a plain numpy statement of what the official code computes."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_poolformer import layers

RNG = np.random.default_rng(0)


def randn(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def roundtrip(layer):
    """Serialises and deserialises a layer the way a .keras file does."""
    return keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))


def numpy_mln(x, gamma, beta, eps=1e-5):
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    var = x.var(axis=(1, 2, 3), keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def numpy_pooling(x, k):
    """avg_pool(k, stride 1, pad k//2, count_include_pad=False)(x) - x."""
    n, h, w, c = x.shape
    r = k // 2
    out = np.empty_like(x)
    for i in range(h):
        for j in range(w):
            window = x[:, max(i - r, 0) : i + r + 1, max(j - r, 0) : j + r + 1, :]
            out[:, i, j, :] = window.mean(axis=(1, 2))
    return out - x


def numpy_gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def test_mln_normalises_over_height_width_and_channels():
    x = randn(2, 5, 6, 4) * 3 + 1
    norm = layers.ModifiedLayerNorm()
    norm.build(x.shape)
    gamma, beta = randn(4), randn(4)
    norm.gamma.assign(gamma)
    norm.beta.assign(beta)
    np.testing.assert_allclose(norm(x).numpy(), numpy_mln(x, gamma, beta), atol=1e-5)
    assert norm.epsilon == 1e-5


def test_mln_is_not_layer_normalization():
    x = randn(2, 5, 6, 4) * 3 + 1
    mln = layers.ModifiedLayerNorm()(x).numpy()
    ln = keras.layers.LayerNormalization(epsilon=1e-5)(x).numpy()
    assert np.abs(mln - ln).max() > 0.1


def test_mln_refuses_more_groups():
    with pytest.raises(ValueError, match="groups=1"):
        layers.ModifiedLayerNorm(groups=2)


def test_pooling_leaves_padding_out_of_the_average():
    x = randn(2, 5, 7, 3)
    for k in (3, 5, 9):  # 9: a window wider than the map
        for depthwise_sum in (False, True):
            out = layers.Pooling(k, depthwise_sum=depthwise_sum)(x).numpy()
            np.testing.assert_allclose(out, numpy_pooling(x, k), atol=1e-6)


def test_depthwise_sum_pooling_works_on_maps_of_any_size():
    """The per-position cell counts come from the runtime shape, not the traced one."""
    pooling = layers.Pooling(3, depthwise_sum=True)
    run = tf.function(pooling, input_signature=[tf.TensorSpec([None, None, None, 4])])
    for shape in ((1, 4, 6, 4), (2, 9, 3, 4)):
        x = randn(*shape)
        np.testing.assert_allclose(run(x).numpy(), numpy_pooling(x, 3), atol=1e-6)


@pytest.mark.parametrize("bad", [2, 0, -3, 3.0])
def test_pooling_refuses_bad_sizes(bad):
    with pytest.raises(ValueError, match="pool_size"):
        layers.Pooling(bad)


def test_conv_mlp_uses_exact_gelu():
    x = randn(2, 4, 4, 6)
    mlp = layers.ConvMlp(12, 6)
    y = mlp(x).numpy()
    w1, b1 = mlp.fc1.kernel.numpy()[0, 0], mlp.fc1.bias.numpy()
    w2, b2 = mlp.fc2.kernel.numpy()[0, 0], mlp.fc2.bias.numpy()
    expected = numpy_gelu(x @ w1 + b1) @ w2 + b2
    np.testing.assert_allclose(y, expected, atol=1e-5)
    tanh_gelu = keras.ops.gelu(x @ w1 + b1, approximate=True).numpy() @ w2 + b2
    assert np.abs(tanh_gelu - y).max() > 1e-5  # the approximation would be caught


def test_layer_scale_starts_at_init_value():
    scale = layers.LayerScale(1e-6)
    x = randn(2, 3, 3, 5)
    np.testing.assert_allclose(scale(x).numpy(), x * 1e-6, rtol=1e-6)
    assert scale.scale.shape == (5,)


def test_drop_path_is_identity_at_inference_and_drops_whole_samples_in_training():
    x = np.ones((2000, 2, 2, 3), np.float32)
    drop = layers.DropPath(0.25, seed=1)
    np.testing.assert_array_equal(drop(x, training=False).numpy(), x)
    y = drop(x, training=True).numpy()
    per_sample = y.reshape(len(y), -1)
    assert set(np.unique(per_sample)) <= {0.0, np.float32(1 / 0.75)}
    assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))  # whole samples
    assert abs((per_sample[:, 0] == 0).mean() - 0.25) < 0.04
    np.testing.assert_array_equal(layers.DropPath(0.0)(x, training=True).numpy(), x)


def test_block_matches_its_definition():
    x = randn(2, 6, 5, 8)
    block = layers.PoolFormerBlock(8, layer_scale_init_value=0.5)
    y = block(x).numpy()
    g1, b1 = block.norm1.gamma.numpy(), block.norm1.beta.numpy()
    g2, b2 = block.norm2.gamma.numpy(), block.norm2.beta.numpy()
    h = x + 0.5 * numpy_pooling(numpy_mln(x, g1, b1), 3)
    mlp = block.mlp(numpy_mln(h, g2, b2)).numpy()
    np.testing.assert_allclose(y, h + 0.5 * mlp, atol=1e-5)


def test_block_refuses_wrong_channels():
    with pytest.raises(ValueError, match="expects 8 channels"):
        layers.PoolFormerBlock(8)(randn(1, 4, 4, 6))


# ImageNet's statistics as torchvision publishes them, in RGB order, for pixels scaled
# to 0..1; written here as literals so that a wrong or reordered constant in the
# package fails.
IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406])
IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225])


def imagenet_normalise(pixels):
    """``(pixels / 255 - mean) / std`` per RGB channel, in float64."""
    return (np.asarray(pixels, np.float64) / 255 - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB


def rgb_test_images():
    """Two non-uniform images whose channels differ: red rises along the width, green
    falls along the height, blue is noise. On them, swapping two channels, or two
    channels' mean or std, moves the normalised values by more than 0.01, a thousand
    times the tolerances of the tests below (checked here, on the literal normalisation)."""
    h, w = 32, 40  # the smallest the models take
    red = np.broadcast_to(np.linspace(10, 250, w), (h, w))
    green = np.broadcast_to(np.linspace(240, 5, h)[:, None], (h, w))
    blue = RNG.uniform(0, 255, (h, w))
    image = np.stack([red, green, blue], axis=-1)
    images = np.stack([image, 255 - image]).astype(np.float32)

    expected = imagenet_normalise(images)
    assert np.abs(imagenet_normalise(images[..., ::-1]) - expected).max() > 0.01  # BGR
    for swap in ([1, 0, 2], [2, 1, 0], [0, 2, 1]):
        assert np.abs(imagenet_normalise(images[..., swap]) - expected).max() > 0.01
        wrong_mean = (images / 255 - IMAGENET_MEAN_RGB[swap]) / IMAGENET_STD_RGB
        wrong_std = (images / 255 - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB[swap]
        assert np.abs(wrong_mean - expected).max() > 0.01
        assert np.abs(wrong_std - expected).max() > 0.01
    return images


def test_image_normalization_matches_torchvision_order():
    x = rgb_test_images()
    normalization = layers.ImageNormalization()
    np.testing.assert_allclose(normalization(x).numpy(), imagenet_normalise(x), atol=1e-5)
    assert normalization.count_params() == 0


def test_models_normalise_inside_with_the_imagenet_constants():
    """The model built with include_preprocessing=True (the default) computes, on 0..255
    RGB pixels, what the same weights compute on the literally normalised pixels."""
    from conftest import TINY

    import keras_poolformer as kp

    x = rgb_test_images()
    model = kp.PoolFormer(**TINY, weights=None, input_shape=x.shape[1:], classifier_activation=None)
    normalised = keras.Model(model.input, model.get_layer("preprocessing").output)
    np.testing.assert_allclose(normalised(x).numpy(), imagenet_normalise(x), atol=1e-5)

    bare = kp.PoolFormer(
        **TINY,
        weights=None,
        input_shape=x.shape[1:],
        classifier_activation=None,
        include_preprocessing=False,
    )
    bare.set_weights(model.get_weights())
    expected = bare(imagenet_normalise(x).astype(np.float32)).numpy()
    assert np.abs(expected - bare(imagenet_normalise(x[..., ::-1]).astype(np.float32))).max() > 1e-3
    np.testing.assert_allclose(model(x).numpy(), expected, atol=1e-5)


def test_preprocess_input_normalises_with_the_imagenet_constants():
    import keras_poolformer as kp

    x = rgb_test_images()
    out = kp.preprocess_input(x, include_preprocessing=False)
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, imagenet_normalise(x), atol=1e-5)
    # For the models that normalise inside, it passes pixels through untouched.
    np.testing.assert_array_equal(kp.preprocess_input(x), x)


@pytest.mark.parametrize(
    "make",
    [
        lambda: layers.ModifiedLayerNorm(name="n"),
        lambda: layers.Pooling(5),
        lambda: layers.Pooling(3, depthwise_sum=True),
        lambda: layers.ConvMlp(16, 8),
        lambda: layers.LayerScale(1e-6),
        lambda: layers.DropPath(0.1, seed=3),
        lambda: layers.PoolFormerBlock(8, pool_size=5, mlp_ratio=2, drop_path_rate=0.1),
        lambda: layers.ImageNormalization(),
    ],
)
def test_layers_serialise(make):
    layer = make()
    x = randn(2, 5, 5, 8 if not isinstance(layer, layers.ImageNormalization) else 3)
    layer(x)
    clone = roundtrip(layer)
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(x).numpy(), layer(x).numpy(), atol=1e-6)
