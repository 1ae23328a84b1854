"""The inference-only layers of a folded MetaFormer baseline
(:func:`keras_poolformer.export.fold`): each computes what the layers it replaces
compute, with weights merged, in the forms TFLite keeps inside XNNPACK. Registered
with Keras on import, so a folded model saved as ``.keras`` loads wherever
``keras_poolformer`` is imported."""

import contextlib

import keras
from keras import ops

from keras_poolformer.baselines.layers import NORM_EPSILON, make_mixer
from keras_poolformer.layers import LayerScale, ModifiedLayerNorm, Pooling

PACKAGE = "keras_poolformer"

# Whether FoldedSepConv traces its depthwise conv in rows (see depthwise_in_rows).
_DEPTHWISE_IN_ROWS = [False]

# XNNPACK's depthwise kernels take at most this many taps in one pass; a larger
# kernel runs a multi-pass path that measured 15 to 20 times slower per tap (LiteRT,
# 56x56x128, 2 threads, AVX2: 5x5 0.29 ms, 4x7 3.5 ms, 7x7 5.7 ms fp32, 22.9 ms int8).
XNNPACK_DEPTHWISE_TAPS = 25


@contextlib.contextmanager
def depthwise_in_rows():
    """Within this block, :class:`FoldedSepConv` traces its 7x7 depthwise convolution
    as :func:`depthwise_rows` does: three dilated 3x7 ones, each inside XNNPACK's
    fast path. ``export.export_tflite`` traces in it; other runtimes keep the one
    7x7 convolution, which TensorFlow would otherwise run as space-to-batch."""
    previous = _DEPTHWISE_IN_ROWS[0]
    _DEPTHWISE_IN_ROWS[0] = True
    try:
        yield
    finally:
        _DEPTHWISE_IN_ROWS[0] = previous


