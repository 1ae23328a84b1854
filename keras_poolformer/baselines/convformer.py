"""ConvFormer: the MetaFormer baseline with separable convolutions (MobileNetV2's
inverted separable conv, 7x7 depthwise) as token mixer and an MLP head."""

from keras_poolformer.baselines.family import PRETRAINING, Family, Size, checkpoints

FAMILY = Family(
    key="convformer",
    title="ConvFormer",
    config={"token_mixers": "sepconv", "norm": "channel", "head": "mlp"},
    summary=(
        "ConvFormer mixes tokens with inverted separable convolutions (pointwise to twice "
        "the channels, StarReLU, 7x7 depthwise, pointwise back) in every stage and "
        "classifies with an MLP head. It takes any input size."
    ),
    recipe={**PRETRAINING, "optimizer": "adamw", "lr": 4e-3, "warmup_epochs": 20},
    sizes=(
        Size(
            "s18",
            "s18",
            params=26_774_448,
            macs=3.9e9,
            checkpoints=checkpoints(
                "convformer",
                "s18",
                {
                    "in1k": 83.0,
                    "in1k_384": 84.4,
                    "in22k_ft_in1k": 83.7,
                    "in22k_ft_in1k_384": 85.0,
                    "in22k": None,
                },
            ),
            recipe={"drop_path_rate": 0.2, "head_dropout": 0.0},
        ),
        Size(
            "s36",
            "cs36",
            params=40_012_152,
            macs=7.6e9,
            checkpoints=checkpoints(
                "convformer",
                "s36",
                {
                    "in1k": 84.1,
                    "in1k_384": 85.4,
                    "in22k_ft_in1k": 85.4,
                    "in22k_ft_in1k_384": 86.4,
                    "in22k": None,
                },
            ),
            recipe={"drop_path_rate": 0.3, "head_dropout": 0.0},
        ),
        Size(
            "m36",
            "cm36",
            params=57_051_640,
            macs=12.8e9,
            checkpoints=checkpoints(
                "convformer",
                "m36",
                {
                    "in1k": 84.5,
                    "in1k_384": 85.6,
                    "in22k_ft_in1k": 86.1,
                    "in22k_ft_in1k_384": 86.9,
                    "in22k": None,
                },
            ),
            recipe={"drop_path_rate": 0.4, "head_dropout": 0.0},
        ),
        Size(
            "b36",
            "cb36",
            params=99_882_616,
            macs=22.6e9,
            checkpoints=checkpoints(
                "convformer",
                "b36",
                {
                    "in1k": 84.8,
                    "in1k_384": 85.7,
                    "in22k_ft_in1k": 87.0,
                    "in22k_ft_in1k_384": 87.6,
                    "in22k": None,
                },
            ),
            recipe={"drop_path_rate": 0.6, "head_dropout": 0.0},
        ),
    ),
)

ConvFormerS18, ConvFormerS36, ConvFormerM36, ConvFormerB36 = FAMILY.constructors()
