"""PoolFormer models (S12, S24, S36, M36, M48) in the style of Keras Applications.

Reference:
    Yu et al., "MetaFormer is Actually What You Need for Vision", CVPR 2022.
    https://arxiv.org/abs/2111.11418 (official code: github.com/sail-sg/poolformer)

The graph follows the official ``PoolFormer`` module exactly: a 7x7/stride-4 stem,
four stages of PoolFormer blocks with 3x3/stride-2 downsampling convs between them,
the final norm on the last feature map, THEN global average pooling and the linear
classifier.
"""

import os

import keras

from keras_poolformer import mixers, poolformer_table, porting, pretrained, weights_file
from keras_poolformer.layers import (
    ImageNormalization,
    MetaFormerBlock,
    ModifiedLayerNorm,
    PoolFormerBlock,
)

# The five variants of the paper (Table 2), as the first releases exported them: a view
# of the registry (keras_poolformer/poolformer_table.py). `drop_path_rate` and
# `layer_scale_init_value` are the training recipe's; `crop_pct` is the evaluation
# crop the released weights were measured with; `params`, `macs` and `top1` are the
# paper's figures at 224x224.
MODEL_CONFIGS = poolformer_table.variant_configs()

DEFAULT_SIZE = 224
# Below this the stride-32 trunk has nothing left to pool over.
MIN_SIZE = 32
POOLING_CHOICES = (None, "avg", "max")


def _validate_input_shape(input_shape, include_top, include_preprocessing):
    """Returns the (height, width, channels) to build with, or raises ValueError."""
    if input_shape is None:
        return (DEFAULT_SIZE, DEFAULT_SIZE, 3) if include_top else (None, None, 3)
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ValueError(
            f"input_shape must be (height, width, channels), channels last; got {input_shape!r}."
        )
    height, width, channels = shape
    for what, size in (("height", height), ("width", width)):
        if size is not None and (not isinstance(size, int) or size < MIN_SIZE):
            raise ValueError(
                f"input_shape {input_shape!r}: {what} must be at least {MIN_SIZE} pixels "
                "(the network downsamples by 32)."
            )
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"input_shape {input_shape!r}: channels must be a positive integer.")
    if include_preprocessing and channels != 3:
        raise ValueError(
            f"input_shape {input_shape!r}: include_preprocessing=True normalises RGB images "
            f"and needs 3 channels, got {channels}."
        )
    return shape


def validate_top(include_top, pooling, classes, classifier_activation):
    """Checks the Keras Applications arguments about the model's end (``pooling``, and
    with the top ``classes`` and ``classifier_activation``); ``ValueError`` naming the
    bad one."""
    if pooling not in POOLING_CHOICES:
        raise ValueError(f"pooling must be one of {POOLING_CHOICES}, got {pooling!r}.")
    if include_top and (not isinstance(classes, int) or classes < 1):
        raise ValueError(f"classes must be a positive integer, got {classes!r}.")
    if include_top and classifier_activation is not None:
        try:
            keras.activations.get(classifier_activation)
        except ValueError:
            raise ValueError(
                f"classifier_activation {classifier_activation!r} is not a Keras activation."
            ) from None


def image_inputs(input_tensor, input_shape, include_preprocessing):
    """The model's image input (from ``input_tensor`` when given) and, after the
    optional in-model normalisation, the tensor the stem starts from."""
    if input_tensor is None:
        inputs = keras.Input(shape=input_shape, name="images")
    elif keras.backend.is_keras_tensor(input_tensor):
        inputs = input_tensor
    else:
        inputs = keras.Input(tensor=input_tensor, shape=input_shape, name="images")
    x = ImageNormalization(name="preprocessing")(inputs) if include_preprocessing else inputs
    return inputs, x


def model_inputs(inputs, input_tensor):
    """What ``keras.Model`` takes as inputs: the sources of ``input_tensor`` when one
    was given (Keras Applications convention), else ``inputs``."""
    if input_tensor is None:
        return inputs
    sources = keras.utils.get_source_inputs(input_tensor)
    return sources[0] if len(sources) == 1 else sources


