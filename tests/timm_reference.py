"""The independent PyTorch reference for the MetaFormer baselines (Yu et al., "MetaFormer
Baselines for Vision", TPAMI 2023): PoolFormerV2, IdentityFormer, RandFormer, ConvFormer
and CAFormer, built with timm (pinned by ``.ci/setup test``).

timm registers PoolFormerV2, ConvFormer and CAFormer itself; IdentityFormer and
RandFormer are built here from timm's generic ``MetaFormer`` with the official
configurations (sail-sg/metaformer), RandFormer with this file's :class:`RandomMixing`.
Every weight is then set to seeded, non-trivial random values (:func:`reference_model`).
:func:`official_state_dict` gives the same weights under the official sail-sg keys and
shapes, :func:`timm_state_dict` under timm's own; :func:`save_state_dict` writes either as
``.pth`` or ``.safetensors`` for the converter tests.

Nothing here uses keras_poolformer's code or constants.
"""

import re
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

STAND_INS = Path(__file__).resolve().parent / "stand_ins"

# The architectures, from the official metaformer_baselines.py: blocks per stage and
# channels per stage. timm's own registrations are checked against these.
_S12, _S24, _S36 = (2, 2, 6, 2), (4, 4, 12, 4), (6, 6, 18, 6)
_M48 = (8, 8, 24, 8)
_SMALL, _MEDIUM = (64, 128, 320, 512), (96, 192, 384, 768)
_POOLFORMERV2_SIZES = {
    "s12": (_S12, _SMALL),
    "s24": (_S24, _SMALL),
    "s36": (_S36, _SMALL),
    "m36": (_S36, _MEDIUM),
    "m48": (_M48, _MEDIUM),
}
_FORMER_SIZES = {
    "s18": ((3, 3, 9, 3), _SMALL),
    "s36": ((3, 12, 18, 3), _SMALL),
    "m36": ((3, 12, 18, 3), (96, 192, 384, 576)),
    "b36": ((3, 12, 18, 3), (128, 256, 512, 768)),
}
ARCHITECTURES = {
    f"{family}_{size}": arch
    for family, sizes in (
        ("poolformerv2", _POOLFORMERV2_SIZES),
        ("identityformer", _POOLFORMERV2_SIZES),
        ("randformer", _POOLFORMERV2_SIZES),
        ("convformer", _FORMER_SIZES),
        ("caformer", _FORMER_SIZES),
    )
    for size, arch in sizes.items()
}

# The token mixer of each stage, per family (official configurations).
MIXERS = {
    "poolformerv2": ("pooling",) * 4,
    "identityformer": ("identity",) * 4,
    "randformer": ("identity", "identity", "random", "random"),
    "convformer": ("sepconv",) * 4,
    "caformer": ("sepconv", "sepconv", "attention", "attention"),
}
# RandFormer's mixing matrices are sized for 224 x 224 inputs: 14 x 14 and 7 x 7 tokens.
RANDOM_MIXING_TOKENS = {2: 196, 3: 49}

# Parameter counts as timm reports them (sum of numel over all parameters).
TIMM_PARAMS = {
    "caformer_s18": 26_341_656,
    "caformer_s36": 39_297_102,
    "caformer_m36": 56_204_878,
    "caformer_b36": 98_753_614,
    "convformer_s18": 26_774_448,
    "convformer_s36": 40_012_152,
    "convformer_m36": 57_051_640,
    "convformer_b36": 99_882_616,
    "poolformerv2_s12": 11_891_712,
    "poolformerv2_s24": 21_341_464,
    "poolformerv2_s36": 30_791_216,
    "poolformerv2_m36": 56_077_168,
    "poolformerv2_m48": 73_346_056,
}


