"""PyTorch PoolFormer and MetaFormer checkpoints -> Keras, without torch.

Installed as ``keras_poolformer.convert``. The pieces are pure functions:

- :func:`read_checkpoint` (``reader.py``): a file or folder -> ``{key: numpy array}``,
  through a restricted unpickler that runs nothing from the file, checking every
  size the file declares before allocating it; any malformed file raises
  :class:`CheckpointError` (a ``ValueError``) naming the file and tensor;
- :func:`to_official` / :func:`detect_layout` / :func:`infer_architecture`
  (``layouts.py``): official, timm or transformers keys -> the official layout;
- :func:`keras_poolformer.porting.load_state_dict`: official layout -> Keras model;
- :func:`convert_checkpoint`: all of it, to a ``.weights.h5`` or ``.keras`` file, for
  PoolFormer v1, the v1 MetaFormer hybrids (``hybrids.py``) and the MetaFormer
  baselines (``layouts.baseline_to_official``, ``layouts.infer_baseline``).

The command line is ``keras-poolformer convert CHECKPOINT --output FILE [--verify]``.
"""

import os

from keras_poolformer import files, porting
from keras_poolformer.convert.layouts import (
    describe,
    detect_layout,
    infer_architecture,
    load_official,
    to_official,
)
from keras_poolformer.convert.reader import (
    CheckpointError,
    UnsafeCheckpointError,
    read_checkpoint,
)

OUTPUT_SUFFIXES = (".weights.h5", ".keras")

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "build_for",
    "convert_checkpoint",
    "describe",
    "detect_layout",
    "infer_architecture",
    "load_official",
    "read_checkpoint",
    "to_official",
]


def build_for(state, variant=None):
    """Builds the Keras model an official-layout state dict fits (random weights).

    A classifier checkpoint gives a classifier with its number of classes; a
    detection/segmentation backbone (``norm0``... and no head) gives a
    :func:`keras_poolformer.feature_extractor` with ``out_norms=True``.

    Args:
        state: official-layout state dict.
        variant: the variant the caller expects ("s12"...); a checkpoint of
            another architecture raises ``ValueError``.
    """
    import keras_poolformer as kp

    arch = infer_architecture(state)
    if variant is not None and arch["variant"] != variant:
        raise ValueError(
            f"the checkpoint holds {describe(arch)}, not PoolFormer-{variant.upper()}."
        )
    dense_prediction = "norm0.weight" in state and arch["classes"] is None
    kwargs = {
        "weights": None,
        "include_top": arch["classes"] is not None,
        "classes": arch["classes"] or 1000,
        "input_shape": None if dense_prediction else (224, 224, 3),
    }
    if arch["variant"]:
        model = kp.VARIANTS[arch["variant"]](**kwargs)
    else:
        model = kp.PoolFormer(arch["depths"], arch["dims"], mlp_ratio=arch["mlp_ratio"], **kwargs)
    if dense_prediction:
        model = kp.feature_extractor(model, out_norms=True)
    return model


def _baseline_model(state, layout, hint, checkpoint):
    """Builds the baseline an official-layout state dict holds and loads it."""
    import keras_poolformer as kp
    from keras_poolformer import registry
    from keras_poolformer.baselines import layout as baseline_layout
    from keras_poolformer.convert.layouts import infer_baseline

    try:
        arch = infer_baseline(state, hint=hint or os.path.basename(os.fspath(checkpoint)))
    except CheckpointError as error:
        raise CheckpointError(f"checkpoint '{os.fspath(checkpoint)}': {error}") from None
    spec = registry.get(arch["name"])
    if hint and hint in registry.MODELS and hint != spec.name:
        raise ValueError(f"the checkpoint holds {spec.name}, not {hint}.")
    size = arch["image_size"]
    model = getattr(kp, spec.constructor)(
        weights=None,
        include_top=arch["classes"] is not None,
        classes=arch["classes"] or 1000,
        input_shape=(size, size, 3),
    )
    report = baseline_layout.load_state_dict(model, state)
    arch = {**arch, "variant": None, "title": spec.constructor, "kind": "baseline"}
    return model, arch, report


def _hybrid_model(state, key):
    """Builds the v1 hybrid ``key`` and loads an official-layout state dict into it."""
    import keras_poolformer as kp
    from keras_poolformer.convert import hybrids

    classes = hybrids.classes_of(state)
    model = kp.HYBRIDS[key](weights=None, include_top=classes is not None, classes=classes or 1000)
    report = hybrids.load_state_dict(model, key, state)
    arch = {
        "name": hybrids.NAMES[key],
        "title": model.name,
        "classes": classes,
        "variant": None,
        "kind": "hybrid",
    }
    return model, arch, report


