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

    from keras_poolformer.models import MODEL_CONFIGS

    variant = next(
        (
            key
            for key, config in MODEL_CONFIGS.items()
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