def depthwise_rows(inputs, kernel):
    """A "same"-padded, stride-1 depthwise convolution with an odd ``k x k`` kernel
    (``(k, k, channels, 1)``) as a sum of ``(k - 1) / 2`` depthwise convolutions of
    three rows each: the ``d``-th has the kernel's rows ``-d, 0, d`` (from the
    centre) and a vertical dilation of ``d``, and only the first keeps row 0 (the
    others hold zeros there). Each sees the input padded as the whole kernel would,
    so the sum is the same convolution, to float rounding.

    Why: with ``3 k <= 25`` taps per convolution, XNNPACK runs each in one pass
    (ConvFormer's 7x7 on 56x56x128: 5.7 ms as one convolution, 1.0 ms as three, fp32;
    int8 22.9 ms and 1.1 ms)."""
    size = kernel.shape[0]
    if size != kernel.shape[1] or size % 2 == 0:
        raise ValueError(f"depthwise_rows needs an odd square kernel, got {kernel.shape}.")
    centre = size // 2
    if size * size <= XNNPACK_DEPTHWISE_TAPS or centre == 0:
        return ops.depthwise_conv(inputs, kernel, padding="same")
    zeros = ops.zeros_like(kernel[centre])
    total = None
    for d in range(1, centre + 1):
        middle = kernel[centre] if d == 1 else zeros
        rows = ops.stack([kernel[centre - d], middle, kernel[centre + d]])
        y = ops.depthwise_conv(inputs, rows, padding="same", dilation_rate=(d, 1))
        total = y if total is None else total + y
    return total


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChannelNorm(keras.layers.Layer):
    """LayerNorm over the channels, written as int8 TFLite keeps inside XNNPACK:
    ``c = x - mean(x)``, ``c * rsqrt(mean(c * c) + eps)`` (no SQUARED_DIFFERENCE,
    no NEG), then the optional per-channel weight and bias."""

    def __init__(self, epsilon=NORM_EPSILON, scale=True, center=False, **kwargs):
        super().__init__(**kwargs)
        self.epsilon, self.scale, self.center = float(epsilon), bool(scale), bool(center)

    def build(self, input_shape):
        shape = (input_shape[-1],)
        if self.scale:
            self.gamma = self.add_weight(name="gamma", shape=shape, initializer="ones")
        if self.center:
            self.beta = self.add_weight(name="beta", shape=shape, initializer="zeros")

    def call(self, inputs):
        centred = inputs - ops.mean(inputs, axis=-1, keepdims=True)
        variance = ops.mean(centred * centred, axis=-1, keepdims=True)
        x = centred * ops.rsqrt(variance + self.epsilon)
        if self.scale:
            x = x * self.gamma
        if self.center:
            x = x + self.beta
        return x

    def get_config(self):
        return {
            **super().get_config(),
            "epsilon": self.epsilon,
            "scale": self.scale,
            "center": self.center,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class FoldedSepConv(keras.layers.Layer):
    """SepConv with StarReLU's scale inside the depthwise kernel:
    ``pwconv2(dwconv'(relu(pwconv1(x)) ** 2 + bias / scale))``; inside
    :func:`depthwise_in_rows` the depthwise convolution traces in rows."""

    def __init__(self, dim, hidden, kernel_size=7, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.hidden, self.kernel_size = int(dim), int(hidden), int(kernel_size)
        self.pwconv1 = keras.layers.Dense(self.hidden, use_bias=False, name="pwconv1")
        self.dwconv = keras.layers.DepthwiseConv2D(
            self.kernel_size, padding="same", use_bias=False, name="dwconv"
        )
        self.pwconv2 = keras.layers.Dense(self.dim, use_bias=False, name="pwconv2")

    def build(self, input_shape):
        hidden_shape = (*input_shape[:-1], self.hidden)
        self.pwconv1.build(input_shape)
        self.act_bias = self.add_weight(name="act_bias", shape=(1,), initializer="zeros")
        self.dwconv.build(hidden_shape)
        self.pwconv2.build(hidden_shape)

    def call(self, inputs):
        x = ops.relu(self.pwconv1(inputs))
        x = x * x + self.act_bias
        in_rows = _DEPTHWISE_IN_ROWS[0]
        return self.pwconv2(depthwise_rows(x, self.dwconv.kernel) if in_rows else self.dwconv(x))

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "hidden": self.hidden,
            "kernel_size": self.kernel_size,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class SplitAttention(keras.layers.Layer):
    """The baselines' attention with ``qkv`` split into three projections (the
    query's ``head_dim ** -0.5`` inside its kernel): no strided slices, which
    leave XNNPACK even in float32."""

    def __init__(self, dim, head_dim=32, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.head_dim = int(dim), int(head_dim)
        self.heads = self.dim // self.head_dim
        for name in ("q", "k", "v", "proj"):
            setattr(self, name, keras.layers.Dense(self.dim, use_bias=False, name=name))

    def build(self, input_shape):
        for layer in (self.q, self.k, self.v, self.proj):
            layer.build((None, None, self.dim))

    def call(self, inputs):
        shape = ops.shape(inputs)
        x = ops.reshape(inputs, (shape[0], -1, shape[3]))

        def heads(layer):
            y = ops.reshape(layer(x), (shape[0], -1, self.heads, self.head_dim))
            return ops.transpose(y, (0, 2, 1, 3))

        q, k, v = heads(self.q), heads(self.k), heads(self.v)
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))
        y = ops.transpose(ops.matmul(ops.softmax(scores, axis=-1), v), (0, 2, 1, 3))
        y = self.proj(ops.reshape(y, (shape[0], -1, self.dim)))
        return ops.reshape(y, shape)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "head_dim": self.head_dim}


