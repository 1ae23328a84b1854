"""ConvFormer: the MetaFormer baseline with separable convolutions (MobileNetV2's
inverted separable conv, 7x7 depthwise) as token mixer and an MLP head."""

from keras_poolformer.baselines.family import Family, Size

FAMILY = Family(
    key="convformer",
    title="ConvFormer",
    config={"token_mixers": "sepconv", "norm": "channel", "head": "mlp"},
    summary=(
        "ConvFormer mixes tokens with inverted separable convolutions (pointwise to twice "
        "the channels, StarReLU, 7x7 depthwise, pointwise back) in every stage and "
        "classifies with an MLP head. It takes any input size."
    ),
    sizes=(
        Size("s18", "s18", params=26_774_448, macs=3.9e9),
        Size("s36", "cs36", params=40_012_152, macs=7.6e9),
        Size("m36", "cm36", params=57_051_640, macs=12.8e9),
        Size("b36", "cb36", params=99_882_616, macs=22.6e9),
    ),
)

ConvFormerS18, ConvFormerS36, ConvFormerM36, ConvFormerB36 = FAMILY.constructors()
