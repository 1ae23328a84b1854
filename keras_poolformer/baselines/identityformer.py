"""IdentityFormer: the MetaFormer baseline with no token mixing at all (identity
mixers), the lower bound the paper measures every other mixer against."""

from keras_poolformer.baselines.family import PRETRAINING, Family, Size, checkpoints

FAMILY = Family(
    key="identityformer",
    title="IdentityFormer",
    config={"token_mixers": "identity", "norm": "mln", "head": "linear"},
    summary=(
        "IdentityFormer has no token mixer (the identity) in any stage: only the "
        "downsampling convolutions mix neighbouring pixels. It takes any input size."
    ),
    recipe={**PRETRAINING, "optimizer": "adamw", "lr": 4e-3, "warmup_epochs": 5},
    sizes=(
        Size(
            "s12",
            "s12",
            params=11_891_712,
            macs=1.8e9,
            checkpoints=checkpoints("identityformer", "s12", {"in1k": 74.6}, in_timm=False),
            recipe={"drop_path_rate": 0.1},
        ),
        Size(
            "s24",
            "s24",
            params=21_341_464,
            macs=3.4e9,
            checkpoints=checkpoints("identityformer", "s24", {"in1k": 78.2}, in_timm=False),
            recipe={"drop_path_rate": 0.1},
        ),
        Size(
            "s36",
            "s36",
            params=30_791_216,
            macs=5.0e9,
            checkpoints=checkpoints("identityformer", "s36", {"in1k": 79.3}, in_timm=False),
            recipe={"drop_path_rate": 0.2},
        ),
        Size(
            "m36",
            "m36",
            params=56_077_168,
            macs=8.8e9,
            checkpoints=checkpoints("identityformer", "m36", {"in1k": 80.0}, in_timm=False),
            recipe={"drop_path_rate": 0.3},
        ),
        Size(
            "m48",
            "m48",
            params=73_346_056,
            macs=11.5e9,
            checkpoints=checkpoints("identityformer", "m48", {"in1k": 80.4}, in_timm=False),
            recipe={"drop_path_rate": 0.4},
        ),
    ),
)

(
    IdentityFormerS12,
    IdentityFormerS24,
    IdentityFormerS36,
    IdentityFormerM36,
    IdentityFormerM48,
) = FAMILY.constructors()