def family(name):
    """``"caformer"`` for ``"caformer_s18"``; raises ``ValueError`` for unknown names."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown MetaFormer baseline {name!r}; known: {sorted(ARCHITECTURES)}")
    return name.split("_")[0]


def uses_mlp_head(name):
    """Whether the model's classifier is the two-layer MLP head (ConvFormer, CAFormer)
    rather than a single Linear layer."""
    return family(name) in ("convformer", "caformer")


def import_timm():
    """Imports and returns timm.

    timm imports a few torchvision names at import time (data transforms, datasets,
    FrozenBatchNorm2d) that the MetaFormer models never use, and no torchvision wheel
    loads against the CPU torch the tests pin. When the real torchvision cannot be
    imported, the placeholders in ``tests/stand_ins`` answer those imports while timm is
    imported, and are taken off the import path and out of ``sys.modules`` afterwards, so
    that nothing else (transformers, say) mistakes them for torchvision."""
    if "timm" in sys.modules:
        return sys.modules["timm"]
    try:
        import torchvision  # noqa: F401
    except Exception:  # missing (ImportError) or a wheel that does not load against torch
        pass
    else:
        import timm

        return timm

    def drop_torchvision():
        for module in [
            m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")
        ]:
            del sys.modules[module]

    drop_torchvision()
    sys.path.insert(0, str(STAND_INS))
    try:
        import timm
        import timm.models.metaformer  # noqa: F401
    finally:
        sys.path.remove(str(STAND_INS))
        drop_torchvision()
    return timm


# Importing this file imports timm, so that ``import timm`` works after it anywhere.
import_timm()


class RandomMixing(nn.Module):
    """RandFormer's token mixer: a fixed (frozen) random N x N matrix M, each row a softmax
    of uniform random numbers, mixes the N = H * W token positions:
    ``out[b, m, c] = sum_n M[m, n] x[b, n, c]``, tokens in row-major (h, w) order.

    timm's MetaFormer runs non-attention stages channels-first and builds each mixer as
    ``mixer(dim=..., proj_drop=..., device=..., dtype=...)``; this takes exactly those
    (``dim`` and ``proj_drop`` are unused: the official mixer has neither a per-channel
    part nor dropout) and mixes ``(B, C, H, W)`` inputs. A subclass, not a ``partial``,
    sets N, since timm tests the mixer with ``issubclass``."""

    num_tokens = 196

    def __init__(self, dim, proj_drop=0.0, device=None, dtype=None):
        super().__init__()
        n = self.num_tokens
        matrix = torch.softmax(torch.rand(n, n, device=device, dtype=dtype), dim=-1)
        self.random_matrix = nn.Parameter(matrix, requires_grad=False)

    def forward(self, x):
        batch, channels, height, width = x.shape
        if height * width != self.num_tokens:
            raise ValueError(f"RandomMixing mixes {self.num_tokens} tokens, not {height} x {width}")
        tokens = x.reshape(batch, channels, height * width)  # n = h * width + w
        mixed = torch.matmul(tokens, self.random_matrix.t())  # [b, c, m]
        return mixed.reshape(batch, channels, height, width)


class RandomMixing49(RandomMixing):
    """:class:`RandomMixing` of the last stage: 7 x 7 tokens at 224 x 224 inputs."""

    num_tokens = 49


def build_model(name, device=None):
    """The timm model for ``name`` with timm's own initialisation (``device="meta"``
    builds it without memory or compute, for counting parameters)."""
    timm = import_timm()
    from timm.models import metaformer

    kind = family(name)
    depths, dims = ARCHITECTURES[name]
    if kind in ("identityformer", "randformer"):
        if kind == "identityformer":
            mixers = nn.Identity
        else:
            mixers = [nn.Identity, nn.Identity, RandomMixing, RandomMixing49]
        model = metaformer.MetaFormer(
            depths=depths,
            dims=dims,
            token_mixers=mixers,
            norm_layers=metaformer.GroupNorm1NoBias,
            use_mlp_head=False,
            device=device,
        )
    else:
        model = timm.create_model(name, pretrained=False, device=device)
    built = tuple(len(stage.blocks) for stage in model.stages)
    widths = (model.stem.conv.out_channels,) + tuple(
        stage.downsample.conv.out_channels for stage in list(model.stages)[1:]
    )
    if (built, widths) != (depths, dims):
        raise AssertionError(f"{name}: timm built {built}, {widths}; official {depths}, {dims}")
    return model


def parameter_count(model, frozen=True):
    """Sum of numel over the model's parameters; ``frozen=False`` leaves out those that
    do not train (RandFormer's random matrices)."""
    return sum(p.numel() for p in model.parameters() if frozen or p.requires_grad)


# The MLP head's first layer is scaled down so that the head norm's input has a variance
# of about 1e-4: the norm's eps (timm 1e-6, official 1e-5) then moves the logits by a few
# percent, which a parity test can see (at unit variance it moves them by about 1e-5).
_HEAD_FC1_GAIN = 0.1


def _randomize(model, rng):
    """Sets every parameter of ``model`` from the numpy Generator ``rng``, in
    ``named_modules`` order, by the kind of module that owns it; raises on a parameter
    of a kind it does not know, so that no weight keeps timm's initialisation."""
    from timm.models import metaformer

    norms = (nn.LayerNorm, nn.GroupNorm)
    done = set()
    with torch.no_grad():
        for module_name, module in model.named_modules():
            head_fc1 = module_name == "head.fc.fc1"
            for param_name, param in module.named_parameters(recurse=False):
                shape = tuple(param.shape)
                kind = (type(module), param_name)
                if isinstance(module, (nn.Conv2d, nn.Linear)) and param_name == "weight":
                    # fan-in scaling keeps activations O(1) through 48 blocks
                    gain = _HEAD_FC1_GAIN if head_fc1 else 1.0
                    value = rng.normal(0.0, gain / np.sqrt(np.prod(shape[1:])), shape)
                elif isinstance(module, (nn.Conv2d, nn.Linear)) and param_name == "bias":
                    value = rng.normal(0.0, 0.01 if head_fc1 else 0.05, shape)
                elif isinstance(module, norms) and param_name == "weight":
                    value = rng.uniform(0.8, 1.2, shape)
                elif isinstance(module, norms) and param_name == "bias":
                    value = rng.uniform(-0.1, 0.1, shape)
                elif kind in ((metaformer.Scale, "scale"), (metaformer.StarReLU, "scale")):
                    value = rng.uniform(0.8, 1.2, shape)
                elif kind == (metaformer.StarReLU, "bias"):
                    # about -scale / 2 (the official init: 0.8944 and -0.4472), so that
                    # StarReLU of a unit normal has mean near 0; with a bias near 0 the
                    # blocks add a constant that swamps what the input changes
                    value = -0.5 * module.scale.numpy() + rng.uniform(-0.1, 0.1, shape)
                elif isinstance(module, RandomMixing) and param_name == "random_matrix":
                    uniform = torch.from_numpy(rng.uniform(0.0, 1.0, shape).astype(np.float32))
                    value = torch.softmax(uniform, dim=-1).numpy()
                else:
                    raise AssertionError(f"no random init for {module_name}.{param_name} {kind}")
                param.copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)))
                done.add(f"{module_name}.{param_name}" if module_name else param_name)
    missing = {n for n, _ in model.named_parameters()} - done
    if missing:
        raise AssertionError(f"parameters left with timm's init: {sorted(missing)}")


