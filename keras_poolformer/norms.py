"""PoolFormer's norm, the "Modified Layer Norm" (one-group GroupNorm), in a module of its
own so that the mixers and the blocks both import it without importing each other."""

import keras
from keras import ops

PACKAGE = "keras_poolformer"


def _sample_mean(x):
    """The mean of each sample of ``(batch, height, width, channels)`` over all three
    axes, shaped ``(batch, 1, 1, 1)``: over height and width, then over channels."""
    return ops.mean(ops.mean(x, axis=(1, 2), keepdims=True), axis=3, keepdims=True)


def _normalise(x, epsilon):
    """``(x - mean) / sqrt(var + epsilon)`` over each sample's height, width and channels."""
    centred = x - _sample_mean(x)
    return centred * ops.rsqrt(_sample_mean(centred * centred) + epsilon)


def _normalise_with_gradient(x, epsilon):
    """:func:`_normalise` with its gradient written out (TensorFlow), for training.

    With ``y`` the output and ``s = 1 / std`` per sample, the gradient is
    ``s * (dy - mean(dy) - y * mean(dy * y))``: it needs only ``y``, which the
    affine weight's gradient keeps anyway, and ``s``. Autodiff's chain through the
    forward pass kept the centred input as well and made more passes over the
    tensor. Same forward values; measured on S12's AdamW step at batch 32 (2
    threads), with the GELU's own (``mixers.gelu_with_gradient``): peak memory
    4672 -> 3673 MiB, 5314 -> 3752 MiB with oneDNN on, speed unchanged
    (``benchmarks/speed_experiments.py train``).
    """
    import tensorflow as tf

    def mean(t):
        return tf.reduce_mean(t, axis=[1, 2, 3], keepdims=True)

    @tf.custom_gradient
    def normalise(x):
        centred = x - _sample_mean(x)
        inv_std = ops.rsqrt(_sample_mean(centred * centred) + epsilon)
        y = centred * inv_std

        def grad(dy):
            return inv_std * (dy - mean(dy) - y * mean(dy * y))

        return y, grad

    return normalise(x)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ModifiedLayerNorm(keras.layers.GroupNormalization):
    """The "Modified Layer Norm" (MLN) of PoolFormer: one-group GroupNorm.

    Mean and variance are taken over height, width *and* channels of each sample;
    the affine weight and bias are per channel. This is
    ``torch.nn.GroupNorm(1, C)`` and NOT ``LayerNormalization``, which would
    normalise over channels only, separately at every pixel.

    The epsilon is PyTorch's GroupNorm default, 1e-5. Keras' GroupNormalization
    default (1e-3) gives visibly different outputs on trained weights.

    With a single group no reshape into groups is needed. The statistics are
    computed in float32 even under mixed precision, each as a mean over height and
    width followed by a mean over channels (the same number: every channel has as
    many pixels), and the variance as the mean of the centred values times
    themselves. Written so, every step is an operation that int8 TFLite runs inside
    its XNNPACK delegate; one mean over three axes and ``SQUARED_DIFFERENCE`` are
    not, and left the int8 S12 2.7x slower.

    In training on TensorFlow the normalisation carries its gradient written out
    (:func:`_normalise_with_gradient`), which keeps less for the backward pass.

    Example:
    >>> norm = ModifiedLayerNorm()
    >>> norm(keras.ops.ones((2, 7, 7, 16))).shape
    (2, 7, 7, 16)
    """

    def __init__(self, epsilon=1e-5, **kwargs):
        groups = kwargs.pop("groups", 1)
        axis = kwargs.pop("axis", -1)
        if groups != 1 or axis not in (-1, 3):
            raise ValueError(
                "ModifiedLayerNorm is GroupNormalization with groups=1 over the last "
                f"(channels) axis; got groups={groups}, axis={axis}."
            )
        super().__init__(groups=1, axis=-1, epsilon=epsilon, **kwargs)

    def call(self, inputs, training=None):
        x = ops.cast(inputs, "float32")
        if training and keras.backend.backend() == "tensorflow":
            x = _normalise_with_gradient(x, self.epsilon)
        else:
            x = _normalise(x, self.epsilon)
        if self.scale:
            x = x * ops.cast(self.gamma, "float32")
        if self.center:
            x = x + ops.cast(self.beta, "float32")
        return ops.cast(x, self.compute_dtype)
