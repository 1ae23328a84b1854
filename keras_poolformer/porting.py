"""Moving weights between Keras PoolFormers and the official PyTorch layout.

The official layout is the state dict of sail-sg/poolformer (``models/poolformer.py``),
a flat mapping of key -> array::

    patch_embed.proj.{weight,bias}                 stem conv, OIHW
    network.{2s}.{j}.norm1.{weight,bias}           stage s (0..3), block j
    network.{2s}.{j}.norm2.{weight,bias}
    network.{2s}.{j}.mlp.fc1.{weight,bias}         1x1 conv, OIHW
    network.{2s}.{j}.mlp.fc2.{weight,bias}
    network.{2s}.{j}.layer_scale_1                 (C,)
    network.{2s}.{j}.layer_scale_2
    network.{2s-1}.proj.{weight,bias}              downsampling into stage s (1..3)
    norm.{weight,bias}                             final norm
    head.{weight,bias}                             linear, (classes, C)
    norm{2s}.{weight,bias}                         dense-prediction backbones only:
                                                   a norm on each stage output

These are pure functions on numpy arrays: reading files and renaming other layouts
(timm, transformers) into this one belong to the converter, which builds on them.
"""

import dataclasses
import re

import numpy as np

from keras_poolformer import poolformer_table

# Parts of the official layout that only a classifier has: a model built with
# include_top=False (or a feature extractor) skips them instead of refusing them.
CLASSIFIER_ONLY = ("norm.", "head.")


def official_shapes(
    depths,
    dims,
    mlp_ratio=4.0,
    classes=1000,
    in_channels=3,
    final_norm=True,
    out_norms=False,
):
    """Key -> shape of every tensor of an official-layout PoolFormer state dict.

    This is the one description of the checkpoint layout; the porting checks, the
    weight-file checks and the parameter counts all read it.

    Args:
        depths, dims, mlp_ratio, in_channels: the architecture.
        classes: rows of the classifier; ``None`` for a model without one.
        final_norm: whether the norm on the last feature map is there (it is in
            classifiers and in models built with ``include_top=False``, not in
            feature extractors).
        out_norms: whether the per-stage output norms of the official
            detection/segmentation backbones are there.

    Returns:
        An insertion-ordered ``dict`` of ``str -> tuple``.
    """
    shapes = {
        "patch_embed.proj.weight": (dims[0], in_channels, 7, 7),
        "patch_embed.proj.bias": (dims[0],),
    }
    for s, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
        if s > 0:
            shapes[f"network.{2 * s - 1}.proj.weight"] = (dim, dims[s - 1], 3, 3)
            shapes[f"network.{2 * s - 1}.proj.bias"] = (dim,)
        hidden = int(dim * mlp_ratio)
        for j in range(depth):
            p = f"network.{2 * s}.{j}."
            # PyTorch lists a module's own parameters before its children's.
            shapes.update(
                {
                    p + "layer_scale_1": (dim,),
                    p + "layer_scale_2": (dim,),
                    p + "norm1.weight": (dim,),
                    p + "norm1.bias": (dim,),
                    p + "norm2.weight": (dim,),
                    p + "norm2.bias": (dim,),
                    p + "mlp.fc1.weight": (hidden, dim, 1, 1),
                    p + "mlp.fc1.bias": (hidden,),
                    p + "mlp.fc2.weight": (dim, hidden, 1, 1),
                    p + "mlp.fc2.bias": (dim,),
                }
            )
    if out_norms:
        for s, dim in enumerate(dims):
            shapes[f"norm{2 * s}.weight"] = (dim,)
            shapes[f"norm{2 * s}.bias"] = (dim,)
    if final_norm:
        shapes["norm.weight"] = (dims[-1],)
        shapes["norm.bias"] = (dims[-1],)
    if classes is not None:
        shapes["head.weight"] = (classes, dims[-1])
        shapes["head.bias"] = (classes,)
    return shapes


def count_parameters(shapes):
    """Total number of values in a ``key -> shape`` mapping."""
    return sum(int(np.prod(shape)) for shape in shapes.values())


# How a tensor's official (PyTorch) layout becomes Keras' layout, and back.
def _conv_to_keras(w):  # OIHW -> HWIO
    return np.transpose(w, (2, 3, 1, 0))


def _conv_to_torch(w):  # HWIO -> OIHW
    return np.transpose(w, (3, 2, 0, 1))


def _depthwise_to_keras(w):  # (C, 1, H, W) -> (H, W, C, 1)
    return np.transpose(w, (2, 3, 0, 1))


def _depthwise_to_torch(w):  # (H, W, C, 1) -> (C, 1, H, W)
    return np.transpose(w, (2, 3, 0, 1))


