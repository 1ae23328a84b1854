"""The layers PoolFormer is made of, each small and serialisable.

Every layer here works on channels-last tensors ``(batch, height, width, channels)``
and matches its counterpart in the official PyTorch code (sail-sg/poolformer,
``models/poolformer.py``) to float32 precision. Where a detail is parity-critical,
the reason stands next to it.

Reference: Yu et al., "MetaFormer is Actually What You Need for Vision", CVPR 2022.
"""

import contextlib

import keras
from keras import ops

from keras_poolformer.mixers import (
    ACTIVATIONS,
    Pooling,
    activate,
    make_mixer,
    make_norm,
    mixer_spec,
)
from keras_poolformer.norms import ModifiedLayerNorm

PACKAGE = "keras_poolformer"
__all__ = [
    "ConvMlp",
    "DropPath",
    "ImageNormalization",
    "LayerScale",
    "MetaFormerBlock",
    "ModifiedLayerNorm",
    "PoolFormerBlock",
    "Pooling",
]

# Whether ConvMlp traces as two Conv2D layers (see mlp_as_convs) or as matrix products.
_MLP_AS_CONVS = [False]


@contextlib.contextmanager
def mlp_as_convs():
    """Within this block, :class:`ConvMlp` traces as its two 1x1 ``Conv2D`` layers.

    On TensorFlow it otherwise traces as matrix products, which TensorFlow's own
    runtime fuses with the GELU; the TFLite and ONNX exporters trace inside this block,
    because their runtimes run a 1x1 conv at least as fast and keep the layout of the
    pooling convs around it (onnxruntime: fewer layout transposes, LiteRT: the int8
    graph measured in benchmarks/results). Both forms compute the same function.
    """
    previous = _MLP_AS_CONVS[0]
    _MLP_AS_CONVS[0] = True
    try:
        yield
    finally:
        _MLP_AS_CONVS[0] = previous


# ImageNet statistics the official models were trained with (RGB, on pixels / 255).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConvMlp(keras.layers.Layer):
    """The channel MLP of a MetaFormer block as two 1x1 convolutions.

    ``fc1`` (dim -> hidden_dim), the activation (exact GELU as ``torch.nn.GELU()``
    by default; ``"relu"`` or ``"silu"`` for the paper's ablation), ``fc2``
    (hidden_dim -> dim). The official code's dropout is 0 for every variant and is
    left out.
    """

    def __init__(self, hidden_dim, out_dim, activation="gelu", **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)
        self.out_dim = int(out_dim)
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}."
            )
        self.activation = activation
        self.fc1 = keras.layers.Conv2D(self.hidden_dim, 1, name="fc1", dtype=self.dtype_policy)
        self.fc2 = keras.layers.Conv2D(self.out_dim, 1, name="fc2", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.fc2.build((*input_shape[:-1], self.hidden_dim))

    def call(self, inputs, training=None):
        if keras.backend.backend() != "tensorflow" or _MLP_AS_CONVS[0]:
            return self.fc2(activate(self.fc1(inputs), self.activation, training))
        return self._matmul_call(inputs, training)

    def _matmul_call(self, inputs, training=None):
        """The same function as two matrix products over all pixels, for TensorFlow.

        A 1x1 conv is a matrix product; written as ``MatMul`` + ``BiasAdd`` + the erf
        GELU, TensorFlow's oneDNN graph rewrite (on by default on CPUs with AVX-512
        VNNI or BF16, AVX-VNNI or AMX; ``TF_ENABLE_ONEDNN_OPTS=1`` elsewhere) fuses
        the three into one kernel, which it never does after ``Conv2D``. The GELU's
        five element-wise passes over the widest tensor of the block were a fifth of
        S12's inference time (docs/performance.md). The weights stay the convs' own.
        """
        import tensorflow as tf

        x = tf.reshape(inputs, [-1, inputs.shape[-1]])
        x = activate(self._linear(x, self.fc1), self.activation, training)
        x = self._linear(x, self.fc2)
        height, width = inputs.shape[1:3]
        if height is None or width is None:
            return tf.reshape(x, tf.concat([tf.shape(inputs)[:-1], [self.out_dim]], axis=0))
        # A constant shape where the spatial size is known: no shape ops in the graph.
        return tf.reshape(x, [-1, height, width, self.out_dim])

    @staticmethod
    def _linear(x, conv):
        """``x @ W + b`` with a 1x1 conv's weights, as MatMul and BiasAdd (the pattern
        the oneDNN rewrite looks for: a plain addition is not fused)."""
        import tensorflow as tf

        kernel = ops.cast(conv.kernel[0, 0], x.dtype)
        return tf.nn.bias_add(tf.matmul(x, kernel), ops.cast(conv.bias, x.dtype))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.out_dim)

    def get_config(self):
        config = {**super().get_config(), "hidden_dim": self.hidden_dim, "out_dim": self.out_dim}
        if self.activation != "gelu":  # configs saved before the choice existed stay valid
            config["activation"] = self.activation
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class LayerScale(keras.layers.Layer):
    """Multiplies each channel by a learned scale that starts at ``init_value``.

    Small initial values (1e-5 for S12/S24, 1e-6 for the deeper variants) make
    every residual branch start close to the identity (Touvron et al., CaiT).
    The weight is a vector of shape ``(channels,)``, as in the official checkpoints.
    """

    def __init__(self, init_value=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.init_value = float(init_value)

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale",
            shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.init_value),
        )

    def call(self, inputs):
        return inputs * ops.cast(self.scale, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "init_value": self.init_value}