def PoolFormer(
    depths,
    dims,
    mlp_ratio=4.0,
    pool_size=3,
    layer_scale_init_value=1e-5,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    include_preprocessing=True,
    drop_path_rate=0.0,
    name="poolformer",
):
    """Builds a PoolFormer of any size; the named variants call this.

    A PoolFormer is the :func:`MetaFormer` with pooling in every stage, MLN norms
    and GELU. Every argument is checked before anything is built; a bad one raises
    a ``ValueError`` that names it.

    Args:
        depths: blocks per stage, four integers.
        dims: channels per stage, four integers.
        mlp_ratio: MLP hidden channels per input channel.
        pool_size: token-mixer pooling window (odd).
        layer_scale_init_value: start value of the LayerScale vectors.
        include_top: whether to end with the classifier. Without it the model
            ends with the final norm on the last feature map (stride 32), then
            ``pooling``.
        weights: ``"imagenet"`` (the official ImageNet-1k weights of the named
            variants, downloaded and converted on first use, then cached),
            ``None`` (random initialisation), the path to a Keras ``.weights.h5``
            file, or the path to a PyTorch checkpoint (``.pth``, ``.pth.tar``,
            ``.bin``, ``.safetensors``, ``.npz`` or a Hugging Face model folder) in
            the official, timm or transformers layout. Every file is checked
            against the architecture before the model is built. With
            ``include_top=False`` everything but the classifier is loaded.
        input_tensor: optional Keras tensor to use as image input.
        input_shape: ``(height, width, channels)``; sizes of at least 32 or
            ``None``. Defaults to ``(224, 224, 3)`` with the top and
            ``(None, None, 3)`` without it.
        pooling: with ``include_top=False``: ``None`` (4D feature map), ``"avg"``
            or ``"max"`` (global pooling to a vector).
        classes: number of classes of the classifier.
        classifier_activation: activation of the top layer (``"softmax"``,
            ``None`` for logits, or any Keras activation); computed in float32.
        include_preprocessing: if True the model takes RGB pixels in 0..255 and
            normalises them with the ImageNet mean and std inside; if False it
            takes already-normalised inputs.
        drop_path_rate: stochastic-depth rate of the last block, growing
            linearly from 0 at the first (training only).
        name: model name.

    Returns:
        A ``keras.Model``.
    """
    return MetaFormer(
        depths,
        dims,
        token_mixers={"type": "pooling", "pool_size": pool_size},
        norm="mln",
        activation="gelu",
        mlp_ratio=mlp_ratio,
        layer_scale_init_value=layer_scale_init_value,
        include_top=include_top,
        weights=weights,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing,
        drop_path_rate=drop_path_rate,
        name=name,
    )


def _validate_metaformer(token_mixers, norm, activation, position_embeddings, mlp_ratio, dims):
    """Checks the MetaFormer-specific arguments; returns the four mixer specs."""
    if isinstance(token_mixers, (str, dict)):
        token_mixers = [token_mixers] * 4
    token_mixers = list(token_mixers)
    if len(token_mixers) != 4:
        raise ValueError(f"token_mixers needs one mixer per stage (four), got {token_mixers!r}.")
    specs = [mixers.mixer_spec(m) for m in token_mixers]
    for stage, (spec, dim) in enumerate(zip(specs, dims, strict=True)):
        mixers.check_mixer_fits(spec, dim, stage)
    if norm not in mixers.NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(mixers.NORMS)}.")
    if activation not in mixers.ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; choose one of {', '.join(mixers.ACTIVATIONS)}."
        )
    if any(s not in (0, 1, 2, 3) for s in position_embeddings):
        raise ValueError(
            f"position_embeddings lists stage indices 0-3; got {tuple(position_embeddings)!r}."
        )
    if not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
        raise ValueError(f"mlp_ratio must be a positive number, got {mlp_ratio!r}.")
    return specs


