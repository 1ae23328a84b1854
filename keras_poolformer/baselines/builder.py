"""The one builder of the MetaFormer baselines (PoolFormerV2, IdentityFormer,
RandFormer, ConvFormer, CAFormer); each family's module calls it with its table.

The graph follows ``MetaFormer`` of sail-sg/metaformer's ``metaformer_baselines.py``:

- stem: 7x7 convolution, stride 4, padding 2, then a channel norm;
- before stages 2-4: a channel norm, then a 3x3 convolution, stride 2, padding 1;
- four stages of :class:`~keras_poolformer.baselines.layers.BaselineBlock`;
- global average pooling, LayerNorm (epsilon 1e-6, with bias), and the head: a
  linear layer, or :class:`~keras_poolformer.baselines.layers.MlpHead`.

The stem and downsampling norms are the bias-free channel norm of every family; the
convolutions have biases. Stochastic depth grows linearly over all blocks.
"""

import os

import keras

from keras_poolformer import porting, pretrained, weights_file
from keras_poolformer.baselines import layout
from keras_poolformer.baselines.layers import MIXERS, NORMS, BaselineBlock, MlpHead, make_norm
from keras_poolformer.models import (
    DEFAULT_SIZE,
    _validate_input_shape,
    image_inputs,
    model_inputs,
    validate_top,
)

HEADS = ("linear", "mlp")
# Mixers whose weights fix the number of tokens, and so the input size.
FIXED_SIZE_MIXERS = ("random",)


def _check_stages(depths, dims, token_mixers, res_scale_init_values):
    """Validates the per-stage arguments; returns the four mixers and res-scale values."""
    depths, dims = tuple(depths), tuple(dims)
    if len(depths) != 4 or len(dims) != 4:
        raise ValueError(f"depths and dims need four stages each, got {depths!r} and {dims!r}.")
    if any(not isinstance(d, int) or d < 1 for d in (*depths, *dims)):
        raise ValueError(f"depths and dims must be positive integers, got {depths!r}, {dims!r}.")
    mixers = [token_mixers] * 4 if isinstance(token_mixers, str) else list(token_mixers)
    if len(mixers) != 4:
        raise ValueError(f"token_mixers needs one mixer per stage (four), got {token_mixers!r}.")
    for stage, (mixer, dim) in enumerate(zip(mixers, dims, strict=True)):
        if mixer not in MIXERS:
            raise ValueError(
                f"stage {stage}: unknown token mixer {mixer!r}; choose one of {', '.join(MIXERS)}."
            )
        if mixer == "attention" and dim % 32:
            raise ValueError(
                f"stage {stage}: attention has heads of 32 channels; the stage has {dim}."
            )
    scales = list(res_scale_init_values)
    if len(scales) != 4 or any(v is not None and not isinstance(v, (int, float)) for v in scales):
        raise ValueError(
            f"res_scale_init_values needs four numbers or None, got {res_scale_init_values!r}."
        )
    return mixers, scales