@keras.saving.register_keras_serializable(package=PACKAGE)
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops a whole residual branch per sample while training.

    A kept sample's branch is scaled by ``1 / (1 - rate)`` so that the expected
    output is unchanged; at inference the layer is the identity.
    (Huang et al., "Deep Networks with Stochastic Depth", 2016.)
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath rate must be in [0, 1), got {rate!r}.")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if rate > 0 else None

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        mask = ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator))
        return inputs / ops.cast(keep, inputs.dtype) * ops.cast(mask, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MetaFormerBlock(keras.layers.Layer):
    """One MetaFormer block: any token mixer, any norm, any MLP activation.

    ::

        x = x + drop_path(layer_scale_1 * token_mixer(norm1(x)))
        x = x + drop_path(layer_scale_2 * mlp(norm2(x)))

    Args:
        dim: channels in and out.
        token_mixer: a mixer name or spec (see :mod:`keras_poolformer.mixers`):
            ``"identity"``, ``"random"``, ``"pooling"``, ``"dwconv"``,
            ``"attention"``, ``"spatial_mlp"``, or a dict with ``"type"`` and options.
        norm: ``"mln"`` (PoolFormer's), ``"layernorm"`` (over channels) or
            ``"batchnorm"``.
        activation: the MLP's, ``"gelu"``, ``"relu"`` or ``"silu"``.
        mlp_ratio: hidden channels of the MLP are ``int(dim * mlp_ratio)`` (4).
        layer_scale_init_value: start value of both LayerScale vectors.
        drop_path_rate: stochastic-depth rate of this block (training only).
        folded: the inference form made by :func:`keras_poolformer.export.fold`
            (pooling mixer and MLN only): norms without affine and no second
            LayerScale, their weights merged into the first LayerScale and the two
            1x1 convs; pooling as a depthwise sum (see :class:`Pooling`).

    Example:
    >>> block = MetaFormerBlock(64, token_mixer="attention", norm="layernorm")
    >>> block(keras.ops.ones((2, 14, 14, 64))).shape
    (2, 14, 14, 64)
    """

    def __init__(
        self,
        dim,
        token_mixer="pooling",
        norm="mln",
        activation="gelu",
        mlp_ratio=4.0,
        layer_scale_init_value=1e-5,
        drop_path_rate=0.0,
        folded=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.mixer = mixer_spec(token_mixer)
        self.norm = norm
        self.activation = activation
        self.folded = bool(folded)
        self.mlp_ratio = float(mlp_ratio)
        self.layer_scale_init_value = float(layer_scale_init_value)
        self.drop_path_rate = float(drop_path_rate)
        if self.folded and (self.mixer["type"] != "pooling" or norm != "mln"):
            raise ValueError("only blocks with a pooling mixer and MLN norms can be folded.")

        policy = self.dtype_policy
        affine = not self.folded
        self.norm1 = make_norm(norm, "norm1", policy, affine=affine)
        # A folded block's pooling is the depthwise-sum form, the one int8 TFLite keeps
        # inside XNNPACK; its spec (and so its config) stays the same.
        mixer = {**self.mixer, "depthwise_sum": True} if self.folded else self.mixer
        self.token_mixer = make_mixer(mixer, "token_mixer", policy)
        self.layer_scale_1 = LayerScale(layer_scale_init_value, name="layer_scale_1", dtype=policy)
        self.norm2 = make_norm(norm, "norm2", policy, affine=affine)
        hidden = int(self.dim * self.mlp_ratio)
        self.mlp = ConvMlp(hidden, self.dim, activation, name="mlp", dtype=policy)
        self.layer_scale_2 = None
        if not self.folded:
            self.layer_scale_2 = LayerScale(
                layer_scale_init_value, name="layer_scale_2", dtype=policy
            )
        self.drop_path = DropPath(drop_path_rate, name="drop_path", dtype=policy)

    def build(self, input_shape):
        if input_shape[-1] != self.dim:
            raise ValueError(
                f"{self.name} expects {self.dim} channels, got input shape {input_shape}."
            )
        for layer in (
            self.norm1,
            self.token_mixer,
            self.layer_scale_1,
            self.norm2,
            self.mlp,
            self.layer_scale_2,
        ):
            if layer is not None:
                layer.build(input_shape)

    def call(self, inputs, training=None):
        x = inputs
        mixed = self.token_mixer(self.norm1(x, training=training))
        x = x + self.drop_path(self.layer_scale_1(mixed), training=training)
        branch = self.mlp(self.norm2(x, training=training))
        if self.layer_scale_2 is not None:
            branch = self.layer_scale_2(branch)
        return x + self.drop_path(branch, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "token_mixer": self.mixer,
            "norm": self.norm,
            "activation": self.activation,
            "mlp_ratio": self.mlp_ratio,
            "layer_scale_init_value": self.layer_scale_init_value,
            "drop_path_rate": self.drop_path_rate,
            "folded": self.folded,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class PoolFormerBlock(MetaFormerBlock):
    """One PoolFormer block: a :class:`MetaFormerBlock` with pooling, MLN and GELU.

    Args:
        dim: channels in and out.
        pool_size: token-mixer window (3).
        mlp_ratio, layer_scale_init_value, drop_path_rate, folded: as for
            :class:`MetaFormerBlock`.
    """

    def __init__(
        self,
        dim,
        pool_size=3,
        mlp_ratio=4.0,
        layer_scale_init_value=1e-5,
        drop_path_rate=0.0,
        folded=False,
        **kwargs,
    ):
        super().__init__(
            dim,
            token_mixer={"type": "pooling", "pool_size": pool_size},
            norm="mln",
            activation="gelu",
            mlp_ratio=mlp_ratio,
            layer_scale_init_value=layer_scale_init_value,
            drop_path_rate=drop_path_rate,
            folded=folded,
            **kwargs,
        )
        self.pool_size = pool_size

    def get_config(self):
        config = super().get_config()
        for key in ("token_mixer", "norm", "activation"):
            del config[key]
        return {**config, "pool_size": self.pool_size}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ImageNormalization(keras.layers.Layer):
    """Maps RGB pixels in 0..255 to the inputs the network was trained on.

    ``(x / 255 - mean) / std`` per channel, computed in that order as the
    official (torchvision) transform does. It holds no weights, so it does not
    change the parameter count.
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean {self.mean} and std {self.std} differ in length.")

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype) / 255.0
        mean = ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)
        std = ops.convert_to_tensor(self.std, dtype=self.compute_dtype)
        return (x - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}