def reference_model(name, seed=0, head_norm_eps=None):
    """An eval-mode timm model for ``name`` with every weight seeded random (numpy
    ``default_rng(seed)``): conv and linear weights normal with std 1/sqrt(fan-in)
    (0.1/sqrt(fan-in) for the MLP head's first layer, see ``_HEAD_FC1_GAIN``), biases
    normal with std 0.05 (0.01 there), norm weights uniform 1 +- 0.2 and norm biases
    +- 0.1, res scales and StarReLU scales uniform 1 +- 0.2, StarReLU biases
    -scale/2 +- 0.1, and RandFormer's frozen matrices a row softmax of uniform noise.
    Logits then have a std near 1, about half of it varying with the image.

    ``head_norm_eps`` sets the eps of the MLP head's LayerNorm (``head.fc.norm``) of
    ConvFormer and CAFormer: timm uses 1e-6 there, the official code PyTorch's default
    1e-5. ``None`` keeps timm's. Raises ``ValueError`` for the families whose head is a
    single Linear layer (they have no such norm)."""
    model = build_model(name)
    if head_norm_eps is not None:
        if not uses_mlp_head(name):
            raise ValueError(f"{name} has a Linear head: no head norm to set eps on")
        model.head.fc.norm.eps = float(head_norm_eps)
    _randomize(model, np.random.default_rng(seed))
    return model.eval()


def timm_state_dict(model):
    """The model's weights in timm's layout (timm hub checkpoints): its state dict as
    float32 numpy arrays."""
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}


