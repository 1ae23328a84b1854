"""PoolFormerV2: PoolFormer's pooling mixer in the baselines' block (StarReLU, no
biases, residual scales, norms before downsampling), 0.4-1.0 points above v1."""

from keras_poolformer.baselines.family import PRETRAINING, Family, Size, checkpoints

FAMILY = Family(
    key="poolformerv2",
    title="PoolFormerV2",
    config={"token_mixers": "pooling", "norm": "mln", "head": "linear"},
    summary=(
        "PoolFormerV2 mixes tokens by 3x3 average pooling (``avg_pool(x) - x``) in every "
        "stage, in the MetaFormer baselines' block; it takes any input size."
    ),
    recipe={**PRETRAINING, "optimizer": "adamw", "lr": 4e-3, "warmup_epochs": 5},
    sizes=(
        Size(
            "s12",
            "s12",
            params=11_891_712,
            macs=1.8e9,
            checkpoints=checkpoints("poolformerv2", "s12", {"in1k": 78.0}),
            recipe={"drop_path_rate": 0.1},
        ),
        Size(
            "s24",
            "s24",
            params=21_341_464,
            macs=3.4e9,
            checkpoints=checkpoints("poolformerv2", "s24", {"in1k": 80.7}),
            recipe={"drop_path_rate": 0.1},
        ),
        Size(
            "s36",
            "s36",
            params=30_791_216,
            macs=5.0e9,
            checkpoints=checkpoints("poolformerv2", "s36", {"in1k": 81.6}),
            recipe={"drop_path_rate": 0.2},
        ),
        Size(
            "m36",
            "m36",
            params=56_077_168,
            macs=8.8e9,
            checkpoints=checkpoints("poolformerv2", "m36", {"in1k": 82.2}),
            recipe={"drop_path_rate": 0.3},
        ),
        Size(
            "m48",
            "m48",
            params=73_346_056,
            macs=11.5e9,
            checkpoints=checkpoints("poolformerv2", "m48", {"in1k": 82.6}),
            recipe={"drop_path_rate": 0.4},
        ),
    ),
)

PoolFormerV2S12, PoolFormerV2S24, PoolFormerV2S36, PoolFormerV2M36, PoolFormerV2M48 = (
    FAMILY.constructors()
)
