"""The models of the first paper in :mod:`keras_poolformer.registry`: PoolFormer v1
(S12, S24, S36, M36, M48, family ``"poolformer"``) and the official MetaFormers of
sail-sg/poolformer's ``models/metaformer.py`` (family ``"metaformer"``).

This module imports the registry only, so that the modules the builders rely on
(:mod:`~keras_poolformer.porting`, :mod:`~keras_poolformer.weights_file`, the
converter) can read the tables without importing :mod:`keras_poolformer.models`.

Each spec's ``config`` holds exactly the builder's architecture arguments
(:func:`keras_poolformer.PoolFormer` for the variants, :func:`keras_poolformer.MetaFormer`
for the hybrids); ``recipe`` the training recipe's stochastic depth. The short names of
the first releases (``"s12"``, ``"pppa_s12"``...) stay: :data:`SHORT_NAMES`.

Reference:
    Yu et al., "MetaFormer is Actually What You Need for Vision", CVPR 2022.
    https://arxiv.org/abs/2111.11418 (official code: github.com/sail-sg/poolformer)
"""

from keras_poolformer.registry import Checkpoint, ModelSpec, add_alias, register

RELEASE_URL = "https://github.com/sail-sg/poolformer/releases/download/v1.0/"

# The five variants of the paper (Table 2): depths, dims, the training recipe's
# LayerScale start and stochastic depth, the evaluation crop of the released weights,
# and the paper's parameters, MACs and top-1 at 224x224.
_VARIANTS = (
    # key, depths, dims, layer scale, drop path, crop, params, MACs, top-1
    ("s12", (2, 2, 6, 2), (64, 128, 320, 512), 1e-5, 0.1, 0.9, 11_915_176, 1.8e9, 77.2),
    ("s24", (4, 4, 12, 4), (64, 128, 320, 512), 1e-5, 0.1, 0.9, 21_388_968, 3.4e9, 80.3),
    ("s36", (6, 6, 18, 6), (64, 128, 320, 512), 1e-6, 0.2, 0.9, 30_862_760, 5.0e9, 81.4),
    ("m36", (6, 6, 18, 6), (96, 192, 384, 768), 1e-6, 0.3, 0.95, 56_172_520, 8.8e9, 82.1),
    ("m48", (8, 8, 24, 8), (96, 192, 384, 768), 1e-6, 0.4, 0.95, 73_473_448, 11.6e9, 82.5),
)

# The official MetaFormer models, all of S12's size: the identity-mixer baseline of the
# paper's Table 5 and the hybrids of its Table 6. As in the official code, the attention
# hybrids use LayerNorm over channels and a position embedding before their first
# attention stage; the others keep MLN. ``params`` is worked out in tests/test_models.py.
# Their top-1 is not recorded in this repository (None). Their MACs are this package's
# count of the built graph (analysis.count_macs, 1000 classes, 224x224), rounded to 0.1G
# as the paper rounds: the repository does not record published figures for them.
_HYBRIDS = (
    # key, constructor, mixers, norm, position embeddings, release file, crop, params, MACs
    ("id_s12", "MetaFormerIdS12", ("identity",) * 4, "mln", (),
     "metaformer_id_s12.pth.tar", 0.9, 11_915_176, 1.8e9),
    ("pppa_s12", "MetaFormerPPPAS12", ("pooling", "pooling", "pooling", "attention"),
     "layernorm", (3,), "metaformer_pppa_s12_224.pth.tar", 0.95, 14_038_440, 1.9e9),
    ("ppaa_s12", "MetaFormerPPAAS12", ("pooling", "pooling", "attention", "attention"),
     "layernorm", (2,), "metaformer_ppaa_s12_224.pth.tar", 0.95, 16_535_592, 2.5e9),
    ("pppf_s12", "MetaFormerPPPFS12", ("pooling", "pooling", "pooling", "spatial_mlp"),
     "mln", (), "metaformer_pppf_s12_224.pth.tar", 0.9, 11_919_978, 1.8e9),
    ("ppff_s12", "MetaFormerPPFFS12", ("pooling", "pooling", "spatial_mlp", "spatial_mlp"),
     "mln", (), "metaformer_ppff_s12_224.pth.tar", 0.95, 12_150_474, 1.9e9),
)  # fmt: skip

