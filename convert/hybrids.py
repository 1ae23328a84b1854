"""The official layout of the MetaFormer hybrids of sail-sg/poolformer.

``models/metaformer.py`` of sail-sg/poolformer (release v1.0) builds the identity model
and the four hybrids (``MetaFormerIdS12``, ``MetaFormerPPPAS12``, ``MetaFormerPPAAS12``,
``MetaFormerPPPFS12``, ``MetaFormerPPFFS12`` here) as one ``network`` list, like
PoolFormer's, except that a position embedding is a module of that list, placed before
its stage, which moves the indices of everything after it::

    patch_embed.proj.{weight,bias}                 stem conv, OIHW
    network.{i}.pos_embed                          (1, C, H, W), before an attention stage
    network.{i}.{j}.norm1.{weight,bias}            block j of the stage at index i
    network.{i}.{j}.token_mixer.qkv.weight         attention: (3C, C), no bias
    network.{i}.{j}.token_mixer.proj.{weight,bias} attention: (C, C), (C,)
    network.{i}.{j}.token_mixer.fc.weight          spatial MLP: (N, N) over the N tokens
    network.{i}.{j}.norm2, mlp.fc1, mlp.fc2        as PoolFormer's (1x1 convs)
    network.{i}.{j}.layer_scale_{1,2}              (C,)
    network.{i}.proj.{weight,bias}                 downsampling after a stage
    norm.{weight,bias}, head.{weight,bias}

The release files are ``metaformer_id_s12.pth.tar`` and ``metaformer_{pppa,ppaa,pppf,
ppff}_s12_224.pth.tar`` (the ``model_urls`` of that file).

Pure functions over :mod:`keras_poolformer.porting`'s checks and conversions.
"""

import re

import numpy as np

from keras_poolformer import porting

RELEASE_URL = "https://github.com/sail-sg/poolformer/releases/download/v1.0/"
FILENAMES = {
    "id_s12": "metaformer_id_s12.pth.tar",
    "pppa_s12": "metaformer_pppa_s12_224.pth.tar",
    "ppaa_s12": "metaformer_ppaa_s12_224.pth.tar",
    "pppf_s12": "metaformer_pppf_s12_224.pth.tar",
    "ppff_s12": "metaformer_ppff_s12_224.pth.tar",
}
# The architecture's name in the file names and in messages, per hybrid key.
NAMES = {key: f"metaformer_{key}" for key in FILENAMES}
IMAGE_SIZE = 224

_BLOCK = re.compile(r"stage(\d+)_block(\d+)$")
_DOWNSAMPLE = re.compile(r"downsample(\d+)$")
_POS = re.compile(r"stage(\d+)_pos_embed$")


def _config(key):
    from keras_poolformer import poolformer_table

    HYBRID_CONFIGS = poolformer_table.hybrid_configs()  # noqa: N806 (the models' table)
    MODEL_CONFIGS = poolformer_table.variant_configs()  # noqa: N806
    if key not in HYBRID_CONFIGS:
        raise ValueError(f"unknown MetaFormer hybrid {key!r}; there are {', '.join(FILENAMES)}.")
    s12 = MODEL_CONFIGS["s12"]
    return {**HYBRID_CONFIGS[key], "depths": s12["depths"], "dims": s12["dims"]}


def _indices(config):
    """``(stage index, downsample index, pos-embed index)`` per stage in ``network``."""
    stages, downs, pos = {}, {}, {}
    i = 0
    for s in range(4):
        if s in config["position_embeddings"]:
            pos[s] = i
            i += 1
        stages[s] = i
        i += 1
        if s < 3:
            downs[s + 1] = i
            i += 1
    return stages, downs, pos


