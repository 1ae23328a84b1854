"""RandFormer: IdentityFormer with a frozen random token-mixing matrix in the last
two stages, to show that even mixing that is not learned helps."""

from keras_poolformer.baselines.family import PRETRAINING, Family, Size, checkpoints

FAMILY = Family(
    key="randformer",
    title="RandFormer",
    config={
        "token_mixers": ("identity", "identity", "random", "random"),
        "norm": "mln",
        "head": "linear",
    },
    summary=(
        "RandFormer mixes the tokens of stages 3 and 4 with a random matrix that is never "
        "trained (each row a softmax of uniform noise; 196 and 49 tokens at 224x224), and "
        "has no mixer in stages 1 and 2. The matrices fix the input size at 224x224."
    ),
    # params count the frozen matrices too (0.2M-0.9M; the official README's "+0.2M").
    recipe={**PRETRAINING, "optimizer": "adamw", "lr": 4e-3, "warmup_epochs": 5},
    sizes=(
        Size(
            "s12",
            "s12",
            params=12_127_010,
            macs=1.9e9,
            checkpoints=checkpoints("randformer", "s12", {"in1k": 76.6}, in_timm=False),
            recipe={"drop_path_rate": 0.1},
        ),
        Size(
            "s24",
            "s24",
            params=21_812_060,
            macs=3.5e9,
            checkpoints=checkpoints("randformer", "s24", {"in1k": 78.2}, in_timm=False),
            recipe={"drop_path_rate": 0.1},
        ),
        Size(
            "s36",
            "s36",
            params=31_497_110,
            macs=5.2e9,
            checkpoints=checkpoints("randformer", "s36", {"in1k": 79.5}, in_timm=False),
            recipe={"drop_path_rate": 0.2},
        ),
        Size(
            "m36",
            "m36",
            params=56_783_062,
            macs=9.0e9,
            checkpoints=checkpoints("randformer", "m36", {"in1k": 81.2}, in_timm=False),
            recipe={"drop_path_rate": 0.3},
        ),
        Size(
            "m48",
            "m48",
            params=74_287_248,
            macs=11.9e9,
            checkpoints=checkpoints("randformer", "m48", {"in1k": 81.4}, in_timm=False),
            recipe={"drop_path_rate": 0.3},
        ),
    ),
)

RandFormerS12, RandFormerS24, RandFormerS36, RandFormerM36, RandFormerM48 = FAMILY.constructors()
