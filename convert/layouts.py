"""The three key layouts PoolFormer checkpoints come in, renamed to the official one.

- ``official``: sail-sg/poolformer release files (``patch_embed.proj.weight``...),
  described in :mod:`keras_poolformer.porting`.
- ``timm``: timm's MetaFormer and the ``timm/poolformer_*.sail_in1k`` files on the
  Hugging Face hub (``stem.conv.weight``, ``stages.2.blocks.0.layer_scale1.scale``
  shaped (C, 1, 1), ``head.norm.*``, ``head.fc.*``).
- ``transformers``: ``PoolFormerForImageClassification`` and the ``sail/poolformer_*``
  hub repositories (``poolformer.encoder.patch_embeddings.0.projection.weight``...).

Every function here is pure: dicts of numpy arrays in, dicts out.
"""

import os
import re

from keras_poolformer.convert.reader import CheckpointError, read_checkpoint

# (pattern, replacement) applied in order to every key; the first that matches wins.
_TIMM_RULES = [
    (r"^stem\.conv\.", "patch_embed.proj."),
    (r"^stages\.([123])\.downsample\.conv\.", lambda m: f"network.{2 * int(m[1]) - 1}.proj."),
    (
        r"^stages\.(\d+)\.blocks\.(\d+)\.layer_scale([12])\.scale$",
        lambda m: f"network.{2 * int(m[1])}.{m[2]}.layer_scale_{m[3]}",
    ),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.", lambda m: f"network.{2 * int(m[1])}.{m[2]}."),
    (r"^head\.norm\.", "norm."),
    (r"^head\.fc\.", "head."),
]

_TRANSFORMERS_RULES = [
    (r"^encoder\.patch_embeddings\.0\.projection\.", "patch_embed.proj."),
    (
        r"^encoder\.patch_embeddings\.([123])\.projection\.",
        lambda m: f"network.{2 * int(m[1]) - 1}.proj.",
    ),
    (
        r"^encoder\.block\.(\d+)\.(\d+)\.(before_norm|after_norm|output\.conv1|output\.conv2)\.",
        lambda m: (
            f"network.{2 * int(m[1])}.{m[2]}."
            + {
                "before_norm": "norm1.",
                "after_norm": "norm2.",
                "output.conv1": "mlp.fc1.",
                "output.conv2": "mlp.fc2.",
            }[m[3]]
        ),
    ),
    (r"^encoder\.block\.(\d+)\.(\d+)\.", lambda m: f"network.{2 * int(m[1])}.{m[2]}."),
    (r"^classifier\.", "head."),
]

# A key that only this layout has, for each layout.
_MARKERS = {
    "official": "patch_embed.proj.weight",
    "timm": "stem.conv.weight",
    "transformers": "encoder.patch_embeddings.0.projection.weight",
}


def _strip_transformers_prefix(state):
    """``PoolFormerForImageClassification`` nests the trunk under ``poolformer.``."""
    return {
        (key[len("poolformer.") :] if key.startswith("poolformer.") else key): value
        for key, value in state.items()
    }


def detect_layout(state):
    """``"official"``, ``"timm"`` or ``"transformers"``; :class:`CheckpointError` (a
    ``ValueError``) for anything else."""
    keys = set(_strip_transformers_prefix(state))
    found = [layout for layout, marker in _MARKERS.items() if marker in keys]
    if len(found) != 1:
        sample = ", ".join(sorted(state)[:5])
        raise CheckpointError(
            "not a PoolFormer checkpoint in a known layout (official sail-sg, timm, or "
            f"transformers): expected a key such as {', '.join(_MARKERS.values())}; "
            f"found {len(state)} tensors, e.g. {sample}."
        )
    return found[0]


def _rename(key, rules):
    for pattern, replacement in rules:
        new, count = re.subn(pattern, replacement, key)
        if count:
            return new
    return key


def to_official(state, layout=None):
    """Renames a state dict to the official layout (and reshapes where only the
    shape differs: timm's (C, 1, 1) layer scales, a Linear MLP's 2-D weights).

    Returns:
        ``(official_state, layout)``. Keys no rule knows are kept as they are, so
        that the shape check can name them as unexpected.
    """
    layout = layout or detect_layout(state)
    if layout == "official":
        renamed = dict(state)
    elif layout == "timm":
        renamed = {_rename(k, _TIMM_RULES): v for k, v in state.items()}
    else:
        renamed = {
            _rename(k, _TRANSFORMERS_RULES): v for k, v in _strip_transformers_prefix(state).items()
        }
    official = {}
    for key, value in renamed.items():
        if key.endswith(("layer_scale_1", "layer_scale_2")) and value.ndim == 3:
            value = value.reshape(-1)
        elif re.search(r"\.mlp\.fc[12]\.weight$", key) and value.ndim == 2:
            value = value[:, :, None, None]
        official[key] = value
    return official, layout


