"""Moving weights between the Keras MetaFormer baselines and the official layout.

The official layout is the state dict of sail-sg/metaformer's ``MetaFormer``
(``metaformer_baselines.py``), channels-last, so its ``nn.Linear`` weights are the
transposed ``Dense`` kernels::

    downsample_layers.0.conv.{weight,bias}         stem conv, OIHW
    downsample_layers.0.post_norm.weight           its norm (no bias)
    downsample_layers.{s}.pre_norm.weight          s = 1..3: norm, then
    downsample_layers.{s}.conv.{weight,bias}       the 3x3 stride-2 conv
    stages.{s}.{j}.norm1.weight, norm2.weight      block j of stage s (no biases)
    stages.{s}.{j}.token_mixer.*                   SepConv: pwconv1.weight (2C, C),
                                                   act1.{scale,bias} (1,), dwconv.weight
                                                   (2C, 1, 7, 7), pwconv2.weight;
                                                   attention: qkv.weight (3C, C),
                                                   proj.weight; random: random_matrix
    stages.{s}.{j}.res_scale{1,2}.scale            (C,), stages with residual scales
    stages.{s}.{j}.mlp.fc1.weight, fc2.weight      (4C, C), (C, 4C)
    stages.{s}.{j}.mlp.act.{scale,bias}            StarReLU, (1,) each
    norm.{weight,bias}                             the norm after the pooling
    head.{weight,bias}                             linear head, or the MLP head:
    head.fc1.*, head.norm.*, head.fc2.*

Pure functions on numpy arrays, over :mod:`keras_poolformer.porting`'s checks.
"""

import re

import numpy as np

from keras_poolformer import porting

_BLOCK_NAME = re.compile(r"stage(\d+)_block(\d+)$")
_DOWNSAMPLE = re.compile(r"downsample(\d+)(_norm)?$")


