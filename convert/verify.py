"""Checking a converted model against the PyTorch reference (transformers' PoolFormer).

Needs the optional ``test`` extra (torch and transformers). The reference is built
from the same official-layout state dict, so a difference means the conversion or
the Keras model is wrong, not the weights.
"""

import numpy as np

from keras_poolformer.convert.layouts import infer_architecture, to_official

TOLERANCE = 1e-4


def reference_model(state):
    """transformers' ``PoolFormerForImageClassification`` holding ``state`` (official layout)."""
    try:
        import torch
        from transformers import PoolFormerConfig, PoolFormerForImageClassification
    except ImportError as error:
        raise RuntimeError(
            "--verify needs torch and transformers: pip install 'keras-poolformer[test]'"
        ) from error
    arch = infer_architecture(state)
    if arch["classes"] is None:
        raise ValueError("verification compares classifiers; this checkpoint has no classifier.")
    config = PoolFormerConfig(
        depths=list(arch["depths"]),
        hidden_sizes=list(arch["dims"]),
        mlp_ratio=arch["mlp_ratio"],
        num_labels=arch["classes"],
        hidden_act="gelu",
    )
    model = PoolFormerForImageClassification(config).eval()
    # Each reference key's official name, by the converter's own renaming rules.
    names, _ = to_official({key: np.zeros(0) for key in model.state_dict()}, "transformers")
    hf_state = {
        hf: torch.from_numpy(np.ascontiguousarray(state[official]))
        for hf, official in zip(model.state_dict(), names, strict=True)
    }
    model.load_state_dict(hf_state, strict=True)
    return model


def compare(keras_model, state, images):
    """Logits of the Keras model and the reference on the same images.

    Args:
        keras_model: a classifier built by this package (any activation).
        state: the official-layout state dict it was loaded from.
        images: float32 ``(n, h, w, 3)`` RGB pixels in 0..255.

    Returns:
        dict with ``max_abs_diff``, ``top1_agreement`` and ``top5_agreement``
        (fractions of images whose top-1 / ordered top-5 classes agree).
    """
    import keras
    import torch

    from keras_poolformer.imagenet import preprocess_input

    logits_model = keras.Model(keras_model.input, keras_model.get_layer("head").output)
    ours = np.asarray(logits_model.predict(images, verbose=0))
    normalized = preprocess_input(images, include_preprocessing=False).transpose(0, 3, 1, 2)
    with torch.no_grad():
        theirs = reference_model(state)(pixel_values=torch.from_numpy(normalized.copy()))
    theirs = theirs.logits.numpy()
    top5_ours, top5_theirs = (np.argsort(-x, axis=1)[:, :5] for x in (ours, theirs))
    return {
        "max_abs_diff": float(np.abs(ours - theirs).max()),
        "top1_agreement": float(np.mean(top5_ours[:, 0] == top5_theirs[:, 0])),
        "top5_agreement": float(np.mean(np.all(top5_ours == top5_theirs, axis=1))),
    }