def MetaFormer(
    depths,
    dims,
    token_mixers="pooling",
    norm="mln",
    activation="gelu",
    mlp_ratio=4.0,
    position_embeddings=(),
    layer_scale_init_value=1e-5,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    include_preprocessing=True,
    drop_path_rate=0.0,
    name="metaformer",
):
    """Builds a MetaFormer: PoolFormer's skeleton with any token mixer per stage.

    The graph is the official ``MetaFormer`` (``models/metaformer.py`` of
    sail-sg/poolformer): a 7x7/stride-4 stem, four stages of MetaFormer blocks with
    3x3/stride-2 downsampling between them, optional learned position embeddings
    added before a stage's first block, the final norm on the last map, global
    average pooling and the classifier. PoolFormer is
    ``MetaFormer(token_mixers="pooling", norm="mln", activation="gelu")``.

    Every argument is checked before anything is built; a bad one raises a
    ``ValueError`` that names it.

    Args:
        depths: blocks per stage, four integers.
        dims: channels per stage, four integers.
        token_mixers: one mixer for all stages, or four (one per stage): names
            ``"identity"``, ``"random"``, ``"pooling"``, ``"dwconv"``,
            ``"attention"``, ``"spatial_mlp"``, or dicts with ``"type"`` and options
            (``{"type": "pooling", "pool_size": 7}``); see
            :mod:`keras_poolformer.mixers`. ``"random"`` and ``"spatial_mlp"`` need a
            fixed input size.
        norm: every norm of the model: ``"mln"`` (PoolFormer's one-group
            GroupNorm), ``"layernorm"`` (over channels) or ``"batchnorm"``.
        activation: of every MLP: ``"gelu"``, ``"relu"`` or ``"silu"``.
        mlp_ratio: MLP hidden channels per input channel.
        position_embeddings: indices of the stages that add a learned position
            embedding before their first block (the official hybrids add one
            before their first attention stage); needs a fixed input size.
        layer_scale_init_value: start value of the LayerScale vectors.
        include_top, input_tensor, pooling, classes, classifier_activation,
            include_preprocessing, drop_path_rate, name: as for :func:`PoolFormer`.
        weights: ``None`` or a Keras ``.weights.h5`` file (checked against the
            model before loading); a PoolFormer configuration and the configurations
            of the official hybrids (:data:`HYBRIDS`) also take ``"imagenet"`` and
            PyTorch checkpoints in their official layout, checked before building.
        input_shape: ``(height, width, channels)``; defaults to ``(224, 224, 3)``
            with the top or a fixed-size mixer, else ``(None, None, 3)``.

    Returns:
        A ``keras.Model``.

    Example:
    >>> model = keras_poolformer.MetaFormer(
    ...     depths=(2, 2, 6, 2), dims=(64, 128, 320, 512),
    ...     token_mixers=["pooling", "pooling", "attention", "attention"],
    ...     norm="layernorm", position_embeddings=[2])
    """
    # --- validate everything before building anything -------------------------
    if len(depths) != 4 or len(dims) != 4:
        raise ValueError(f"depths and dims need four stages each, got {depths!r} and {dims!r}.")
    if any(int(d) != d or d < 1 for d in (*depths, *dims)):
        raise ValueError(f"depths and dims must be positive integers, got {depths!r}, {dims!r}.")
    position_embeddings = tuple(position_embeddings or ())
    specs = _validate_metaformer(
        token_mixers, norm, activation, position_embeddings, mlp_ratio, dims
    )
    is_poolformer = (
        all(spec["type"] == "pooling" for spec in specs)
        and len({spec["pool_size"] for spec in specs}) == 1
        and norm == "mln"
        and activation == "gelu"
        and not position_embeddings
    )
    pool_size = specs[0].get("pool_size")
    fixed_size = bool(position_embeddings) or any(
        spec["type"] in mixers.FIXED_SIZE_MIXERS for spec in specs
    )
    validate_top(include_top, pooling, classes, classifier_activation)
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}.")
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"weights must be 'imagenet', None or a file path, got {weights!r}.")
    hybrid = (
        None
        if is_poolformer
        else _hybrid_key(
            depths,
            dims,
            specs,
            norm,
            activation,
            position_embeddings,
            mlp_ratio,
            layer_scale_init_value,
        )
    )
    if weights is not None and not is_poolformer and hybrid is None:
        if not os.fspath(weights).endswith(weights_file.SUFFIX):
            raise ValueError(
                f"model '{name}' is not a PoolFormer; it loads only Keras "
                f"'{weights_file.SUFFIX}' files (no ImageNet or PyTorch weights), got {weights!r}."
            )
        if not os.path.isfile(weights):
            raise ValueError(f"weights file '{weights}' does not exist.")
    if hybrid is not None and weights not in (None, "imagenet") and not os.path.exists(weights):
        raise ValueError(f"weights file '{weights}' does not exist.")
    if weights == "imagenet" and hybrid is not None:
        if include_top and classes != 1000:
            raise ValueError(
                f"weights='imagenet' with include_top=True needs classes=1000 (the ImageNet "
                f"classifier), got classes={classes}. Use include_top=False for a new head."
            )
    elif weights == "imagenet":
        if include_top and classes != 1000:
            raise ValueError(
                f"weights='imagenet' with include_top=True needs classes=1000 (the ImageNet "
                f"classifier), got classes={classes}. Use include_top=False for a new head."
            )
        variant = _named_variant(depths, dims, mlp_ratio, pool_size)
        if variant is None:
            raise ValueError(
                "ImageNet weights exist only for the named variants "
                f"({', '.join(k.upper() for k in MODEL_CONFIGS)}); this architecture is none."
            )
    if input_tensor is not None and input_shape is None:
        input_shape = tuple(input_tensor.shape[1:])
    if input_shape is None and fixed_size:
        input_shape = (DEFAULT_SIZE, DEFAULT_SIZE, 3)
    input_shape = _validate_input_shape(input_shape, include_top, include_preprocessing)
    if weights == "imagenet" and input_shape[-1] != 3:
        raise ValueError(f"ImageNet weights take RGB images; input_shape {input_shape} is not.")
    if fixed_size and None in input_shape[:2]:
        raise ValueError(
            f"model '{name}' has position embeddings or a random / spatial-MLP mixer, which "
            f"need a fixed number of tokens; give input_shape a fixed size, got {input_shape}."
        )

    state = None  # an official-layout state dict, when weights is a PyTorch checkpoint
    if weights is not None and hybrid is not None:
        state = _hybrid_state(hybrid, weights, include_top, classes, input_shape, name)
    if weights is not None and is_poolformer:
        expected = porting.official_shapes(
            depths, dims, mlp_ratio, classes if include_top else None, input_shape[-1]
        )
        if weights == "imagenet":
            weights = pretrained.imagenet_weights(variant)  # verified official-layout .npz
        if os.fspath(weights).endswith(weights_file.SUFFIX):
            weights_file.check(weights, expected, model_name=name)
        else:
            state = _read_checkpoint(weights, expected, name)

    # --- layers and graph --------------------------------------------------------
    inputs, x = image_inputs(input_tensor, input_shape, include_preprocessing)
    # Keras convs have no explicit padding; "same" pads asymmetrically at stride
    # 4 and 2, so pad exactly as the official convs do and convolve "valid".
    x = keras.layers.ZeroPadding2D(2, name="stem_pad")(x)
    x = keras.layers.Conv2D(dims[0], 7, strides=4, name="stem")(x)

    # Stochastic depth grows linearly over all blocks: block k of N gets rate * k / (N - 1).
    total = sum(depths)
    block_index = 0
    for s, (depth, dim, spec) in enumerate(zip(depths, dims, specs, strict=True)):
        if s > 0:
            x = keras.layers.ZeroPadding2D(1, name=f"downsample{s}_pad")(x)
            x = keras.layers.Conv2D(dim, 3, strides=2, name=f"downsample{s}")(x)
        if s in position_embeddings:
            x = mixers.PositionEmbedding(name=f"stage{s}_pos_embed")(x)
        for j in range(depth):
            rate = drop_path_rate * block_index / (total - 1) if total > 1 else 0.0
            common = {
                "mlp_ratio": mlp_ratio,
                "layer_scale_init_value": layer_scale_init_value,
                "drop_path_rate": rate,
                "name": f"stage{s}_block{j}",
            }
            if is_poolformer:
                block = PoolFormerBlock(dim, pool_size=pool_size, **common)
            else:
                if spec["type"] == "random":  # every block its own frozen matrix
                    spec = {**spec, "seed": spec["seed"] + block_index}
                block = MetaFormerBlock(
                    dim, token_mixer=spec, norm=norm, activation=activation, **common
                )
            x = block(x)
            block_index += 1

    # The original normalises the 7x7 map and pools after (timm later moved this
    # norm after the pooling; that is a different model).
    x = mixers.make_norm(norm, "norm")(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(classes, name="head")(x)
        if classifier_activation is not None:
            x = keras.layers.Activation(classifier_activation, dtype="float32", name="predictions")(
                x
            )
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)

    model = keras.Model(model_inputs(inputs, input_tensor), x, name=name)

    if state is not None and hybrid is not None:
        from keras_poolformer.convert import hybrids

        hybrids.load_state_dict(model, hybrid, state)
    elif state is not None:
        porting.load_state_dict(model, state)
    elif weights is not None and is_poolformer:
        weights_file.load(model, weights)
    elif weights is not None:
        weights_file.check_against_model(weights, model)
        weights_file.load(model, weights)
    return model


