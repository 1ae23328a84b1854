"""The MetaFormer baselines (Yu et al., "MetaFormer Baselines for Vision", TPAMI 2023):
PoolFormerV2, IdentityFormer, RandFormer, ConvFormer and CAFormer, one module each over
the shared layers and builder."""

from keras_poolformer.baselines import (  # deploy: the folded layers, registered with Keras
    caformer,
    convformer,
    deploy,
    identityformer,
    poolformerv2,
    randformer,
)
from keras_poolformer.baselines.builder import MetaFormerBaseline
from keras_poolformer.baselines.caformer import CAFormerB36, CAFormerM36, CAFormerS18, CAFormerS36
from keras_poolformer.baselines.convformer import (
    ConvFormerB36,
    ConvFormerM36,
    ConvFormerS18,
    ConvFormerS36,
)
from keras_poolformer.baselines.identityformer import (
    IdentityFormerM36,
    IdentityFormerM48,
    IdentityFormerS12,
    IdentityFormerS24,
    IdentityFormerS36,
)
from keras_poolformer.baselines.poolformerv2 import (
    PoolFormerV2M36,
    PoolFormerV2M48,
    PoolFormerV2S12,
    PoolFormerV2S24,
    PoolFormerV2S36,
)
from keras_poolformer.baselines.randformer import (
    RandFormerM36,
    RandFormerM48,
    RandFormerS12,
    RandFormerS24,
    RandFormerS36,
)

FAMILIES = {
    module.FAMILY.key: module.FAMILY
    for module in (poolformerv2, identityformer, randformer, convformer, caformer)
}

__all__ = [
    "FAMILIES",
    "deploy",
    "CAFormerB36",
    "CAFormerM36",
    "CAFormerS18",
    "CAFormerS36",
    "ConvFormerB36",
    "ConvFormerM36",
    "ConvFormerS18",
    "ConvFormerS36",
    "IdentityFormerM36",
    "IdentityFormerM48",
    "IdentityFormerS12",
    "IdentityFormerS24",
    "IdentityFormerS36",
    "MetaFormerBaseline",
    "PoolFormerV2M36",
    "PoolFormerV2M48",
    "PoolFormerV2S12",
    "PoolFormerV2S24",
    "PoolFormerV2S36",
    "RandFormerM36",
    "RandFormerM48",
    "RandFormerS12",
    "RandFormerS24",
    "RandFormerS36",
]