def MetaFormerBaseline(
    depths,
    dims,
    token_mixers="pooling",
    norm="mln",
    head="linear",
    mlp_ratio=4.0,
    res_scale_init_values=(None, None, 1.0, 1.0),
    head_dropout=0.0,
    head_norm_epsilon=1e-5,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    include_preprocessing=True,
    drop_path_rate=0.0,
    name="metaformer_baseline",
):
    """Builds a MetaFormer baseline of any size and mixers; the named models call this.

    Every argument is checked before anything is built; a bad one raises a
    ``ValueError`` that names it.

    Args:
        depths: blocks per stage, four integers.
        dims: channels per stage, four integers.
        token_mixers: one mixer for all stages or four, from ``"identity"``,
            ``"random"`` (a frozen random matrix: needs a fixed input size),
            ``"pooling"``, ``"sepconv"``, ``"attention"``.
        norm: the blocks' norms: ``"mln"`` (over height, width and channels;
            PoolFormerV2, IdentityFormer, RandFormer) or ``"channel"`` (over
            channels; ConvFormer, CAFormer). Both are bias-free, epsilon 1e-6.
        head: ``"linear"`` or ``"mlp"`` (ConvFormer's and CAFormer's MLP head).
        mlp_ratio: MLP hidden channels per channel.
        res_scale_init_values: per stage, the start value of the residual scales,
            or ``None`` for none.
        head_dropout: dropout inside the MLP head (training only).
        head_norm_epsilon: the MLP head's LayerNorm epsilon: 1e-5 as in the official
            code (timm's port uses 1e-6).
        include_top: whether to end with the classifier. Without it, ``pooling``
            decides the output: ``None``, the last feature map (stride 32);
            ``"avg"``, its average, normalised as before the head (the original's
            features); ``"max"``, its maximum.
        weights: ``None``, the path to a Keras ``.weights.h5`` file (checked against
            the built model before it is loaded), or the path to a checkpoint
            (``.pth``, ``.pth.tar``, ``.bin``, ``.safetensors``, ``.npz``, Hugging Face
            folder) in the official sail-sg/metaformer or the timm layout, read by the
            torch-free restricted reader and checked against the architecture before
            the model is built (``classes`` must be the checkpoint's with the top).
            ``"imagenet"`` and checkpoint tags are for the named constructors
            (``CAFormerS18`` ...), which know the release files.
        input_tensor, input_shape, classes, classifier_activation,
            include_preprocessing, name: as for :func:`keras_poolformer.PoolFormer`.
        drop_path_rate: stochastic-depth rate of the last block, growing linearly
            from 0 at the first (training only).

    Returns:
        A ``keras.Model``.

    Example:
    >>> model = keras_poolformer.baselines.MetaFormerBaseline(
    ...     depths=(3, 3, 9, 3), dims=(64, 128, 320, 512),
    ...     token_mixers=["sepconv", "sepconv", "attention", "attention"],
    ...     norm="channel", head="mlp")
    """
    # --- validate everything before building anything -------------------------
    mixers, scales = _check_stages(depths, dims, token_mixers, res_scale_init_values)
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}.")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}.")
    if not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
        raise ValueError(f"mlp_ratio must be a positive number, got {mlp_ratio!r}.")
    if not 0.0 <= head_dropout < 1.0:
        raise ValueError(f"head_dropout must be in [0, 1), got {head_dropout!r}.")
    if head_dropout and head != "mlp":
        raise ValueError("head_dropout applies to the MLP head only (head='mlp').")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}.")
    validate_top(include_top, pooling, classes, classifier_activation)
    release = weights if isinstance(weights, pretrained.Release) else None
    if weights is not None and release is None:
        _check_weights_argument(weights)
    fixed_size = any(m in FIXED_SIZE_MIXERS for m in mixers)
    if input_tensor is not None and input_shape is None:
        input_shape = tuple(input_tensor.shape[1:])
    if input_shape is None and fixed_size:
        input_shape = (DEFAULT_SIZE, DEFAULT_SIZE, 3)
    input_shape = _validate_input_shape(input_shape, include_top, include_preprocessing)
    if fixed_size and None in input_shape[:2]:
        raise ValueError(
            f"model '{name}' has a random token mixer, whose matrix fixes the number of "
            f"tokens; give input_shape a fixed size, got {input_shape}."
        )

    state = None  # an official-layout state dict, checked before anything is built
    if release is not None:
        state = pretrained.read_state(pretrained.fetch(release))
    elif weights is not None and not os.fspath(weights).endswith(weights_file.SUFFIX):
        state = _read_checkpoint(weights, name)
    if state is not None:
        config = {
            "depths": depths,
            "dims": dims,
            "token_mixers": mixers,
            "res_scale_init_values": scales,
            "mlp_ratio": mlp_ratio,
            "head": head,
        }
        _check_state(state, config, include_top, pooling, classes, input_shape, name, weights)

    # --- layers and graph --------------------------------------------------------
    inputs, x = image_inputs(input_tensor, input_shape, include_preprocessing)
    # Explicit padding as the official convs pad; "same" would pad asymmetrically.
    x = keras.layers.ZeroPadding2D(2, name="stem_pad")(x)
    x = keras.layers.Conv2D(dims[0], 7, strides=4, name="stem")(x)
    x = make_norm("channel", "stem_norm")(x)

    total = sum(depths)
    block_index = 0
    for s, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
        if s > 0:
            x = make_norm("channel", f"downsample{s}_norm")(x)
            x = keras.layers.ZeroPadding2D(1, name=f"downsample{s}_pad")(x)
            x = keras.layers.Conv2D(dim, 3, strides=2, name=f"downsample{s}")(x)
        for j in range(depth):
            x = BaselineBlock(
                dim,
                token_mixer=mixers[s],
                norm=norm,
                mlp_ratio=mlp_ratio,
                res_scale_init_value=scales[s],
                drop_path_rate=drop_path_rate * block_index / (total - 1) if total > 1 else 0.0,
                seed=block_index,  # every random mixer its own matrix
                name=f"stage{s}_block{j}",
            )(x)
            block_index += 1

    if include_top or pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.LayerNormalization(epsilon=1e-6, name="norm")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    if include_top:
        if head == "mlp":
            x = MlpHead(
                classes, mlp_ratio=4.0, dropout=head_dropout, epsilon=head_norm_epsilon, name="head"
            )(x)
        else:
            x = keras.layers.Dense(classes, name="head")(x)
        if classifier_activation is not None:
            x = keras.layers.Activation(classifier_activation, dtype="float32", name="predictions")(
                x
            )

    model = keras.Model(model_inputs(inputs, input_tensor), x, name=name)
    if state is not None:
        layout.load_state_dict(model, state)
    elif weights is not None:
        weights_file.check_against_model(weights, model)
        weights_file.load(model, weights)
    return model