def _hybrid_key(depths, dims, specs, norm, activation, position_embeddings, mlp_ratio, scale):
    """The key of the official hybrid (``"pppa_s12"``...) with this architecture, or
    ``None``: only they have an official checkpoint layout among the MetaFormers."""
    s12 = MODEL_CONFIGS["s12"]
    if (
        tuple(depths) != tuple(s12["depths"])
        or tuple(dims) != tuple(s12["dims"])
        or mlp_ratio != 4
        or activation != "gelu"
        or scale != s12["layer_scale_init_value"]
    ):
        return None
    for key, config in HYBRID_CONFIGS.items():
        defaults = [mixers.mixer_spec(m) for m in config["token_mixers"]]
        if (
            list(specs) == defaults
            and norm == config["norm"]
            and tuple(position_embeddings) == tuple(config["position_embeddings"])
        ):
            return key
    return None


def _hybrid_state(key, weights, include_top, classes, input_shape, name):
    """The official-layout state dict of hybrid ``key`` from ``weights`` ("imagenet", a
    ``.weights.h5`` file: ``None``, or a checkpoint), checked against the model about to
    be built."""
    from keras_poolformer.convert import hybrids
    from keras_poolformer.convert.reader import read_checkpoint

    if weights == "imagenet":
        state = pretrained.read_state(pretrained.fetch(pretrained.hybrid_release(key)))
        source = f"the ImageNet checkpoint of {hybrids.NAMES[key]}"
    elif os.fspath(weights).endswith(weights_file.SUFFIX):
        return None  # checked against the built model, then loaded by Keras
    else:
        state = read_checkpoint(weights)
        source = f"checkpoint '{os.fspath(weights)}'"
    found = hybrids.classes_of(state)
    if include_top and found is not None and found != classes:
        raise ValueError(
            f"{source} has a classifier for {found} classes, model '{name}' one for "
            f"{classes}; pass classes={found}, or include_top=False."
        )
    expected = hybrids.official_shapes(
        key, classes if include_top else None, image_size=input_shape[0]
    )
    porting.check_state_dict(state, expected, f"model '{name}' ({hybrids.NAMES[key]})")
    return state


