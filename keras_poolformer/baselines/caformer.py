"""CAFormer: ConvFormer's separable convolutions in stages 1-2 and self-attention in
stages 3-4, the strongest of the baselines."""

from keras_poolformer.baselines.family import PRETRAINING, Family, Size, checkpoints

FAMILY = Family(
    key="caformer",
    title="CAFormer",
    config={
        "token_mixers": ("sepconv", "sepconv", "attention", "attention"),
        "norm": "channel",
        "head": "mlp",
    },
    summary=(
        "CAFormer mixes tokens with inverted separable convolutions in stages 1 and 2 and "
        "with multi-head self-attention (heads of 32 channels, no biases, no position "
        "embedding) in stages 3 and 4, and classifies with an MLP head. It takes any "
        "input size."
    ),
    recipe={**PRETRAINING, "optimizer": "lamb", "lr": 8e-3, "warmup_epochs": 20},
    sizes=(
        Size(
            "s18",
            "s18",
            params=26_341_656,
            macs=4.1e9,
            checkpoints=checkpoints(
                "caformer",
                "s18",
                {
                    "in1k": 83.6,
                    "in1k_384": 85.0,
                    "in22k_ft_in1k": 84.1,
                    "in22k_ft_in1k_384": 85.4,
                    "in22k": None,
                },
            ),
            recipe={"drop_path_rate": 0.15, "head_dropout": 0.0},
        ),
        Size(
            "s36",
            "cs36",
            params=39_297_102,
            macs=8.0e9,
            checkpoints=checkpoints(
                "caformer",
                "s36",
                {
                    "in1k": 84.5,
                    "in1k_384": 85.7,
                    "in22k_ft_in1k": 85.8,
                    "in22k_ft_in1k_384": 86.9,
                    "in22k": None,
                },
            ),
            recipe={"drop_path_rate": 0.3, "head_dropout": 0.4},
        ),
        Size(
            "m36",
            "cm36",
            params=56_204_878,
            macs=13.2e9,
            checkpoints=checkpoints(
                "caformer",
                "m36",
                {
                    "in1k": 85.2,
                    "in1k_384": 86.2,
                    "in22k_ft_in1k": 86.6,
                    "in22k_ft_in1k_384": 87.5,
                    "in22k": None,
                },
            ),
            recipe={"drop_path_rate": 0.4, "head_dropout": 0.4},
        ),
        Size(
            "b36",
            "cb36",
            params=98_753_614,
            macs=23.2e9,
            checkpoints=checkpoints(
                "caformer",
                "b36",
                {
                    "in1k": 85.5,
                    "in1k_384": 86.4,
                    "in22k_ft_in1k": 87.4,
                    "in22k_ft_in1k_384": 88.1,
                    "in22k": None,
                },
            ),
            recipe={"drop_path_rate": 0.6, "head_dropout": 0.5},
        ),
    ),
)

CAFormerS18, CAFormerS36, CAFormerM36, CAFormerB36 = FAMILY.constructors()