def _check_weights_argument(weights):
    """A path argument must name an existing file (or Hugging Face folder)."""
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"weights must be None or a Keras '{weights_file.SUFFIX}' file or a checkpoint "
            f"path, got {weights!r}."
        )
    path = os.fspath(weights)
    if not os.path.exists(path):
        raise ValueError(
            f"weights must be None or a Keras '{weights_file.SUFFIX}' file or a checkpoint "
            f"(.pth, .pth.tar, .bin, .safetensors, .npz, or a Hugging Face folder) that "
            f"exists; '{path}' does not. ('imagenet' and checkpoint tags are taken by the "
            "named constructors, e.g. CAFormerS18.)"
        )


def _read_checkpoint(path, name):
    """Reads a checkpoint file in the official or timm baseline layout (torch-free,
    restricted reader) and returns it in the official layout."""
    from keras_poolformer.convert.layouts import baseline_to_official, detect_layout
    from keras_poolformer.convert.reader import CheckpointError, read_checkpoint

    state = read_checkpoint(path)
    try:
        return baseline_to_official(state)[0]
    except CheckpointError:
        try:
            other = f"it is a PoolFormer v1 checkpoint ({detect_layout(state)} layout)"
        except CheckpointError:
            other = "it is in no known layout"
        raise ValueError(
            f"checkpoint '{os.fspath(path)}' does not fit model '{name}': it holds no "
            f"MetaFormer baseline (official sail-sg/metaformer or timm layout); {other}."
        ) from None


def _check_state(state, config, include_top, pooling, classes, input_shape, name, source):
    """Raises ``ValueError`` unless ``state`` fits the model about to be built."""
    from keras_poolformer.convert.layouts import infer_baseline

    try:
        found = infer_baseline(state, hint=name)
    except ValueError:
        found = None
    size = input_shape[0] if input_shape[0] is not None else DEFAULT_SIZE
    expected = layout.official_shapes(config, classes if include_top else None, image_size=size)
    if not include_top and pooling == "avg":
        last = config["dims"][-1]
        expected.update({"norm.weight": (last,), "norm.bias": (last,)})
    if include_top and found and found["classes"] is None:
        raise ValueError(
            f"checkpoint {_describe(source)} has no classifier but model '{name}' has one "
            "(include_top=True); build with include_top=False."
        )
    if include_top and found and found["classes"] not in (None, classes):
        raise ValueError(
            f"checkpoint {_describe(source)} has a classifier for {found['classes']} classes, "
            f"model '{name}' one for {classes}; pass classes={found['classes']}, or "
            "include_top=False to load everything but the classifier."
        )
    hint = f"The checkpoint holds {found['name']}." if found else ""
    porting.check_state_dict(state, expected, f"model '{name}'", hint)


def _describe(source):
    if isinstance(source, pretrained.Release):
        return source.title
    return f"'{os.fspath(source)}'"