def _identity(w):
    return w


_TO_KERAS = {
    "conv": _conv_to_keras,
    "depthwise": _depthwise_to_keras,
    "linear": np.transpose,
    "vector": _identity,
}
_TO_TORCH = {
    "conv": _conv_to_torch,
    "depthwise": _depthwise_to_torch,
    "linear": np.transpose,
    "vector": _identity,
}


def to_keras(array, kind):
    """An official (PyTorch) tensor in Keras' layout: ``kind`` is ``"conv"`` (OIHW
    -> HWIO), ``"depthwise"`` ((C, 1, H, W) -> (H, W, C, 1)), ``"linear"``
    (transposed) or ``"vector"`` (as is)."""
    return _TO_KERAS[kind](array)


def to_torch(array, kind):
    """The inverse of :func:`to_keras`."""
    return _TO_TORCH[kind](array)


def torch_shape(keras_shape, kind):
    """The official shape of a Keras variable of this kind."""
    return _TO_TORCH[kind](np.empty(keras_shape, dtype=np.bool_)).shape


_BLOCK_NAME = re.compile(r"stage(\d+)_block(\d+)$")
_DOWNSAMPLE_NAME = re.compile(r"downsample(\d+)$")
_OUT_NORM_NAME = re.compile(r"out_norm(\d+)$")


def keras_targets(model):
    """Official key -> ``(keras variable, kind)`` for every weight of ``model``.

    ``kind`` is ``"conv"`` (OIHW <-> HWIO), ``"linear"`` (transposed) or
    ``"vector"`` (as is). Layers are found by the deterministic names the builder
    gives them, so this is a table, not a search. Works for classifiers, models
    built with ``include_top=False`` and feature extractors.
    """
    targets = {}

    def conv(key, layer):
        targets[key + ".weight"] = (layer.kernel, "conv")
        targets[key + ".bias"] = (layer.bias, "vector")

    def norm(key, layer):
        targets[key + ".weight"] = (layer.gamma, "vector")
        targets[key + ".bias"] = (layer.beta, "vector")

    out_norms = {}
    for layer in model.layers:
        name = layer.name
        if name == "stem":
            conv("patch_embed.proj", layer)
        elif m := _DOWNSAMPLE_NAME.match(name):
            conv(f"network.{2 * int(m[1]) - 1}.proj", layer)
        elif m := _BLOCK_NAME.match(name):
            from keras_poolformer.layers import PoolFormerBlock

            if not isinstance(layer, PoolFormerBlock):
                raise ValueError(
                    f"'{model.name}' is a MetaFormer with {layer.mixer['type']} mixers or "
                    f"{layer.norm} norms, not a PoolFormer: the official PoolFormer layout "
                    "does not describe it. Save and load its weights with Keras instead."
                )
            if layer.folded:
                raise ValueError(
                    f"'{model.name}' is folded for inference: its merged weights have no "
                    "official layout. Port into the unfolded model, then fold it."
                )
            p = f"network.{2 * int(m[1])}.{int(m[2])}."
            targets[p + "layer_scale_1"] = (layer.layer_scale_1.scale, "vector")
            targets[p + "layer_scale_2"] = (layer.layer_scale_2.scale, "vector")
            norm(p + "norm1", layer.norm1)
            norm(p + "norm2", layer.norm2)
            conv(p + "mlp.fc1", layer.mlp.fc1)
            conv(p + "mlp.fc2", layer.mlp.fc2)
        elif name == "norm":
            norm("norm", layer)
        elif name == "head":
            targets["head.weight"] = (layer.kernel, "linear")
            targets["head.bias"] = (layer.bias, "vector")
        elif m := _OUT_NORM_NAME.match(name):
            out_norms[int(m[1])] = layer
    # The dense-prediction norms come after the whole network, as in the official module.
    for stage, layer in sorted(out_norms.items()):
        norm(f"norm{2 * stage}", layer)
    return targets


@dataclasses.dataclass(frozen=True)
class PortReport:
    """What :func:`load_state_dict` did: the keys it loaded and those it skipped."""

    loaded: tuple
    skipped: tuple


# At most this many examples per kind of misfit in an error: enough to see the
# pattern, short enough that the first line stays the one that is read.
_EXAMPLES = 3


def _variant_of(shapes):
    """``"PoolFormer-S12"``... when ``{key: shape}`` holds exactly the trunk of a
    named variant (classifier and final norm aside), else ``None``; for messages."""
    trunk = {k: tuple(s) for k, s in shapes.items() if not k.startswith(CLASSIFIER_ONLY)}
    for key, spec in poolformer_table.VARIANT_SPECS.items():
        depths, dims = spec.config["depths"], spec.config["dims"]
        wanted = official_shapes(depths, dims, classes=None, final_norm=False)
        if trunk == wanted:
            return f"PoolFormer-{key.upper()}"
    return None