def official_shapes(config, classes=1000, in_channels=3, image_size=224):
    """Key -> shape of every tensor of an official-layout state dict of the model
    that ``config`` (a :class:`~keras_poolformer.registry.ModelSpec`'s ``config``)
    describes; ``classes=None`` for a model without its top. ``image_size`` sets
    the random mixers' matrices."""
    depths, dims = config["depths"], config["dims"]
    mixers = config["token_mixers"]
    mixers = [mixers] * 4 if isinstance(mixers, str) else list(mixers)
    scales = config.get("res_scale_init_values", (None, None, 1.0, 1.0))
    ratio = config.get("mlp_ratio", 4.0)
    shapes = {
        "downsample_layers.0.conv.weight": (dims[0], in_channels, 7, 7),
        "downsample_layers.0.conv.bias": (dims[0],),
        "downsample_layers.0.post_norm.weight": (dims[0],),
    }
    side = -(-image_size // 4)
    for s, (depth, dim, mixer) in enumerate(zip(depths, dims, mixers, strict=True)):
        if s > 0:
            side = -(-side // 2)
            p = f"downsample_layers.{s}."
            shapes[p + "pre_norm.weight"] = (dims[s - 1],)
            shapes[p + "conv.weight"] = (dim, dims[s - 1], 3, 3)
            shapes[p + "conv.bias"] = (dim,)
        hidden = int(ratio * dim)
        for j in range(depth):
            p = f"stages.{s}.{j}."
            shapes[p + "norm1.weight"] = (dim,)
            m = p + "token_mixer."
            if mixer == "sepconv":
                shapes[m + "pwconv1.weight"] = (2 * dim, dim)
                shapes[m + "act1.scale"] = (1,)
                shapes[m + "act1.bias"] = (1,)
                shapes[m + "dwconv.weight"] = (2 * dim, 1, 7, 7)
                shapes[m + "pwconv2.weight"] = (dim, 2 * dim)
            elif mixer == "attention":
                shapes[m + "qkv.weight"] = (3 * dim, dim)
                shapes[m + "proj.weight"] = (dim, dim)
            elif mixer == "random":
                shapes[m + "random_matrix"] = (side * side, side * side)
            if scales[s] is not None:
                shapes[p + "res_scale1.scale"] = (dim,)
            shapes[p + "norm2.weight"] = (dim,)
            shapes[p + "mlp.fc1.weight"] = (hidden, dim)
            shapes[p + "mlp.act.scale"] = (1,)
            shapes[p + "mlp.act.bias"] = (1,)
            shapes[p + "mlp.fc2.weight"] = (dim, hidden)
            if scales[s] is not None:
                shapes[p + "res_scale2.scale"] = (dim,)
    if classes is not None:
        last = dims[-1]
        shapes["norm.weight"] = (last,)
        shapes["norm.bias"] = (last,)
        if config.get("head") == "mlp":
            shapes["head.fc1.weight"] = (4 * last, last)
            shapes["head.fc1.bias"] = (4 * last,)
            shapes["head.norm.weight"] = (4 * last,)
            shapes["head.norm.bias"] = (4 * last,)
            shapes["head.fc2.weight"] = (classes, 4 * last)
            shapes["head.fc2.bias"] = (classes,)
        else:
            shapes["head.weight"] = (classes, last)
            shapes["head.bias"] = (classes,)
    return shapes


def keras_targets(model):
    """Official key -> ``(keras variable, kind)`` for every weight of a baseline
    model built by :func:`~keras_poolformer.baselines.MetaFormerBaseline` (with or
    without its top). ``kind`` says how the layouts differ (see
    :mod:`keras_poolformer.porting`)."""
    from keras_poolformer.baselines.layers import BaselineBlock, MlpHead

    targets = {}

    def conv(key, layer):
        targets[key + ".weight"] = (layer.kernel, "conv")
        targets[key + ".bias"] = (layer.bias, "vector")

    def dense(key, layer):
        targets[key + ".weight"] = (layer.kernel, "linear")
        if layer.use_bias:
            targets[key + ".bias"] = (layer.bias, "vector")

    def star(key, layer):
        targets[key + ".scale"] = (layer.scale, "vector")
        targets[key + ".bias"] = (layer.bias, "vector")

    for layer in model.layers:
        name = layer.name
        if name == "stem":
            conv("downsample_layers.0.conv", layer)
        elif name == "stem_norm":
            targets["downsample_layers.0.post_norm.weight"] = (layer.gamma, "vector")
        elif m := _DOWNSAMPLE.match(name):
            p = f"downsample_layers.{int(m[1])}."
            if m[2]:
                targets[p + "pre_norm.weight"] = (layer.gamma, "vector")
            else:
                conv(p + "conv", layer)
        elif (m := _BLOCK_NAME.match(name)) and isinstance(layer, BaselineBlock):
            p = f"stages.{int(m[1])}.{int(m[2])}."
            targets[p + "norm1.weight"] = (layer.norm1.gamma, "vector")
            mixer, kind = layer.token_mixer, layer.token_mixer_kind
            if kind == "sepconv":
                dense(p + "token_mixer.pwconv1", mixer.pwconv1)
                star(p + "token_mixer.act1", mixer.act)
                targets[p + "token_mixer.dwconv.weight"] = (mixer.dwconv.kernel, "depthwise")
                dense(p + "token_mixer.pwconv2", mixer.pwconv2)
            elif kind == "attention":
                dense(p + "token_mixer.qkv", mixer.qkv)
                dense(p + "token_mixer.proj", mixer.proj)
            elif kind == "random":
                targets[p + "token_mixer.random_matrix"] = (mixer.matrix, "vector")
            if layer.res_scale_1 is not None:
                targets[p + "res_scale1.scale"] = (layer.res_scale_1.scale, "vector")
            targets[p + "norm2.weight"] = (layer.norm2.gamma, "vector")
            dense(p + "mlp.fc1", layer.mlp.fc1)
            star(p + "mlp.act", layer.mlp.act)
            dense(p + "mlp.fc2", layer.mlp.fc2)
            if layer.res_scale_2 is not None:
                targets[p + "res_scale2.scale"] = (layer.res_scale_2.scale, "vector")
        elif name == "norm":
            targets["norm.weight"] = (layer.gamma, "vector")
            targets["norm.bias"] = (layer.beta, "vector")
        elif name == "head" and isinstance(layer, MlpHead):
            dense("head.fc1", layer.fc1)
            targets["head.norm.weight"] = (layer.norm.gamma, "vector")
            targets["head.norm.bias"] = (layer.norm.beta, "vector")
            dense("head.fc2", layer.fc2)
        elif name == "head":
            dense("head", layer)
    return targets


def is_baseline(model):
    """Whether ``model`` is a MetaFormer baseline built by this package."""
    return any(layer.name == "stem_norm" for layer in model.layers)


def load_state_dict(model, state_dict):
    """Loads an official-layout state dict into a baseline model; everything is
    checked before anything is written (see :func:`keras_poolformer.porting.load_state_dict`).

    Returns:
        A :class:`keras_poolformer.porting.PortReport`.
    """
    targets = keras_targets(model)
    arrays = {key: np.asarray(value) for key, value in state_dict.items()}
    expected = {key: porting.torch_shape(var.shape, kind) for key, (var, kind) in targets.items()}
    skipped = porting.check_state_dict(arrays, expected, f"model '{model.name}'")
    for key, (variable, kind) in targets.items():
        variable.assign(porting.to_keras(arrays[key], kind).astype(variable.dtype))
    return porting.PortReport(loaded=tuple(targets), skipped=skipped)


def export_state_dict(model):
    """The weights of a baseline model as an official-layout state dict (float32
    numpy arrays in PyTorch's layout); the inverse of :func:`load_state_dict`."""
    return {
        key: np.ascontiguousarray(porting.to_torch(np.asarray(variable.numpy()), kind))
        for key, (variable, kind) in keras_targets(model).items()
    }
