"""IdentityFormer: the MetaFormer baseline with no token mixing at all (identity
mixers), the lower bound the paper measures every other mixer against."""

from keras_poolformer.baselines.family import Family, Size

FAMILY = Family(
    key="identityformer",
    title="IdentityFormer",
    config={"token_mixers": "identity", "norm": "mln", "head": "linear"},
    summary=(
        "IdentityFormer has no token mixer (the identity) in any stage: only the "
        "downsampling convolutions mix neighbouring pixels. It takes any input size."
    ),
    sizes=(
        Size("s12", "s12", params=11_891_712, macs=1.8e9),
        Size("s24", "s24", params=21_341_464, macs=3.4e9),
        Size("s36", "s36", params=30_791_216, macs=5.0e9),
        Size("m36", "m36", params=56_077_168, macs=8.8e9),
        Size("m48", "m48", params=73_346_056, macs=11.5e9),
    ),
)

(
    IdentityFormerS12,
    IdentityFormerS24,
    IdentityFormerS36,
    IdentityFormerM36,
    IdentityFormerM48,
) = FAMILY.constructors()