def _leading_dim(state, key):
    """The first dimension of ``state[key]``, which must be there and not be empty."""
    if key not in state:
        raise CheckpointError(f"cannot read the architecture: {key} is missing.")
    shape = state[key].shape
    if not shape or not all(shape):
        raise CheckpointError(f"cannot read the architecture: {key} has shape {shape}.")
    return int(shape[0])


def infer_architecture(state):
    """Reads depths, dims, mlp ratio and classes off an official-layout state dict.

    Returns:
        ``dict(depths, dims, mlp_ratio, classes, variant)`` where ``variant`` is the
        named variant ("s12"...) with these depths and dims, or ``None``.
    """
    dims = [_leading_dim(state, "patch_embed.proj.weight")]
    dims += [_leading_dim(state, f"network.{2 * s - 1}.proj.weight") for s in (1, 2, 3)]
    depths = []
    for s in range(4):
        blocks = {
            int(m[1])
            for key in state
            if (m := re.match(rf"network\.{2 * s}\.(\d+)\.norm1\.weight$", key))
        }
        depths.append(max(blocks) + 1 if blocks else 0)
    fc1 = "network.0.0.mlp.fc1.weight"
    mlp_ratio = _leading_dim(state, fc1) / dims[0] if fc1 in state else 4.0
    classes = _leading_dim(state, "head.weight") if "head.weight" in state else None

    from keras_poolformer import poolformer_table

    variant = next(
        (
            key
            for key, config in poolformer_table.variant_configs().items()
            if tuple(config["depths"]) == tuple(depths) and tuple(config["dims"]) == tuple(dims)
        ),
        None,
    )
    return {
        "depths": tuple(depths),
        "dims": tuple(int(d) for d in dims),
        "mlp_ratio": mlp_ratio,
        "classes": classes,
        "variant": variant,
    }


def describe(architecture):
    """A short name for what :func:`infer_architecture` found, for messages."""
    if architecture.get("title"):
        return architecture["title"]
    if architecture["variant"]:
        return f"PoolFormer-{architecture['variant'].upper()}"
    return f"a PoolFormer with depths {architecture['depths']} and dims {architecture['dims']}"


def load_official(path):
    """Reads a checkpoint file or folder and returns it in the official layout.

    Returns:
        ``(official_state, layout)``.

    Raises:
        CheckpointError: the file does not read (:func:`read_checkpoint`), or holds
            no PoolFormer in a known layout; the message names the file.
    """
    state = read_checkpoint(path)
    try:
        return to_official(state)
    except CheckpointError as error:
        raise CheckpointError(f"checkpoint '{os.fspath(path)}': {error}") from None


# --- the MetaFormer baselines (sail-sg/metaformer) ------------------------------------
#
# Two layouts: the official one (``downsample_layers.0.conv.weight``..., see
# :mod:`keras_poolformer.baselines.layout`) and timm's (the ``timm/*.sail_*`` hub files:
# ``stem.conv``, ``stem.norm``, ``stages.{s}.downsample.{norm,conv}``,
# ``stages.{s}.blocks.{j}.*`` with the MLPs' and SepConv's pointwise layers as 1x1
# convolutions (out, in, 1, 1), ``head.norm``, ``head.fc`` or ``head.fc.{fc1,norm,fc2}``).

BASELINE_MARKERS = {"official": "downsample_layers.0.conv.weight", "timm": "stem.norm.weight"}