# registry name -> the short key of the first releases, and back.
SHORT_NAMES = {}
VARIANT_SPECS = {}  # "s12" -> ModelSpec
HYBRID_SPECS = {}  # "pppa_s12" -> ModelSpec

for _key, _depths, _dims, _scale, _drop, _crop, _params, _macs, _top1 in _VARIANTS:
    VARIANT_SPECS[_key] = register(
        ModelSpec(
            name=f"poolformer_{_key}",
            family="poolformer",
            constructor=f"PoolFormer{_key.upper()}",
            config={
                "depths": _depths,
                "dims": _dims,
                "mlp_ratio": 4.0,
                "pool_size": 3,
                "layer_scale_init_value": _scale,
            },
            params=_params,
            macs=_macs,
            checkpoints=(
                Checkpoint(
                    tag="in1k",
                    url=f"{RELEASE_URL}poolformer_{_key}.pth.tar",
                    resolution=224,
                    crop_pct=_crop,
                    classes=1000,
                    top1=_top1,
                    timm=f"poolformer_{_key}.sail_in1k",
                ),
            ),
            recipe={"drop_path_rate": _drop},
        )
    )

_S12 = VARIANT_SPECS["s12"]
for _key, _constructor, _mixers, _norm, _pos, _file, _crop, _params, _macs in _HYBRIDS:
    HYBRID_SPECS[_key] = register(
        ModelSpec(
            name=f"metaformer_{_key}",
            family="metaformer",
            constructor=_constructor,
            config={
                "depths": _S12.config["depths"],
                "dims": _S12.config["dims"],
                "token_mixers": _mixers,
                "norm": _norm,
                "activation": "gelu",
                "mlp_ratio": 4.0,
                "position_embeddings": _pos,
                "layer_scale_init_value": _S12.config["layer_scale_init_value"],
            },
            params=_params,
            macs=_macs,
            checkpoints=(
                Checkpoint(
                    tag="in1k",
                    url=f"{RELEASE_URL}{_file}",
                    resolution=224,
                    crop_pct=_crop,
                    classes=1000,
                    top1=None,
                ),
            ),
            recipe={"drop_path_rate": _S12.recipe["drop_path_rate"]},
        )
    )

SHORT_NAMES.update({key: spec.name for key, spec in VARIANT_SPECS.items()})
SHORT_NAMES.update({key: spec.name for key, spec in HYBRID_SPECS.items()})
for _alias, _name in SHORT_NAMES.items():
    add_alias(_alias, _name)


def short_key(spec):
    """The short key (``"s12"``, ``"pppa_s12"``) of a spec of this module."""
    return spec.name.removeprefix(f"{spec.family}_")


def variant_configs():
    """``MODEL_CONFIGS`` of :mod:`keras_poolformer.models`, as the first releases had it:
    ``{"s12": {depths, dims, layer_scale_init_value, drop_path_rate, crop_pct, params,
    macs, top1}, ...}``."""
    return {
        key: {
            "depths": spec.config["depths"],
            "dims": spec.config["dims"],
            "layer_scale_init_value": spec.config["layer_scale_init_value"],
            "drop_path_rate": spec.recipe["drop_path_rate"],
            "crop_pct": spec.checkpoints[0].crop_pct,
            "params": spec.params,
            "macs": spec.macs,
            "top1": spec.top1,
        }
        for key, spec in VARIANT_SPECS.items()
    }


def hybrid_configs():
    """``HYBRID_CONFIGS`` of :mod:`keras_poolformer.models`: ``{"pppa_s12":
    {token_mixers, norm, position_embeddings, crop_pct, params}, ...}``."""
    return {
        key: {
            "token_mixers": spec.config["token_mixers"],
            "norm": spec.config["norm"],
            "position_embeddings": spec.config["position_embeddings"],
            "crop_pct": spec.checkpoints[0].crop_pct,
            "params": spec.params,
        }
        for key, spec in HYBRID_SPECS.items()
    }