def _named_variant(depths, dims, mlp_ratio, pool_size):
    """The key of the named variant with this architecture, or ``None``."""
    for key, config in MODEL_CONFIGS.items():
        if (
            tuple(config["depths"]) == tuple(depths)
            and tuple(config["dims"]) == tuple(dims)
            and mlp_ratio == 4
            and pool_size == 3
        ):
            return key
    return None


def _read_checkpoint(path, expected, name):
    """Reads a PyTorch / safetensors / npz checkpoint and checks it fits, before building."""
    from keras_poolformer.convert.layouts import describe, infer_architecture, load_official

    state, layout = load_official(path)
    try:
        hint = f"The checkpoint ({layout} layout) holds {describe(infer_architecture(state))}."
    except ValueError:
        hint = f"The checkpoint is in the {layout} layout."
    porting.check_state_dict(state, expected, f"model '{name}'", hint)
    return state


def stage_output_layers(model):
    """The last block of each stage of ``model``, in order (strides 4, 8, 16, 32)."""
    last = {}
    for layer in model.layers:
        m = porting._BLOCK_NAME.match(layer.name)
        if m:
            stage, block = int(m[1]), int(m[2])
            if block >= last.get(stage, (-1, None))[0]:
                last[stage] = (block, layer)
    if sorted(last) != [0, 1, 2, 3]:
        raise ValueError(f"Model '{model.name}' is not a PoolFormer built by this package.")
    return [last[stage][1] for stage in range(4)]