def _hybrid_hint(hint):
    from keras_poolformer.convert import hybrids

    if hint is None:
        return None
    name = hint[len("metaformer_") :] if hint.startswith("metaformer_") else hint
    return name if name in hybrids.FILENAMES else None


def model_names():
    """Every name ``convert_checkpoint``'s ``variant`` takes: every registered model
    (:data:`keras_poolformer.registry.MODELS`: ``"poolformer_s12"``...,
    ``"metaformer_pppa_s12"``..., ``"caformer_s18"``...) and the short names of the
    PoolFormer v1 variants (``"s12"``...)."""
    from keras_poolformer import poolformer_table, registry

    return [*poolformer_table.VARIANT_SPECS, *registry.MODELS]


def _v1_key(variant):
    """``"s12"`` for ``"poolformer_s12"`` (or ``"s12"``); other names unchanged."""
    from keras_poolformer import poolformer_table, registry

    spec = registry.MODELS.get(variant)
    if spec is not None and spec.family == "poolformer":
        return poolformer_table.short_key(spec)
    return variant


def convert_checkpoint(checkpoint, output, variant=None):
    """Converts a PoolFormer, MetaFormer-hybrid or MetaFormer-baseline checkpoint to a
    Keras ``.weights.h5`` or ``.keras`` file.

    What the file holds is read off its tensors: a baseline (official
    sail-sg/metaformer or timm layout; PoolFormerV2 and IdentityFormer have the same
    tensors, told apart by ``variant`` or by the family in the file name, else an error
    says so), a v1 hybrid (official sail-sg/poolformer ``models/metaformer.py`` layout;
    the identity model ``metaformer_id_s12`` has PoolFormer-S12's tensors and is taken
    for it unless ``variant`` or the file name names it) or a PoolFormer v1.

    Args:
        checkpoint: a ``.pth`` / ``.pth.tar`` / ``.bin`` / ``.safetensors`` /
            ``.npz`` file or a Hugging Face model folder, in any known layout.
        output: where to write; the suffix picks the format. Written atomically.
        variant: optional expected model (:func:`model_names`); inferred otherwise.

    Returns:
        ``(model, info)``: the loaded Keras model and a dict with the checkpoint's
        ``layout``, the inferred ``architecture``, the port ``report`` and the
        official-layout ``state`` it was loaded from.
    """
    from keras_poolformer.convert import hybrids
    from keras_poolformer.convert.layouts import baseline_layout, baseline_to_official

    output = os.fspath(output)
    if not output.endswith(OUTPUT_SUFFIXES):
        raise ValueError(f"output must end with {' or '.join(OUTPUT_SUFFIXES)}; got '{output}'.")
    if variant is not None and variant not in model_names():
        raise ValueError(f"unknown model {variant!r}; choose one of {', '.join(model_names())}.")
    variant = _v1_key(variant)
    raw = read_checkpoint(checkpoint)
    hybrid_hint = _hybrid_hint(variant) or _hybrid_hint(
        os.path.basename(os.fspath(checkpoint)).split(".")[0].removesuffix("_224")
    )
    key = None
    if "patch_embed.proj.weight" in raw:
        key = hybrids.detect(raw, hint=hybrid_hint)
        if key is None and variant is not None and hybrid_hint:
            key = hybrid_hint  # named explicitly: the shape check says what does not fit
    if baseline_layout(raw):
        state, layout = baseline_to_official(raw)
        model, arch, report = _baseline_model(state, layout, variant, checkpoint)
    elif key is not None:
        state, layout = raw, "official"
        if variant and _hybrid_hint(variant) != key:
            raise ValueError(f"the checkpoint holds {hybrids.NAMES[key]}, not {variant}.")
        model, arch, report = _hybrid_model(state, key)
    else:
        if variant is not None and variant not in _v1_variants():
            raise ValueError(
                f"the checkpoint holds no {variant}: it is not in that model's layout."
            )
        try:
            state, layout = to_official(raw)
        except CheckpointError as error:
            raise CheckpointError(f"checkpoint '{os.fspath(checkpoint)}': {error}") from None
        try:
            model = build_for(state, variant)
        except CheckpointError as error:  # the architecture cannot be read off the tensors
            raise CheckpointError(f"checkpoint '{os.fspath(checkpoint)}': {error}") from None
        report = porting.load_state_dict(model, state)
        arch = infer_architecture(state)
    with files.atomic_path(output) as tmp:
        if output.endswith(".keras"):
            model.save(tmp)
        else:
            model.save_weights(tmp)
    info = {
        "layout": layout,
        "architecture": arch,
        "report": report,
        "state": state,
    }
    return model, info


def _v1_variants():
    from keras_poolformer import poolformer_table

    return tuple(poolformer_table.VARIANT_SPECS)