# timm key (after the block renaming below) -> official key, first match wins.
_TIMM_TO_OFFICIAL = [
    (r"^stem\.conv\.", "downsample_layers.0.conv."),
    (r"^stem\.norm\.", "downsample_layers.0.post_norm."),
    (r"^stages\.(\d+)\.downsample\.conv\.", r"downsample_layers.\1.conv."),
    (r"^stages\.(\d+)\.downsample\.norm\.", r"downsample_layers.\1.pre_norm."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2."),
    (r"^head\.norm\.", "norm."),
    (r"^head\.fc\.", "head."),
]
# Official nn.Linear layers that timm runs as 1 x 1 convolutions (channels-first stages).
_OFFICIAL_LINEARS = re.compile(r"\.(mlp\.fc[12]|token_mixer\.pwconv[12])\.weight$")


def official_key(timm_key):
    """The official sail-sg/metaformer key for a timm MetaFormer key."""
    for pattern, replacement in _TIMM_TO_OFFICIAL:
        key, hits = re.subn(pattern, replacement, timm_key)
        if hits:
            return key
    raise KeyError(f"no official key for {timm_key!r}")


def official_keys(name):
    """The official model's state-dict keys for ``name``, from the architecture alone
    (not from a model): what :func:`official_state_dict` must produce."""
    kind = family(name)
    depths, _ = ARCHITECTURES[name]
    # the stem normalises after its conv, the other downsamplings before theirs
    keys = ["downsample_layers.0.post_norm.weight"]
    for i in range(1, 4):
        keys.append(f"downsample_layers.{i}.pre_norm.weight")
    keys += [f"downsample_layers.{i}.conv.{p}" for i in range(4) for p in ("weight", "bias")]
    mixer_keys = {
        "pooling": [],
        "identity": [],
        "random": ["random_matrix"],
        "sepconv": ["pwconv1.weight", "act1.scale", "act1.bias", "dwconv.weight", "pwconv2.weight"],
        "attention": ["qkv.weight", "proj.weight"],
    }
    for i, depth in enumerate(depths):
        for j in range(depth):
            block = f"stages.{i}.{j}."
            keys += [block + "norm1.weight", block + "norm2.weight"]
            keys += [block + "token_mixer." + k for k in mixer_keys[MIXERS[kind][i]]]
            if i >= 2:  # res scales on the last two stages, no layer scales
                keys += [block + "res_scale1.scale", block + "res_scale2.scale"]
            keys += [block + f"mlp.{k}" for k in ("fc1.weight", "act.scale", "act.bias")]
            keys.append(block + "mlp.fc2.weight")
    keys += ["norm.weight", "norm.bias"]
    if uses_mlp_head(name):
        keys += [
            f"head.{layer}.{p}" for layer in ("fc1", "norm", "fc2") for p in ("weight", "bias")
        ]
    else:
        keys += ["head.weight", "head.bias"]
    return keys


def official_state_dict(name, model):
    """The weights of ``model`` (a timm model for ``name``) in the official
    sail-sg/metaformer layout: official keys, and the official shapes (the MLPs and
    SepConv's pointwise layers are ``nn.Linear`` there, ``(out, in)``, where timm has
    ``(out, in, 1, 1)`` convolutions). Float32 numpy arrays; raises if the keys are not
    exactly :func:`official_keys` of ``name``."""
    timm_state = model.state_dict()
    keys = {official_key(key): key for key in timm_state}
    expected = official_keys(name)
    if sorted(keys) != sorted(expected) or len(keys) != len(timm_state):
        raise AssertionError(
            f"{name}: official keys differ: extra {sorted(set(keys) - set(expected))}, "
            f"missing {sorted(set(expected) - set(keys))}"
        )
    state = {}
    for new_key, key in keys.items():
        value = timm_state[key].detach().cpu().numpy().astype(np.float32)
        if _OFFICIAL_LINEARS.search(new_key) and value.ndim == 4:
            if value.shape[2:] != (1, 1):
                raise AssertionError(f"{key}: expected a 1 x 1 conv, got {value.shape}")
            value = value.reshape(value.shape[:2])
        state[new_key] = value
    return state


def save_state_dict(state, path):
    """Writes a state dict of numpy arrays (either layout) to ``path``: ``.pth`` with
    ``torch.save`` (a plain dict of tensors, as the official and timm checkpoints are),
    ``.safetensors`` with safetensors (as timm's hub ``model.safetensors``). Returns
    the path."""
    path = Path(path)
    tensors_np = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}
    if path.suffix == ".pth":
        torch.save({k: torch.from_numpy(v) for k, v in tensors_np.items()}, path)
    elif path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(tensors_np, str(path))
    else:
        raise ValueError(f"save_state_dict writes .pth or .safetensors, not {path.name}")
    return path


def reference_logits(model, normalized_images):
    """Logits of the torch ``model`` for channels-last, already normalised float32
    images ``(B, H, W, 3)``; float32 numpy ``(B, classes)``."""
    x = torch.from_numpy(np.ascontiguousarray(normalized_images.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        return model(x.float()).numpy()