def feature_extractor(model, out_norms=False, name=None):
    """A model giving the four stage outputs of a PoolFormer, for dense prediction.

    The outputs are the feature maps after the last block of each stage, at
    strides 4, 8, 16 and 32 of the input, with ``dims`` channels (for S12: 64,
    128, 320, 512). They share their layers (and weights) with ``model``.

    With ``out_norms=True`` each output passes through a new MLN, as in the
    official detection and segmentation backbones (``fork_feat=True``, whose
    checkpoints call them ``norm0``, ``norm2``, ``norm4``, ``norm6``); those norms
    start as the identity (weight 1, bias 0) and are trained with the task, or
    loaded from such a checkpoint with :func:`keras_poolformer.porting.load_state_dict`.

    Args:
        model: a PoolFormer built by this package, with or without top.
        out_norms: add the per-output norms.
        name: name of the new model (default: ``model.name + "_features"``).

    Returns:
        A ``keras.Model`` with the same input and a list of four outputs.

    Example:
    >>> backbone = keras_poolformer.PoolFormerS12(include_top=False, input_shape=(512, 512, 3))
    >>> features = keras_poolformer.feature_extractor(backbone, out_norms=True)
    >>> [tuple(t.shape) for t in features.outputs]
    [(None, 128, 128, 64), (None, 64, 64, 128), (None, 32, 32, 320), (None, 16, 16, 512)]
    """
    outputs = [layer.output for layer in stage_output_layers(model)]
    if out_norms:
        outputs = [ModifiedLayerNorm(name=f"out_norm{s}")(x) for s, x in enumerate(outputs)]
    return keras.Model(model.input, outputs, name=name or f"{model.name}_features")


_DOCSTRING = """Instantiates the PoolFormer-{upper} model ({params:,} parameters, {macs} MACs).

Reference: Yu et al., "MetaFormer is Actually What You Need for Vision" (CVPR 2022).
Paper top-1 on ImageNet-1k at 224x224: {top1}%. Evaluation crop: {crop_pct}.

With ``include_preprocessing=True`` (the default) the model takes RGB images with
pixels in 0..255 and normalises them inside, so :func:`preprocess_input` is a
pass-through.

Args:
    include_top: whether to include the final classifier (norm, average pool, dense).
    weights: ``"imagenet"`` (the official weights, downloaded and converted on first
        use, then cached), ``None`` (random initialisation), or the path to a
        ``.weights.h5`` file or a PyTorch checkpoint of this variant.
    input_tensor: optional Keras tensor to use as image input.
    input_shape: ``(height, width, 3)``, each size at least 32 or ``None``.
    pooling: with ``include_top=False``: ``None``, ``"avg"`` or ``"max"``.
    classes: number of classes.
    classifier_activation: activation of the top layer; ``None`` returns logits.
    include_preprocessing: normalise 0..255 RGB inputs inside the model.
    drop_path_rate: stochastic depth for training (the paper used {drop_path}).
    name: model name.

Returns:
    A ``keras.Model``.

Example:
>>> model = keras_poolformer.PoolFormer{upper}(weights="imagenet")
>>> probs = model.predict(keras_poolformer.load_image("cat.jpg", crop_pct={crop_pct})[None])
>>> keras_poolformer.decode_predictions(probs)
"""


# The official MetaFormer models of sail-sg/poolformer's ``models/metaformer.py``, all of
# S12's size: a view of the registry (keras_poolformer/poolformer_table.py).
HYBRID_CONFIGS = poolformer_table.hybrid_configs()
_MIXER_WORDS = {
    "identity": "Identity",
    "pooling": "Pool",
    "attention": "Attention",
    "spatial_mlp": "SpatialFC",
}

