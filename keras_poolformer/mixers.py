"""Token mixers, norms and activations of the MetaFormer family, each a small layer.

A MetaFormer block is ``x + mixer(norm(x))`` then ``x + mlp(norm(x))``; only the
token mixer (and the choice of norm and activation) tells its members apart.
The paper's ablations (Yu et al., CVPR 2022, Table 5) and hybrids (Table 6) use:

============== =================================================== ===============
``"identity"`` no mixing at all                                     no weights
``"random"``   a global random token-mixing matrix, frozen          N x N (frozen)
``"pooling"``  ``avg_pool(x) - x`` (PoolFormer), sizes 3/5/7/9      no weights
``"dwconv"``   depthwise convolution                                k x k x C + C
``"attention"`` multi-head self-attention, heads of 32 channels     4 C^2 + C
``"spatial_mlp"`` one token-mixing fully connected layer (SpatialFC) N x N
============== =================================================== ===============

(N tokens of C channels). The matrix mixers need a fixed number of tokens, so a model
with them needs a fixed input size. Mixers take and return channels-last maps
``(batch, height, width, channels)``; the weights of attention and spatial MLP are laid
out so that the official ``models/metaformer.py`` tensors map onto them one to one.

A token mixer is named by a string, or by a dict with ``"type"`` and its options
(``{"type": "pooling", "pool_size": 7}``, ``{"type": "attention", "head_dim": 64}``).
"""

import keras
import numpy as np
from keras import ops

from keras_poolformer.norms import ModifiedLayerNorm

PACKAGE = "keras_poolformer"
_INV_SQRT2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327  # the standard normal density at 0

# Every option a mixer takes, with its default.
MIXER_OPTIONS = {
    "identity": {},
    "random": {"seed": 0},
    "pooling": {"pool_size": 3},
    "dwconv": {"kernel_size": 3},
    "attention": {"head_dim": 32, "qkv_bias": False},
    "spatial_mlp": {},
}
# Mixers whose weights depend on the number of tokens.
FIXED_SIZE_MIXERS = ("random", "spatial_mlp")
NORMS = ("mln", "layernorm", "batchnorm")
ACTIVATIONS = ("gelu", "relu", "silu")

# The official code initialises every nn.Linear with a normal of std 0.02, truncated.
_LINEAR_INIT = {"class_name": "TruncatedNormal", "config": {"stddev": 0.02}}


def mixer_spec(spec, pool_size=3):
    """The full ``{"type": ..., **options}`` dict of a mixer named by ``spec``.

    Raises ``ValueError`` naming the problem for an unknown type or option, or an
    option value the mixer cannot take.
    """
    if isinstance(spec, str):
        spec = {"type": spec, **({"pool_size": pool_size} if spec == "pooling" else {})}
    if not isinstance(spec, dict) or spec.get("type") not in MIXER_OPTIONS:
        given = spec.get("type") if isinstance(spec, dict) else spec
        raise ValueError(
            f"unknown token mixer {given!r}; choose one of {', '.join(MIXER_OPTIONS)} "
            "(a name, or a dict with 'type' and its options)."
        )
    kind = spec["type"]
    unknown = set(spec) - {"type"} - set(MIXER_OPTIONS[kind])
    if unknown:
        raise ValueError(
            f"token mixer {kind!r} takes the options {sorted(MIXER_OPTIONS[kind]) or 'none'}; "
            f"got {sorted(unknown)}."
        )
    full = {"type": kind, **MIXER_OPTIONS[kind], **spec}
    for option in ("pool_size", "kernel_size"):
        size = full.get(option)
        if size is not None and (not isinstance(size, int) or size < 1 or size % 2 == 0):
            raise ValueError(f"{kind} {option} must be a positive odd integer, got {size!r}.")
    if kind == "attention" and (not isinstance(full["head_dim"], int) or full["head_dim"] < 1):
        raise ValueError(
            f"attention head_dim must be a positive integer, got {full['head_dim']!r}."
        )
    return full


