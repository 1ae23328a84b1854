"""The layers the MetaFormer baselines add to PoolFormer's, each small and serialisable.

The baselines (Yu et al., "MetaFormer Baselines for Vision", TPAMI 2023; official code
``metaformer_baselines.py`` of sail-sg/metaformer) keep PoolFormer's skeleton and
change its parts: StarReLU in the MLPs, MLPs and mixers without biases, norms without
biases (epsilon 1e-6), a norm after the stem and before each downsampling, a learned
scale on the residual path of the last two stages instead of LayerScale, the final
norm after the pooling, and (ConvFormer, CAFormer) an MLP classifier head.

Every layer works on channels-last tensors ``(batch, height, width, channels)``; the
official code is channels-last too, so its ``nn.Linear`` weights map onto ``Dense``
kernels by a transpose.
"""

import keras
from keras import ops

from keras_poolformer.layers import DropPath, LayerScale, ModifiedLayerNorm
from keras_poolformer.mixers import Attention, Pooling, RandomMixing

PACKAGE = "keras_poolformer"

# The official code initialises every nn.Linear and nn.Conv2d with a normal of std
# 0.02, truncated, and their biases with zeros.
_INIT = {"class_name": "TruncatedNormal", "config": {"stddev": 0.02}}

# The norms of the baselines: epsilon 1e-6 and no bias (``LayerNormGeneral(bias=False,
# eps=1e-6)``). "channel": over the channels at each position (ConvFormer, CAFormer,
# and the stem / downsampling of every family); "mln": over height, width and channels
# of each sample with a per-channel weight (PoolFormerV2, IdentityFormer, RandFormer).
NORMS = ("channel", "mln")
NORM_EPSILON = 1e-6
# Token mixers of the baselines, each with the options its family uses.
MIXERS = ("identity", "random", "pooling", "sepconv", "attention")


def make_norm(kind, name, dtype=None):
    """A new bias-free baseline norm, ``"channel"`` or ``"mln"`` (see :data:`NORMS`)."""
    if kind == "channel":
        return keras.layers.LayerNormalization(
            epsilon=NORM_EPSILON, center=False, name=name, dtype=dtype
        )
    if kind == "mln":
        return ModifiedLayerNorm(epsilon=NORM_EPSILON, center=False, name=name, dtype=dtype)
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}.")


def make_mixer(kind, name="token_mixer", dtype=None, seed=0):
    """A new token mixer of the baselines (see :data:`MIXERS`): ``"identity"``,
    ``"random"`` (a frozen random matrix; ``seed`` picks it), ``"pooling"`` (3x3,
    ``avg_pool(x) - x``), ``"sepconv"`` (:class:`SepConv`) or ``"attention"`` (heads
    of 32 channels, no biases)."""
    if kind == "identity":
        return keras.layers.Identity(name=name, dtype=dtype)
    if kind == "random":
        return RandomMixing(seed=seed, name=name, dtype=dtype)
    if kind == "pooling":
        return Pooling(3, name=name, dtype=dtype)
    if kind == "sepconv":
        return SepConv(name=name, dtype=dtype)
    if kind == "attention":
        return Attention(32, qkv_bias=False, proj_bias=False, name=name, dtype=dtype)
    raise ValueError(f"unknown token mixer {kind!r}; choose one of {', '.join(MIXERS)}.")


