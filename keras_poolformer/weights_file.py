"""Checking and loading Keras ``.weights.h5`` files for PoolFormer models.

Keras 3 stores a model's weights in HDF5 under paths derived from layer classes
(``layers/conv2d_1/vars/0``, ``layers/pool_former_block_3/mlp/fc1/vars/0``...).
Before a model is built, :func:`check` reads only the tensor shapes of the file
and compares them with the shapes the requested architecture needs, so that a
file of another variant is refused at once, with the variant it does fit named.
"""

import collections
import os

import numpy as np

from keras_poolformer import poolformer_table, porting

SUFFIX = ".weights.h5"
# Keras names the classifier's variables after its class: Dense -> "dense".
_HEAD_PREFIX = "layers/dense/"


def _keras_shape(shape):
    """The Keras shape of an official (PyTorch) tensor shape."""
    if len(shape) == 4:  # conv: OIHW -> HWIO
        return (shape[2], shape[3], shape[1], shape[0])
    if len(shape) == 2:  # linear: (out, in) -> (in, out)
        return (shape[1], shape[0])
    return tuple(shape)


def read_shapes(path):
    """``{dataset path: shape}`` of the floating-point tensors in a ``.weights.h5``."""
    import h5py

    shapes = {}
    try:
        with h5py.File(path, "r") as f:

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset) and np.issubdtype(obj.dtype, np.floating):
                    shapes[name] = tuple(obj.shape)

            f.visititems(visit)
    except OSError as error:
        raise ValueError(f"weights file '{path}' is not a readable HDF5 file: {error}") from None
    return shapes


def _describe(counter):
    params = sum(int(np.prod(shape)) * n for shape, n in counter.items())
    return f"{sum(counter.values())} tensors, {params:,} parameters"


def _matching_variant(body):
    """The named variant (``"S24"``...) whose trunk has exactly these tensor shapes."""
    for key, spec in poolformer_table.VARIANT_SPECS.items():
        shapes = porting.official_shapes(spec.config["depths"], spec.config["dims"], classes=None)
        if collections.Counter(_keras_shape(s) for s in shapes.values()) == body:
            return key.upper()
    return None


def check(path, official_shapes, model_name):
    """Raises ``ValueError`` unless ``path`` holds weights for this architecture.

    Args:
        path: the ``.weights.h5`` file.
        official_shapes: :func:`keras_poolformer.porting.official_shapes` of the
            model about to be built; with ``include_top=False`` a file that also
            holds a classifier is accepted (the classifier is not loaded).
        model_name: named in the error.
    """
    path = os.fspath(path)
    if not path.endswith(SUFFIX):
        raise ValueError(
            f"weights must be None or a Keras '{SUFFIX}' file; got '{path}'. "
            "(PyTorch checkpoints are read by the converter, not here.)"
        )
    if not os.path.isfile(path):
        raise ValueError(f"weights file '{path}' does not exist.")

    in_file = read_shapes(path)
    head = collections.Counter(s for p, s in in_file.items() if p.startswith(_HEAD_PREFIX))
    body = collections.Counter(s for p, s in in_file.items() if not p.startswith(_HEAD_PREFIX))

    has_top = "head.weight" in official_shapes
    expected = {k: _keras_shape(s) for k, s in official_shapes.items()}
    want_head = collections.Counter(s for k, s in expected.items() if k.startswith("head."))
    want_body = collections.Counter(s for k, s in expected.items() if not k.startswith("head."))

    if body != want_body:
        variant = _matching_variant(body)
        fits = f"it fits PoolFormer-{variant}" if variant else "it fits no PoolFormer variant"
        raise ValueError(
            f"weights file '{path}' does not fit model '{model_name}': the file holds "
            f"{_describe(body)} outside the classifier, the model needs {_describe(want_body)}; "
            f"{fits}."
        )
    if has_top and head != want_head:
        if not head:
            raise ValueError(
                f"weights file '{path}' has no classifier but model '{model_name}' has one "
                "(include_top=True); build with include_top=False or use a file with a top."
            )
        file_classes = next(s[0] for s in head if len(s) == 1)
        model_classes = official_shapes["head.bias"][0]
        raise ValueError(
            f"weights file '{path}' has a classifier for {file_classes} classes, model "
            f"'{model_name}' one for {model_classes}; pass classes={file_classes}, or "
            "include_top=False to load everything but the classifier."
        )


def load(model, path):
    """Loads a checked ``.weights.h5`` into ``model`` (a classifier's head is left
    out when ``model`` has none)."""
    model.load_weights(os.fspath(path))


def check_against_model(path, model):
    """Raises ``ValueError`` unless the ``.weights.h5`` at ``path`` holds exactly the
    tensor shapes of the built ``model`` (for architectures with no official
    layout: MetaFormers other than PoolFormer). Run before loading, so that a model
    is never left half-loaded. A classifier in the file is allowed when ``model``
    has none."""
    in_file = collections.Counter(read_shapes(path).values())
    needed = collections.Counter(  # as read_shapes: floating-point tensors only
        tuple(w.shape) for w in model.weights if "float" in str(w.dtype)
    )
    extra = in_file - needed
    has_head = any(layer.name == "head" for layer in model.layers)
    if not has_head:
        head = collections.Counter(
            s for p, s in read_shapes(path).items() if p.startswith(_HEAD_PREFIX)
        )
        extra -= head
    if needed - in_file or extra:
        raise ValueError(
            f"weights file '{path}' does not fit model '{model.name}': the file holds "
            f"{_describe(in_file)}, the model needs {_describe(needed)}."
        )
