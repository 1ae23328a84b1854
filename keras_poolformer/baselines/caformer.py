"""CAFormer: ConvFormer's separable convolutions in stages 1-2 and self-attention in
stages 3-4, the strongest of the baselines."""

from keras_poolformer.baselines.family import Family, Size

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
    sizes=(
        Size("s18", "s18", params=26_341_656, macs=4.1e9),
        Size("s36", "cs36", params=39_297_102, macs=8.0e9),
        Size("m36", "cm36", params=56_204_878, macs=13.2e9),
        Size("b36", "cb36", params=98_753_614, macs=23.2e9),
    ),
)

CAFormerS18, CAFormerS36, CAFormerM36, CAFormerB36 = FAMILY.constructors()