@keras.saving.register_keras_serializable(package=PACKAGE)
class StarReLU(keras.layers.Layer):
    """StarReLU: ``scale * relu(x) ** 2 + bias``, with one learned scalar each
    (start values 1 and 0), the activation of the baselines' MLPs and SepConv.

    The weights are shaped ``(1,)``, as the official ``scale`` and ``bias``.

    Example:
    >>> StarReLU()(keras.ops.convert_to_tensor([[-1.0, 2.0]]))  # [[0., 4.]]
    """

    def __init__(self, scale_value=1.0, bias_value=0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale_value = float(scale_value)
        self.bias_value = float(bias_value)

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale", shape=(1,), initializer=keras.initializers.Constant(self.scale_value)
        )
        self.bias = self.add_weight(
            name="bias", shape=(1,), initializer=keras.initializers.Constant(self.bias_value)
        )

    def call(self, inputs):
        x = ops.relu(inputs)
        return ops.cast(self.scale, x.dtype) * (x * x) + ops.cast(self.bias, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "scale_value": self.scale_value,
            "bias_value": self.bias_value,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class SepConv(keras.layers.Layer):
    """ConvFormer's token mixer, MobileNetV2's inverted separable convolution:
    ``pwconv1`` (channels -> 2 x channels), StarReLU, a depthwise 7x7 convolution
    ("same" zero padding, as the official ``padding=3``), ``pwconv2`` (back to the
    channels). No biases anywhere, as in the official ``SepConv(bias=False)``.
    """

    def __init__(self, expansion_ratio=2, kernel_size=7, **kwargs):
        super().__init__(**kwargs)
        self.expansion_ratio = float(expansion_ratio)
        self.kernel_size = int(kernel_size)
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}.")

    def build(self, input_shape):
        dim = input_shape[-1]
        hidden = int(self.expansion_ratio * dim)
        policy = self.dtype_policy
        self.pwconv1 = keras.layers.Dense(
            hidden, use_bias=False, kernel_initializer=_INIT, name="pwconv1", dtype=policy
        )
        self.act = StarReLU(name="act", dtype=policy)
        self.dwconv = keras.layers.DepthwiseConv2D(
            self.kernel_size,
            padding="same",
            use_bias=False,
            depthwise_initializer=_INIT,
            name="dwconv",
            dtype=policy,
        )
        self.pwconv2 = keras.layers.Dense(
            dim, use_bias=False, kernel_initializer=_INIT, name="pwconv2", dtype=policy
        )
        hidden_shape = (*input_shape[:-1], hidden)
        self.pwconv1.build(input_shape)
        self.act.build(hidden_shape)
        self.dwconv.build(hidden_shape)
        self.pwconv2.build(hidden_shape)

    def call(self, inputs):
        return self.pwconv2(self.dwconv(self.act(self.pwconv1(inputs))))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "expansion_ratio": self.expansion_ratio,
            "kernel_size": self.kernel_size,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class StarMlp(keras.layers.Layer):
    """The channel MLP of the baselines: ``fc1`` (to ``mlp_ratio`` x channels),
    StarReLU, ``fc2`` (back), both without bias."""

    def __init__(self, mlp_ratio=4.0, **kwargs):
        super().__init__(**kwargs)
        self.mlp_ratio = float(mlp_ratio)

    def build(self, input_shape):
        dim = input_shape[-1]
        hidden = int(self.mlp_ratio * dim)
        policy = self.dtype_policy
        self.fc1 = keras.layers.Dense(
            hidden, use_bias=False, kernel_initializer=_INIT, name="fc1", dtype=policy
        )
        self.act = StarReLU(name="act", dtype=policy)
        self.fc2 = keras.layers.Dense(
            dim, use_bias=False, kernel_initializer=_INIT, name="fc2", dtype=policy
        )
        self.fc1.build(input_shape)
        self.act.build((*input_shape[:-1], hidden))
        self.fc2.build((*input_shape[:-1], hidden))

    def call(self, inputs):
        return self.fc2(self.act(self.fc1(inputs)))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mlp_ratio": self.mlp_ratio}


