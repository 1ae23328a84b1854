"""keras_poolformer: PoolFormer (MetaFormer) for TensorFlow / Keras 3, exact to the original.

>>> import keras_poolformer
>>> model = keras_poolformer.PoolFormerS12(weights=None)
>>> probs = model.predict(images)  # RGB pixels in 0..255, (batch, 224, 224, 3)
>>> keras_poolformer.decode_predictions(probs, top=5)

Reference: Yu et al., "MetaFormer is Actually What You Need for Vision", CVPR 2022.
"""

import os as _os
import sys as _sys

# On the command line (``keras-poolformer`` or ``python -m keras_poolformer``) TensorFlow's
# C++ INFO and WARNING lines would bury the one-line error of a bad input; the level must be
# set before TensorFlow is imported, which the imports below do. A level the user set wins,
# and library users keep TensorFlow's default.
if "TF_CPP_MIN_LOG_LEVEL" not in _os.environ and (
    _sys.argv[:1] == ["-m"]
    or _os.path.basename(_sys.argv[0] if _sys.argv else "").startswith("keras-poolformer")
):
    _os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"

from keras_poolformer import baselines, layers, mixers, porting, registry  # noqa: E402
from keras_poolformer.analysis import count_macs
from keras_poolformer.baselines import (
    CAFormerB36,
    CAFormerM36,
    CAFormerS18,
    CAFormerS36,
    ConvFormerB36,
    ConvFormerM36,
    ConvFormerS18,
    ConvFormerS36,
    IdentityFormerM36,
    IdentityFormerM48,
    IdentityFormerS12,
    IdentityFormerS24,
    IdentityFormerS36,
    MetaFormerBaseline,
    PoolFormerV2M36,
    PoolFormerV2M48,
    PoolFormerV2S12,
    PoolFormerV2S24,
    PoolFormerV2S36,
    RandFormerM36,
    RandFormerM48,
    RandFormerS12,
    RandFormerS24,
    RandFormerS36,
)
from keras_poolformer.gradcam import gradcam
from keras_poolformer.imagenet import (
    ImageLimits,
    decode_image,
    decode_predictions,
    eval_transform,
    load_image,
    preprocess_input,
)
from keras_poolformer.models import (
    HYBRID_CONFIGS,
    HYBRIDS,
    MODEL_CONFIGS,
    VARIANTS,
    MetaFormer,
    MetaFormerIdS12,
    MetaFormerPPAAS12,
    MetaFormerPPFFS12,
    MetaFormerPPPAS12,
    MetaFormerPPPFS12,
    PoolFormer,
    PoolFormerM36,
    PoolFormerM48,
    PoolFormerS12,
    PoolFormerS24,
    PoolFormerS36,
    feature_extractor,
)

__version__ = "0.1.0"

__all__ = [
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
    "HYBRIDS",
    "HYBRID_CONFIGS",
    "ImageLimits",
    "MODEL_CONFIGS",
    "VARIANTS",
    "MetaFormer",
    "MetaFormerIdS12",
    "MetaFormerPPAAS12",
    "MetaFormerPPFFS12",
    "MetaFormerPPPAS12",
    "MetaFormerPPPFS12",
    "PoolFormer",
    "PoolFormerM36",
    "PoolFormerM48",
    "PoolFormerS12",
    "PoolFormerS24",
    "PoolFormerS36",
    "baselines",
    "count_macs",
    "decode_image",
    "decode_predictions",
    "eval_transform",
    "feature_extractor",
    "gradcam",
    "layers",
    "load_image",
    "mixers",
    "porting",
    "preprocess_input",
    "registry",
]

# KerasHub's backbone and tasks (keras_poolformer.hub, keras_poolformer.presets): importing
# them registers the classes, so that keras_hub's from_preset finds them. Skipped only
# where keras_hub itself is not installed.
try:
    import keras_hub as _keras_hub  # noqa: F401
except ImportError:
    pass
else:
    from keras_poolformer import hub, presets  # noqa: E402

    __all__ += ["hub", "presets"]