_HYBRID_DOCSTRING = """The official MetaFormer {title}, S12 size ({params:,} parameters).

Token mixers per stage: [{mixers}]; norm: {norm}{pos}. Built like
``metaformer_{key}`` of sail-sg/poolformer's ``models/metaformer.py``; see
:func:`keras_poolformer.MetaFormer`. Its training recipe is the ``{key}`` config of
``keras_poolformer.training`` (batch 1024, peak lr 1e-3).

``weights``: ``None`` (the default: random initialisation), ``"imagenet"`` (the
official ImageNet-1k checkpoint of sail-sg/poolformer's release v1.0,
``{filename}``, downloaded, converted and cached on first use, as PoolFormer's), a
Keras ``.weights.h5`` file, or a checkpoint in the official ``models/metaformer.py``
layout (``.pth.tar``, ``.pth``, ``.safetensors``, ``.npz``...), checked before the
model is built. {fixed}

Args:
    include_top, weights, input_tensor, input_shape, pooling, classes,
    classifier_activation, include_preprocessing, drop_path_rate, name: as for
    :func:`keras_poolformer.PoolFormerS12`.

Returns:
    A ``keras.Model``.

Example:
>>> model = keras_poolformer.{name}(classes=10, classifier_activation=None)
"""


def _docstring(spec):
    """The constructor docstring of a spec of :mod:`keras_poolformer.poolformer_table`."""
    key, config, checkpoint = poolformer_table.short_key(spec), spec.config, spec.checkpoints[0]
    if spec.family == "poolformer":
        return _DOCSTRING.format(
            upper=key.upper(),
            params=spec.params,
            macs=f"{spec.macs / 1e9:.1f}G",
            top1=spec.top1,
            crop_pct=checkpoint.crop_pct,
            drop_path=spec.recipe["drop_path_rate"],
        )
    fixed = any(m in mixers.FIXED_SIZE_MIXERS for m in config["token_mixers"])
    return _HYBRID_DOCSTRING.format(
        title="identity model" if key == "id_s12" else f"hybrid {key[:4].upper()}",
        params=spec.params,
        mixers=", ".join(_MIXER_WORDS[m] for m in config["token_mixers"]),
        norm={"mln": "MLN", "layernorm": "LayerNorm"}[config["norm"]],
        pos=(
            ", a learned position embedding before the first attention stage"
            if config["position_embeddings"]
            else ""
        ),
        key=key,
        name=spec.constructor,
        filename=checkpoint.url.rsplit("/", 1)[-1],
        fixed=(
            "Its position embedding or spatial MLP fixes the input size (224x224 by default)."
            if fixed or config["position_embeddings"]
            else "It takes any input size of at least 32 pixels."
        ),
    )


def _named(spec):
    """The public constructor of a registered PoolFormer v1 variant or v1 MetaFormer
    (``PoolFormerS12``, ``MetaFormerPPPAS12``...): :func:`PoolFormer` or
    :func:`MetaFormer` with the spec's ``config``. The variants default to the
    ImageNet weights, the MetaFormers to none."""
    builder = PoolFormer if spec.family == "poolformer" else MetaFormer
    default_weights = "imagenet" if spec.family == "poolformer" else None

    def constructor(
        include_top=True,
        weights=default_weights,
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=1000,
        classifier_activation="softmax",
        include_preprocessing=True,
        drop_path_rate=0.0,
        name=spec.name,
    ):
        return builder(
            **spec.config,
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            include_preprocessing=include_preprocessing,
            drop_path_rate=drop_path_rate,
            name=name,
        )

    constructor.__name__ = constructor.__qualname__ = spec.constructor
    constructor.__doc__ = _docstring(spec)
    return constructor


VARIANTS = {key: _named(spec) for key, spec in poolformer_table.VARIANT_SPECS.items()}
HYBRIDS = {key: _named(spec) for key, spec in poolformer_table.HYBRID_SPECS.items()}

PoolFormerS12 = VARIANTS["s12"]
PoolFormerS24 = VARIANTS["s24"]
PoolFormerS36 = VARIANTS["s36"]
PoolFormerM36 = VARIANTS["m36"]
PoolFormerM48 = VARIANTS["m48"]

MetaFormerIdS12 = HYBRIDS["id_s12"]
MetaFormerPPPAS12 = HYBRIDS["pppa_s12"]
MetaFormerPPAAS12 = HYBRIDS["ppaa_s12"]
MetaFormerPPPFS12 = HYBRIDS["pppf_s12"]
MetaFormerPPFFS12 = HYBRIDS["ppff_s12"]