def check_state_dict(state_dict, expected, target, hint=""):
    """Checks a state dict against the ``{key: official shape}`` a model needs.

    Keys of the classifier and final norm that ``expected`` lacks are skipped (a
    model without a top), any other extra key is unexpected. Raises one short
    ``ValueError``: a first line with the problem (the variants, when both sides are
    named ones, and how many tensors are missing, unexpected or mis-shaped), then at
    most three examples of each.

    Args:
        state_dict: official key -> numpy array.
        expected: official key -> shape, e.g. from :func:`official_shapes`.
        target: what the weights are for, named in the error (``"model 'x'"``).
        hint: a sentence appended to the error.

    Returns:
        The skipped keys, as a tuple.
    """
    missing = [key for key in expected if key not in state_dict]
    unexpected, skipped, misshaped = [], [], []
    for key, array in state_dict.items():
        if key not in expected:
            (skipped if key.startswith(CLASSIFIER_ONLY) else unexpected).append(key)
        elif tuple(array.shape) != tuple(expected[key]):
            misshaped.append(f"{key}: checkpoint {tuple(array.shape)}, model {expected[key]}")
        elif not np.issubdtype(array.dtype, np.floating):
            misshaped.append(f"{key}: dtype {array.dtype} is not floating point")
    if not (missing or unexpected or misshaped):
        return tuple(skipped)
    kinds = [
        (title, items)
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape or dtype", misshaped),
        )
        if items
    ]
    counts = ", ".join(f"{len(items)} {title}" for title, items in kinds)
    theirs = _variant_of({key: array.shape for key, array in state_dict.items()})
    ours = _variant_of(expected)
    if theirs and ours and theirs != ours:
        differ = len(unexpected) + len(misshaped)
        lines = [
            f"the state dict holds {theirs}, {target} is {ours}: {differ} of its "
            f"{len(state_dict)} tensors do not fit ({counts})"
        ]
    else:
        lines = [f"the state dict does not fit {target}: {counts}"]
    for title, items in kinds:
        more = len(items) - _EXAMPLES
        lines.append(f"  {title}" + (f" ({_EXAMPLES} of {len(items)}):" if more > 0 else ":"))
        lines.extend(f"    {item}" for item in items[:_EXAMPLES])
    if hint:
        lines.append(hint)
    raise ValueError("\n".join(lines))


def load_state_dict(model, state_dict):
    """Loads an official-layout state dict into a Keras PoolFormer.

    Every tensor of the model must be in ``state_dict`` with the right shape, and
    every tensor of ``state_dict`` must be used, except the final norm and the
    classifier when the model has none (``include_top=False``, feature
    extractors): those are skipped and reported. Conv kernels are transposed from
    OIHW to HWIO, the classifier from (out, in) to (in, out).

    All checks run before any weight is written: on any mismatch the model is left
    as it was and one short ``ValueError`` says how many tensors are missing,
    unexpected and mis-shaped, with a few of each (:func:`check_state_dict`).

    Args:
        model: a model built by this package (any variant, with or without top).
        state_dict: mapping of official key -> array-like (numpy, or anything
            ``np.asarray`` accepts).

    Returns:
        A :class:`PortReport`.

    Example:
    >>> model = keras_poolformer.PoolFormerS12(weights=None)
    >>> sd = keras_poolformer.porting.export_state_dict(model)
    >>> report = keras_poolformer.porting.load_state_dict(model, sd)
    >>> len(report.loaded)
    132
    """
    targets = keras_targets(model)
    arrays = {key: np.asarray(value) for key, value in state_dict.items()}
    expected = {key: torch_shape(var.shape, kind) for key, (var, kind) in targets.items()}
    skipped = check_state_dict(arrays, expected, f"model '{model.name}'")
    for key, (variable, kind) in targets.items():
        variable.assign(_TO_KERAS[kind](arrays[key]).astype(variable.dtype))
    return PortReport(loaded=tuple(targets), skipped=skipped)


def export_state_dict(model):
    """The weights of a Keras PoolFormer as an official-layout state dict.

    The inverse of :func:`load_state_dict`: key -> float32 numpy array in PyTorch's
    layout (OIHW convs, (out, in) classifier).
    """
    return {
        key: np.ascontiguousarray(_TO_TORCH[kind](np.asarray(variable.numpy())))
        for key, (variable, kind) in keras_targets(model).items()
    }
