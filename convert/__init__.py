"""PyTorch PoolFormer checkpoints -> Keras, without torch.

Installed as ``keras_poolformer.convert``. The pieces are pure functions:

- :func:`read_checkpoint` (``reader.py``): a file or folder -> ``{key: numpy array}``,
  through a restricted unpickler that runs nothing from the file, checking every
  size the file declares before allocating it; any malformed file raises
  :class:`CheckpointError` (a ``ValueError``) naming the file and tensor;
- :func:`to_official` / :func:`detect_layout` / :func:`infer_architecture`
  (``layouts.py``): official, timm or transformers keys -> the official layout;
- :func:`keras_poolformer.porting.load_state_dict`: official layout -> Keras model;
- :func:`convert_checkpoint`: all of it, to a ``.weights.h5`` or ``.keras`` file.

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


def convert_checkpoint(checkpoint, output, variant=None):
    """Converts a PoolFormer checkpoint to a Keras ``.weights.h5`` or ``.keras`` file.

    Args:
        checkpoint: a ``.pth`` / ``.pth.tar`` / ``.bin`` / ``.safetensors`` /
            ``.npz`` file or a Hugging Face model folder, in any known layout.
        output: where to write; the suffix picks the format. Written atomically.
        variant: optional expected variant; inferred from the shapes otherwise.

    Returns:
        ``(model, info)``: the loaded Keras model and a dict with the checkpoint's
        ``layout``, the inferred ``architecture``, the port ``report`` and the
        official-layout ``state`` it was loaded from.
    """
    output = os.fspath(output)
    if not output.endswith(OUTPUT_SUFFIXES):
        raise ValueError(f"output must end with {' or '.join(OUTPUT_SUFFIXES)}; got '{output}'.")
    state, layout = load_official(checkpoint)
    try:
        model = build_for(state, variant)
    except CheckpointError as error:  # the architecture cannot be read off the tensors
        raise CheckpointError(f"checkpoint '{os.fspath(checkpoint)}': {error}") from None
    report = porting.load_state_dict(model, state)
    with files.atomic_path(output) as tmp:
        if output.endswith(".keras"):
            model.save(tmp)
        else:
            model.save_weights(tmp)
    info = {
        "layout": layout,
        "architecture": infer_architecture(state),
        "report": report,
        "state": state,
    }
    return model, info