_BASELINE_TIMM_RULES = [
    (r"^stem\.conv\.", "downsample_layers.0.conv."),
    (r"^stem\.norm\.", "downsample_layers.0.post_norm."),
    (r"^stages\.(\d+)\.downsample\.norm\.", lambda m: f"downsample_layers.{m[1]}.pre_norm."),
    (r"^stages\.(\d+)\.downsample\.conv\.", lambda m: f"downsample_layers.{m[1]}.conv."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.", lambda m: f"stages.{m[1]}.{m[2]}."),
    (r"^head\.norm\.", "norm."),
    (r"^head\.fc\.(fc1|norm|fc2)\.", lambda m: f"head.{m[1]}."),
    (r"^head\.fc\.", "head."),
]
# Official nn.Linear layers that timm runs as 1x1 convolutions.
_BASELINE_POINTWISE = re.compile(r"\.(mlp\.fc[12]|token_mixer\.pwconv[12])\.weight$")

# The families' mixers per stage as the tensors show them: "none" is pooling or identity,
# which have no tensors and so cannot be told apart.
_FAMILY_MIXERS = {
    ("sepconv",) * 4: ("convformer",),
    ("sepconv", "sepconv", "attention", "attention"): ("caformer",),
    ("none", "none", "random", "random"): ("randformer",),
    ("none",) * 4: ("poolformerv2", "identityformer"),
}


def baseline_layout(state):
    """``"official"`` or ``"timm"`` when ``state`` is a MetaFormer baseline, else ``None``."""
    found = [layout for layout, marker in BASELINE_MARKERS.items() if marker in state]
    return found[0] if len(found) == 1 else None


def baseline_to_official(state, layout=None):
    """Renames a baseline state dict (official or timm layout) to the official layout,
    with timm's 1x1-convolution weights reshaped to the official (out, in).

    Returns:
        ``(official_state, layout)``; keys no rule knows are kept, for the shape check
        to name.
    """
    layout = layout or baseline_layout(state)
    if layout is None:
        raise CheckpointError(
            "not a MetaFormer baseline checkpoint in a known layout: expected "
            f"{' or '.join(BASELINE_MARKERS.values())}."
        )
    if layout == "official":
        return dict(state), layout
    official = {}
    for key, value in state.items():
        key = _rename(key, _BASELINE_TIMM_RULES)
        if _BASELINE_POINTWISE.search(key) and value.ndim == 4 and value.shape[2:] == (1, 1):
            value = value.reshape(value.shape[:2])
        official[key] = value
    return official, layout


def _baseline_mixer(state, stage):
    p = f"stages.{stage}.0.token_mixer."
    for mixer, key in (
        ("sepconv", "pwconv1.weight"),
        ("attention", "qkv.weight"),
        ("random", "random_matrix"),
    ):
        if p + key in state:
            return mixer
    return "none"


def _family_hint(hint, families):
    """The family of ``families`` that ``hint`` (a model or file name) names, or ``None``."""
    name = os.path.basename(os.fspath(hint or "")).lower()
    named = [f for f in families if f in name]
    return named[0] if len(named) == 1 else None


def infer_baseline(state, hint=None):
    """The registered baseline an official-layout state dict holds.

    PoolFormerV2 and IdentityFormer have the same tensors (pooling and identity mixers
    have none); ``hint``, a model name (``"identityformer_s12"``) or a file name
    (``identityformer_s12.pth``), tells them apart, else :class:`CheckpointError` says
    the file is ambiguous and how to resolve it.

    Returns:
        ``dict(name, family, classes, image_size)``: the registry name, its family,
        the classifier's rows (``None`` without one) and the input side the random
        mixers fix (else 224).
    """
    from keras_poolformer import registry

    dims = [_leading_dim(state, f"downsample_layers.{s}.conv.weight") for s in range(4)]
    depths = []
    for s in range(4):
        blocks = {
            int(m[1])
            for key in state
            if (m := re.match(rf"stages\.{s}\.(\d+)\.norm1\.weight$", key))
        }
        depths.append(max(blocks) + 1 if blocks else 0)
    mixers = tuple(_baseline_mixer(state, s) for s in range(4))
    families = _FAMILY_MIXERS.get(mixers)
    if families is None:
        raise CheckpointError(
            f"the baseline checkpoint's token mixers per stage ({', '.join(mixers)}) are "
            "those of no MetaFormer baseline family."
        )
    family = families[0]
    if len(families) > 1:
        family = _family_hint(hint, families)
        if family is None:
            raise CheckpointError(
                f"the checkpoint is ambiguous: {' and '.join(families)} have the same tensors "
                "(pooling and identity mixers have no weights). Name the model "
                "(--model poolformerv2_s12 / identityformer_s12 on the command line, or load "
                "through the model's constructor), or keep the family in the file name "
                "(e.g. identityformer_s12.pth)."
            )
    spec = next(
        (
            s
            for s in registry.family_models(family)
            if tuple(s.config["depths"]) == tuple(depths) and tuple(s.config["dims"]) == tuple(dims)
        ),
        None,
    )
    if spec is None:
        raise CheckpointError(
            f"the checkpoint is a {family} with depths {tuple(depths)} and dims {tuple(dims)}, "
            "which is none of its named sizes."
        )
    if "head.fc2.weight" in state:
        classes = _leading_dim(state, "head.fc2.weight")
    elif "head.weight" in state:
        classes = _leading_dim(state, "head.weight")
    else:
        classes = None
    image_size = 224
    random = "stages.2.0.token_mixer.random_matrix"
    if random in state:
        tokens = state[random].shape[0]
        image_size = int(round(tokens**0.5)) * 16
    return {"name": spec.name, "family": family, "classes": classes, "image_size": image_size}