@keras.saving.register_keras_serializable(package=PACKAGE)
class FoldedBaselineBlock(keras.layers.Layer):
    """A :class:`~keras_poolformer.baselines.layers.BaselineBlock` for inference,
    with norm1's weight in the mixer's first projection (SepConv, attention),
    norm2's in ``fc1``, the MLP's StarReLU in ``fc2`` (scale in the kernel, bias
    as ``fc2``'s bias) and SepConv's StarReLU scale in its depthwise kernel; pooling
    (PoolFormerV2) as a depthwise sum (``Pooling(depthwise_sum=True)``, as a folded
    S12's), which int8 LiteRT keeps in XNNPACK where an int8 ``AVERAGE_POOL_2D`` is not."""

    def __init__(self, dim, token_mixer, norm, mlp_ratio=4.0, res_scale=False, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.token_mixer_kind, self.norm_kind = int(dim), token_mixer, norm
        self.mlp_ratio, self.res_scale, self.seed = float(mlp_ratio), bool(res_scale), seed
        foldable = token_mixer in ("sepconv", "attention")
        self.norm1 = self._norm("norm1", scale=not foldable)
        if token_mixer == "sepconv":
            self.token_mixer = FoldedSepConv(dim, 2 * dim, name="token_mixer")
        elif token_mixer == "attention":
            self.token_mixer = SplitAttention(dim, name="token_mixer")
        elif token_mixer == "pooling":  # the window's sum as a depthwise conv, as S12's
            self.token_mixer = Pooling(3, depthwise_sum=True, name="token_mixer")
        else:
            self.token_mixer = make_mixer(token_mixer, "token_mixer", seed=seed)
        self.norm2 = self._norm("norm2", scale=False)
        hidden = int(self.mlp_ratio * dim)
        self.fc1 = keras.layers.Dense(hidden, use_bias=False, name="fc1")
        self.fc2 = keras.layers.Dense(dim, name="fc2")
        self.res_scale_1 = LayerScale(name="res_scale_1") if res_scale else None
        self.res_scale_2 = LayerScale(name="res_scale_2") if res_scale else None

    def _norm(self, name, scale):
        if self.norm_kind == "channel":
            return ChannelNorm(scale=scale, name=name)
        return ModifiedLayerNorm(epsilon=NORM_EPSILON, center=False, scale=scale, name=name)

    def build(self, input_shape):
        hidden = (*input_shape[:-1], int(self.mlp_ratio * self.dim))
        for layer in (self.norm1, self.token_mixer, self.norm2, self.fc1):
            layer.build(input_shape)
        self.fc2.build(hidden)
        if self.res_scale:
            self.res_scale_1.build(input_shape)
            self.res_scale_2.build(input_shape)

    def call(self, inputs):
        x = inputs
        mixed = self.token_mixer(self.norm1(x))
        x = (x if self.res_scale_1 is None else self.res_scale_1(x)) + mixed
        h = ops.relu(self.fc1(self.norm2(x)))
        branch = self.fc2(h * h)
        return (x if self.res_scale_2 is None else self.res_scale_2(x)) + branch

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "token_mixer": self.token_mixer_kind,
            "norm": self.norm_kind,
            "mlp_ratio": self.mlp_ratio,
            "res_scale": self.res_scale,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class FoldedMlpHead(keras.layers.Layer):
    """The MLP head with its LayerNorm's weight and bias inside ``fc2`` and the
    norm in :class:`ChannelNorm`'s form: ``fc2(norm(relu(fc1(x)) ** 2))``."""

    def __init__(self, classes, hidden, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.classes, self.hidden, self.epsilon = int(classes), int(hidden), float(epsilon)
        self.fc1 = keras.layers.Dense(self.hidden, name="fc1")
        self.norm = ChannelNorm(self.epsilon, scale=False, name="norm")
        self.fc2 = keras.layers.Dense(self.classes, name="fc2")

    def build(self, input_shape):
        hidden_shape = (*input_shape[:-1], self.hidden)
        self.fc1.build(input_shape)
        self.norm.build(hidden_shape)
        self.fc2.build(hidden_shape)

    def call(self, inputs):
        x = ops.relu(self.fc1(inputs))
        return self.fc2(self.norm(x * x))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.classes)

    def get_config(self):
        return {
            **super().get_config(),
            "classes": self.classes,
            "hidden": self.hidden,
            "epsilon": self.epsilon,
        }