def check_mixer_fits(spec, dim, stage):
    """Raises ``ValueError`` when a mixer cannot work on ``dim`` channels."""
    if spec["type"] == "attention" and dim % spec["head_dim"]:
        raise ValueError(
            f"stage {stage}: attention needs channels divisible by head_dim "
            f"{spec['head_dim']}; the stage has {dim}."
        )


def make_mixer(spec, name="token_mixer", dtype=None):
    """A new token-mixer layer from a full spec (see :func:`mixer_spec`)."""
    options = {k: v for k, v in spec.items() if k != "type"}
    kind = spec["type"]
    if kind == "identity":
        return keras.layers.Identity(name=name, dtype=dtype)
    cls = {
        "random": RandomMixing,
        "pooling": Pooling,
        "dwconv": DepthwiseConvMixer,
        "attention": Attention,
        "spatial_mlp": SpatialMlp,
    }[kind]
    return cls(**options, name=name, dtype=dtype)


def make_norm(kind, name, dtype=None, affine=True):
    """A new norm layer: ``"mln"`` (one-group GroupNorm over H, W, C), ``"layernorm"``
    (over channels at each position, as the official ``LayerNormChannel``), or
    ``"batchnorm"``. Epsilons and momentum are PyTorch's (1e-5; 0.1 = Keras' 0.9)."""
    if kind == "mln":
        return ModifiedLayerNorm(name=name, dtype=dtype, center=affine, scale=affine)
    if kind == "layernorm":
        return keras.layers.LayerNormalization(epsilon=1e-5, name=name, dtype=dtype)
    if kind == "batchnorm":
        return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name, dtype=dtype)
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}.")


def gelu_with_gradient(x):
    """The exact GELU of :func:`activate` with its gradient written out (TensorFlow),
    for training: ``dy * (Phi(x) + x * phi(x))`` from ``x`` alone, the one tensor it
    keeps for the backward pass. Autodiff's chain through ``0.5 * x * (1 + erf(x /
    sqrt 2))`` kept three more tensors of the MLP's hidden width, the widest of the
    block (see ``norms._normalise_with_gradient`` for the measured effect)."""
    import tensorflow as tf

    @tf.custom_gradient
    def gelu(x):
        def grad(dy):
            cdf = 0.5 * (1.0 + tf.math.erf(x * _INV_SQRT2))
            return dy * (cdf + x * _INV_SQRT_2PI * tf.exp(-0.5 * x * x))

        return 0.5 * x * (1.0 + tf.math.erf(x * _INV_SQRT2)), grad

    return gelu(x)


def activate(x, kind, training=None):
    """The MLP's activation: exact (erf) GELU as ``torch.nn.GELU()``, ReLU or SiLU;
    in training on TensorFlow the GELU is :func:`gelu_with_gradient`."""
    if kind == "gelu" and training and keras.backend.backend() == "tensorflow":
        return gelu_with_gradient(x)
    if kind == "gelu":
        # Written with erf: TensorFlow's own gelu kernel uses erfc, which ONNX
        # exporters cannot express; both agree to float32 precision.
        return 0.5 * x * (1.0 + ops.erf(x * _INV_SQRT2))
    if kind == "relu":
        return ops.relu(x)
    if kind == "silu":
        return ops.silu(x)
    raise ValueError(f"unknown activation {kind!r}; choose one of {', '.join(ACTIVATIONS)}.")


def _tokens(inputs):
    """``(batch, height, width, channels)`` -> ``(batch, height * width, channels)``."""
    shape = ops.shape(inputs)
    return ops.reshape(inputs, (shape[0], -1, shape[3])), shape