@keras.saving.register_keras_serializable(package=PACKAGE)
class BaselineBlock(keras.layers.Layer):
    """One block of the MetaFormer baselines::

        x = res_scale_1 * x + drop_path(mixer(norm1(x)))
        x = res_scale_2 * x + drop_path(mlp(norm2(x)))

    The residual scales (per channel, start value ``res_scale_init_value``) are
    there only when that value is given: the last two stages of every baseline have
    them (start 1.0), the first two do not, and none has LayerScale.

    Args:
        dim: channels in and out.
        token_mixer: one of :data:`MIXERS`.
        norm: one of :data:`NORMS`.
        mlp_ratio: the MLP's hidden channels per channel (4).
        res_scale_init_value: start value of the residual scales, or ``None``.
        drop_path_rate: stochastic-depth rate of this block (training only).
        seed: the random mixer's seed (``token_mixer="random"`` only).

    Example:
    >>> block = BaselineBlock(64, token_mixer="sepconv", norm="channel")
    >>> block(keras.ops.ones((2, 14, 14, 64))).shape
    (2, 14, 14, 64)
    """

    def __init__(
        self,
        dim,
        token_mixer="pooling",
        norm="mln",
        mlp_ratio=4.0,
        res_scale_init_value=None,
        drop_path_rate=0.0,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.token_mixer_kind = token_mixer
        self.norm_kind = norm
        self.mlp_ratio = float(mlp_ratio)
        self.res_scale_init_value = (
            None if res_scale_init_value is None else float(res_scale_init_value)
        )
        self.drop_path_rate = float(drop_path_rate)
        self.seed = int(seed)
        policy = self.dtype_policy
        self.norm1 = make_norm(norm, "norm1", policy)
        self.token_mixer = make_mixer(token_mixer, "token_mixer", policy, seed=self.seed)
        self.norm2 = make_norm(norm, "norm2", policy)
        self.mlp = StarMlp(mlp_ratio, name="mlp", dtype=policy)
        self.res_scale_1 = self.res_scale_2 = None
        if self.res_scale_init_value is not None:
            value = self.res_scale_init_value
            self.res_scale_1 = LayerScale(value, name="res_scale_1", dtype=policy)
            self.res_scale_2 = LayerScale(value, name="res_scale_2", dtype=policy)
        self.drop_path = DropPath(drop_path_rate, name="drop_path", dtype=policy)

    def build(self, input_shape):
        if input_shape[-1] != self.dim:
            raise ValueError(
                f"{self.name} expects {self.dim} channels, got input shape {input_shape}."
            )
        for layer in (
            self.norm1,
            self.token_mixer,
            self.norm2,
            self.mlp,
            self.res_scale_1,
            self.res_scale_2,
        ):
            if layer is not None:
                layer.build(input_shape)

    def call(self, inputs, training=None):
        x = inputs
        mixed = self.token_mixer(self.norm1(x, training=training))
        shortcut = x if self.res_scale_1 is None else self.res_scale_1(x)
        x = shortcut + self.drop_path(mixed, training=training)
        branch = self.mlp(self.norm2(x, training=training))
        shortcut = x if self.res_scale_2 is None else self.res_scale_2(x)
        return shortcut + self.drop_path(branch, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "token_mixer": self.token_mixer_kind,
            "norm": self.norm_kind,
            "mlp_ratio": self.mlp_ratio,
            "res_scale_init_value": self.res_scale_init_value,
            "drop_path_rate": self.drop_path_rate,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class MlpHead(keras.layers.Layer):
    """ConvFormer's and CAFormer's classifier: ``fc1`` (to ``mlp_ratio`` x
    channels), squared ReLU, LayerNorm, dropout, ``fc2`` (to the classes), with
    biases.

    The LayerNorm's epsilon is 1e-5 in the official code (``nn.LayerNorm``'s
    default) and 1e-6 in timm's port; the released weights were trained and
    evaluated with 1e-5, the default here.
    """

    def __init__(self, classes, mlp_ratio=4.0, dropout=0.0, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.classes = int(classes)
        self.mlp_ratio = float(mlp_ratio)
        self.dropout = float(dropout)
        self.epsilon = float(epsilon)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"head dropout must be in [0, 1), got {dropout!r}.")

    def build(self, input_shape):
        hidden = int(self.mlp_ratio * input_shape[-1])
        policy = self.dtype_policy
        self.fc1 = keras.layers.Dense(hidden, kernel_initializer=_INIT, name="fc1", dtype=policy)
        self.norm = keras.layers.LayerNormalization(epsilon=self.epsilon, name="norm", dtype=policy)
        self.head_dropout = keras.layers.Dropout(self.dropout, name="head_dropout", dtype=policy)
        self.fc2 = keras.layers.Dense(
            self.classes, kernel_initializer=_INIT, name="fc2", dtype=policy
        )
        self.fc1.build(input_shape)
        self.norm.build((*input_shape[:-1], hidden))
        self.fc2.build((*input_shape[:-1], hidden))

    def call(self, inputs, training=None):
        x = ops.relu(self.fc1(inputs))
        x = self.norm(x * x)
        return self.fc2(self.head_dropout(x, training=training))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.classes)

    def get_config(self):
        return {
            **super().get_config(),
            "classes": self.classes,
            "mlp_ratio": self.mlp_ratio,
            "dropout": self.dropout,
            "epsilon": self.epsilon,
        }