def official_shapes(key, classes=1000, image_size=IMAGE_SIZE):
    """Key -> shape of the official state dict of hybrid ``key`` (``"pppa_s12"``...);
    ``classes=None`` for a model without its classifier."""
    config = _config(key)
    depths, dims, mixers = config["depths"], config["dims"], config["token_mixers"]
    stages, downs, pos = _indices(config)
    shapes = {
        "patch_embed.proj.weight": (dims[0], 3, 7, 7),
        "patch_embed.proj.bias": (dims[0],),
    }
    side = -(-image_size // 4)
    for s in range(4):
        dim = dims[s]
        if s > 0:
            side = -(-side // 2)
            shapes[f"network.{downs[s]}.proj.weight"] = (dim, dims[s - 1], 3, 3)
            shapes[f"network.{downs[s]}.proj.bias"] = (dim,)
        if s in pos:
            shapes[f"network.{pos[s]}.pos_embed"] = (1, dim, side, side)
        for j in range(depths[s]):
            p = f"network.{stages[s]}.{j}."
            shapes[p + "layer_scale_1"] = (dim,)
            shapes[p + "layer_scale_2"] = (dim,)
            shapes[p + "norm1.weight"] = (dim,)
            shapes[p + "norm1.bias"] = (dim,)
            if mixers[s] == "attention":
                shapes[p + "token_mixer.qkv.weight"] = (3 * dim, dim)
                shapes[p + "token_mixer.proj.weight"] = (dim, dim)
                shapes[p + "token_mixer.proj.bias"] = (dim,)
            elif mixers[s] == "spatial_mlp":
                shapes[p + "token_mixer.fc.weight"] = (side * side, side * side)
            shapes[p + "norm2.weight"] = (dim,)
            shapes[p + "norm2.bias"] = (dim,)
            shapes[p + "mlp.fc1.weight"] = (4 * dim, dim, 1, 1)
            shapes[p + "mlp.fc1.bias"] = (4 * dim,)
            shapes[p + "mlp.fc2.weight"] = (dim, 4 * dim, 1, 1)
            shapes[p + "mlp.fc2.bias"] = (dim,)
    shapes["norm.weight"] = (dims[-1],)
    shapes["norm.bias"] = (dims[-1],)
    if classes is not None:
        shapes["head.weight"] = (classes, dims[-1])
        shapes["head.bias"] = (classes,)
    return shapes


# The position embedding: Keras (H, W, C), official (1, C, H, W).
def _pos_to_keras(array):
    return np.transpose(np.asarray(array)[0], (1, 2, 0))


def _pos_to_torch(array):
    return np.transpose(np.asarray(array), (2, 0, 1))[None]


def keras_targets(model, key):
    """Official key -> ``(keras variable, kind)`` for every weight of a hybrid built by
    :func:`keras_poolformer.models.MetaFormer` with hybrid ``key``'s configuration;
    ``kind`` is a :mod:`keras_poolformer.porting` kind or ``"pos_embed"``."""
    config = _config(key)
    stages, downs, pos = _indices(config)
    targets = {}

    def conv(name, layer):
        targets[name + ".weight"] = (layer.kernel, "conv")
        targets[name + ".bias"] = (layer.bias, "vector")

    def norm(name, layer):
        targets[name + ".weight"] = (layer.gamma, "vector")
        targets[name + ".bias"] = (layer.beta, "vector")

    for layer in model.layers:
        name = layer.name
        if name == "stem":
            conv("patch_embed.proj", layer)
        elif m := _DOWNSAMPLE.match(name):
            conv(f"network.{downs[int(m[1])]}.proj", layer)
        elif m := _POS.match(name):
            targets[f"network.{pos[int(m[1])]}.pos_embed"] = (layer.embedding, "pos_embed")
        elif m := _BLOCK.match(name):
            p = f"network.{stages[int(m[1])]}.{int(m[2])}."
            targets[p + "layer_scale_1"] = (layer.layer_scale_1.scale, "vector")
            targets[p + "layer_scale_2"] = (layer.layer_scale_2.scale, "vector")
            norm(p + "norm1", layer.norm1)
            mixer = layer.token_mixer
            kind = layer.mixer["type"]
            if kind == "attention":
                targets[p + "token_mixer.qkv.weight"] = (mixer.qkv.kernel, "linear")
                targets[p + "token_mixer.proj.weight"] = (mixer.proj.kernel, "linear")
                targets[p + "token_mixer.proj.bias"] = (mixer.proj.bias, "vector")
            elif kind == "spatial_mlp":
                targets[p + "token_mixer.fc.weight"] = (mixer.matrix, "vector")
            norm(p + "norm2", layer.norm2)
            conv(p + "mlp.fc1", layer.mlp.fc1)
            conv(p + "mlp.fc2", layer.mlp.fc2)
        elif name == "norm":
            norm("norm", layer)
        elif name == "head":
            targets["head.weight"] = (layer.kernel, "linear")
            targets["head.bias"] = (layer.bias, "vector")
    return targets


def _to_keras(array, kind):
    return _pos_to_keras(array) if kind == "pos_embed" else porting.to_keras(array, kind)


def _to_torch(array, kind):
    return _pos_to_torch(array) if kind == "pos_embed" else porting.to_torch(array, kind)


def _torch_shape(shape, kind):
    if kind == "pos_embed":
        return (1, shape[2], shape[0], shape[1])
    return porting.torch_shape(shape, kind)


def load_state_dict(model, key, state_dict):
    """Loads an official-layout state dict into hybrid ``key``'s Keras model; everything
    is checked (:func:`keras_poolformer.porting.check_state_dict`) before anything is
    written. Returns a :class:`keras_poolformer.porting.PortReport`."""
    targets = keras_targets(model, key)
    arrays = {k: np.asarray(v) for k, v in state_dict.items()}
    expected = {k: _torch_shape(tuple(var.shape), kind) for k, (var, kind) in targets.items()}
    skipped = porting.check_state_dict(arrays, expected, f"model '{model.name}'")
    for k, (variable, kind) in targets.items():
        variable.assign(_to_keras(arrays[k], kind).astype(variable.dtype))
    return porting.PortReport(loaded=tuple(targets), skipped=skipped)


def export_state_dict(model, key):
    """The weights of hybrid ``key``'s Keras model in the official layout (float32 numpy
    arrays); the inverse of :func:`load_state_dict`."""
    return {
        k: np.ascontiguousarray(_to_torch(np.asarray(variable.numpy()), kind))
        for k, (variable, kind) in keras_targets(model, key).items()
    }


def detect(state, hint=None):
    """The hybrid key whose official tensors ``state`` holds exactly (classifier and
    final norm aside), or ``None``.

    The identity model has PoolFormer-S12's tensors (its mixers have none), so it is
    found only when ``hint`` (a model name or file name) names it: ``"id_s12"``,
    ``"metaformer_id_s12"`` or a file name containing ``metaformer_id_s12``.
    """
    hint = (hint or "").lower()
    trunk = {k: tuple(v.shape) for k, v in state.items() if not k.startswith(("norm.", "head."))}
    for key in FILENAMES:
        wanted = {k: v for k, v in official_shapes(key, None).items() if not k.startswith("norm.")}
        if trunk != wanted:
            continue
        if key != "id_s12" or "id_s12" in hint:
            return key
    return None


def classes_of(state):
    """Rows of the classifier in an official-layout hybrid state dict, or ``None``."""
    return int(state["head.weight"].shape[0]) if "head.weight" in state else None