@keras.saving.register_keras_serializable(package=PACKAGE)
class Pooling(keras.layers.Layer):
    """PoolFormer's token mixer: ``avg_pool(x) - x``.

    Average pooling with stride 1 and "same" padding, where the padding is left
    out of the average (PyTorch's ``count_include_pad=False``). The input is
    subtracted because the block adds its own residual connection around the mixer.

    Args:
        pool_size: odd window size (3 in every PoolFormer variant). Even sizes
            would pad asymmetrically and are refused.
        depthwise_sum: compute the average as a depthwise convolution with a
            kernel of ones (the window's sum, zero padding) times the reciprocal
            of each position's count of valid cells, a constant map once the size
            is known. The same numbers to float32 rounding, as fast in TensorFlow
            graphs, and the form int8 TFLite runs inside its XNNPACK delegate: an
            int8 ``AVERAGE_POOL_2D`` falls back to a slow single-threaded kernel
            (S12 int8 ran at about 0.6 of the speed). XLA on CPU runs it at half
            the speed of ``avg_pool``, so it is the inference form only, which
            folded blocks (:func:`keras_poolformer.export.fold`) use.
    """

    def __init__(self, pool_size=3, depthwise_sum=False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(pool_size, int) or pool_size < 1 or pool_size % 2 == 0:
            raise ValueError(f"pool_size must be a positive odd integer, got {pool_size!r}.")
        self.pool_size = pool_size
        self.depthwise_sum = bool(depthwise_sum)

    def call(self, inputs):
        if not self.depthwise_sum:
            pooled = ops.average_pool(
                inputs, self.pool_size, strides=1, padding="same", data_format="channels_last"
            )
            return pooled - inputs
        k, dtype = self.pool_size, inputs.dtype
        kernel = ops.ones((k, k, inputs.shape[-1], 1), dtype)
        sums = ops.depthwise_conv(inputs, kernel, strides=1, padding="same")
        shape = ops.shape(inputs)
        cells = ops.outer(self._window_cells(shape[1]), self._window_cells(shape[2]))
        pooled = sums * ops.cast(1.0 / cells, dtype)[None, :, :, None]
        return pooled - inputs

    def _window_cells(self, length):
        """How many cells of the window lie inside ``0..length-1``, per position."""
        radius = self.pool_size // 2
        i = ops.arange(length)
        inside = ops.minimum(i + radius, length - 1) - ops.maximum(i - radius, 0) + 1
        return ops.cast(inside, "float32")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = {**super().get_config(), "pool_size": self.pool_size}
        if self.depthwise_sum:  # configs saved before the option existed stay the same
            config["depthwise_sum"] = True
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class DepthwiseConvMixer(keras.layers.Layer):
    """Depthwise convolution as token mixer (the paper's Table 5 ablation): each
    channel is mixed over a ``kernel_size`` window with its own filter and bias;
    "same" padding with zeros, as PyTorch's ``padding=kernel_size // 2``."""

    def __init__(self, kernel_size=3, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = int(kernel_size)
        self.conv = keras.layers.DepthwiseConv2D(
            self.kernel_size, padding="same", name="conv", dtype=self.dtype_policy
        )

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, inputs):
        return self.conv(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Attention(keras.layers.Layer):
    """Multi-head self-attention over all tokens of the map, as in the official hybrids.

    ``channels / head_dim`` heads; one ``qkv`` projection without bias (the official
    ``qkv_bias=False``), queries scaled by ``head_dim ** -0.5`` before the product,
    softmax in float32, then a ``proj`` projection with bias (without, for the
    MetaFormer baselines: ``proj_bias=False``). Works at any input size; position
    information, if any, comes from a :class:`PositionEmbedding`.
    """

    def __init__(self, head_dim=32, qkv_bias=False, proj_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.head_dim = int(head_dim)
        self.qkv_bias = bool(qkv_bias)
        self.proj_bias = bool(proj_bias)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim % self.head_dim:
            raise ValueError(f"{self.name}: {dim} channels are not divisible by {self.head_dim}.")
        self.num_heads = dim // self.head_dim
        policy = self.dtype_policy
        self.qkv = keras.layers.Dense(
            3 * dim,
            use_bias=self.qkv_bias,
            kernel_initializer=_LINEAR_INIT,
            name="qkv",
            dtype=policy,
        )
        self.proj = keras.layers.Dense(
            dim, use_bias=self.proj_bias, kernel_initializer=_LINEAR_INIT, name="proj", dtype=policy
        )
        self.qkv.build((None, None, dim))
        self.proj.build((None, None, dim))

    def call(self, inputs):
        x, shape = _tokens(inputs)
        heads, head_dim = self.num_heads, self.head_dim
        qkv = ops.reshape(self.qkv(x), (shape[0], -1, 3, heads, head_dim))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # (3, batch, heads, tokens, head_dim)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = ops.matmul(q * ops.cast(head_dim**-0.5, q.dtype), ops.transpose(k, (0, 1, 3, 2)))
        weights = ops.cast(ops.softmax(ops.cast(scores, "float32"), axis=-1), v.dtype)
        x = ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3))  # (batch, tokens, heads, hd)
        x = self.proj(ops.reshape(x, (shape[0], -1, heads * head_dim)))
        return ops.reshape(x, shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = {**super().get_config(), "head_dim": self.head_dim, "qkv_bias": self.qkv_bias}
        if not self.proj_bias:  # configs saved before the option existed stay the same
            config["proj_bias"] = False
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class SpatialMlp(keras.layers.Layer):
    """One fully connected layer across tokens (the official ``SpatialFc``).

    An ``N x N`` matrix without bias, shared by all channels, mixes the N tokens:
    ``y[m, c] = sum_n W[m, n] x[n, c]``. ``W`` is the official ``fc.weight`` as it is.
    The number of tokens is fixed when the layer is built.
    """

    def build(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        if height is None or width is None:
            raise ValueError(
                f"{self.name}: {type(self).__name__} mixes a fixed number of tokens; build the "
                "model with a fixed input_shape."
            )
        tokens = height * width
        self.matrix = self.add_weight(
            name="matrix", shape=(tokens, tokens), **self._matrix_options(tokens)
        )

    def _matrix_options(self, tokens):
        return {"initializer": keras.initializers.get(_LINEAR_INIT)}

    def call(self, inputs):
        x, shape = _tokens(inputs)
        x = ops.einsum("mn,bnc->bmc", ops.cast(self.matrix, x.dtype), x)
        return ops.reshape(x, shape)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package=PACKAGE)
class RandomMixing(SpatialMlp):
    """A global random matrix mixes the tokens and is never trained (Table 5's
    "global random matrix"): each row is a softmax of uniform noise, so every token
    becomes a fixed random convex combination of all tokens. The matrix is a
    non-trainable weight, so it is saved and reloaded with the model.

    Args:
        seed: the seed of the matrix (per layer; models built by this package
            give every block its own seed).
    """

    def __init__(self, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.seed = int(seed)

    def _matrix_options(self, tokens):
        noise = np.random.default_rng(self.seed).random((tokens, tokens))
        rows = np.exp(noise) / np.exp(noise).sum(axis=1, keepdims=True)
        return {"initializer": keras.initializers.Constant(rows), "trainable": False}

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package=PACKAGE)
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned position embedding (zeros at first) of the map's fixed size, as
    the official hybrids do before their first attention stage (``AddPositionEmb``;
    its ``pos_embed`` of shape ``(1, C, H, W)`` is this weight transposed)."""

    def build(self, input_shape):
        if None in tuple(input_shape[1:]):
            raise ValueError(
                f"{self.name}: a position embedding needs a fixed input_shape; got {input_shape}."
            )
        self.embedding = self.add_weight(
            name="embedding", shape=tuple(input_shape[1:]), initializer="zeros"
        )

    def call(self, inputs):
        return inputs + ops.cast(self.embedding, inputs.dtype)[None]

    def compute_output_shape(self, input_shape):
        return input_shape
