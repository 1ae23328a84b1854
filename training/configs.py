"""Training configs: every number of a run in one place, one config per experiment.

The paper's recipe (Table 1 and the official ``train.py``, design.md section 5):
AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0.05, 1-D parameters exempt), peak
lr = global batch / 1024 x 1e-3, 5 warmup epochs from 1e-6, cosine to 1e-5 at epoch
300, then 10 cooldown epochs at 1e-5; random resized crop, flip, RandAugment
rand-m9-mstd0.5-inc1, random erasing 0.25, mixup 0.8 / cutmix 1.0 (switch 0.5),
label smoothing 0.1; drop path and LayerScale init per variant.

The MetaFormer baselines (PoolFormerV2, IdentityFormer, RandFormer, ConvFormer,
CAFormer) have one config each, named as the registry names them (``caformer_s18``),
made from ``keras_poolformer.registry.MODELS`` by :func:`baseline_config`: the official
scripts' numbers (``ModelSpec.recipe``) mapped onto these fields, the rest being
``train.py``'s defaults, which are the paper's recipe above.

Use: ``keras-poolformer train --config s12 [key=value ...] [--smoke]``. Any field
can be overridden on the command line (``epochs=100 batch_size=256``).
"""

import dataclasses
import math

import numpy as np

from keras_poolformer import baselines, registry
from keras_poolformer.models import HYBRID_CONFIGS, MODEL_CONFIGS
from keras_poolformer.training import augment


@dataclasses.dataclass(frozen=True)
class Config:
    """One experiment. The docstring of each registered config says how it was run."""

    # What is learnt: "classification", or "detection" / "segmentation" with the model
    # below as the backbone (keras_poolformer.training.tasks).
    task: str = "classification"
    # A variant, a hybrid (ppaa_s12...), a baseline (caformer_s18...), or "custom" with
    # depths/dims below; a baseline with depths/dims keeps its family's parts on that trunk.
    # "resnet18": KerasHub's ResNet (keras_poolformer.hub.ResNetBackbone), dims optional,
    # the dense-prediction runs' side-by-side backbone.
    model: str = "s12"
    depths: tuple = ()
    dims: tuple = ()
    # The MetaFormer's parts (keras_poolformer.MetaFormer); the defaults make a PoolFormer.
    token_mixers: tuple = ("pooling",) * 4  # one per stage, or one for all
    norm: str = "mln"
    activation: str = "gelu"
    position_embeddings: tuple = ()  # stage indices
    image_size: int = 224
    crop_pct: float = 0.9  # evaluation crop
    epochs: int = 300
    warmup_epochs: int = 5
    cooldown_epochs: int = 10
    steps_per_epoch: int = 0  # 0: the dataset's size / batch_size
    batch_size: int = 4096  # global batch of one optimizer step
    accum_steps: int = 1  # micro-batches per optimizer step (batch_size / accum_steps each)
    lr_per_1024: float = 1e-3  # peak lr = batch_size / 1024 * lr_per_1024
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-8
    optimizer: str = "adamw"  # or "lamb" (timm's LAMB, as the official CAFormer runs)
    drop_path_rate: float = 0.1
    head_dropout: float = 0.0  # the baselines' MLP head (ConvFormer, CAFormer) only
    layer_scale_init_value: float = 1e-5
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mixup_switch_prob: float = 0.5
    randaugment: str = "rand-m9-mstd0.5-inc1"  # "" for none
    random_erasing: float = 0.25
    rrc_scale: tuple = (0.08, 1.0)
    hflip: bool = True
    seed: int = 0
    checkpoint_every: int = 500  # optimizer steps between checkpoints
    eval_every: int = 1  # epochs between evaluations
    eval_steps: int = 0  # 0: the whole validation split
    precision: str = "float32"  # or "mixed": bfloat16 on TPU and CPU, float16 on GPU
    xla: bool = False
    # How this config was run: the command, the hardware, the accuracy it reached.
    note: str = ""

    @property
    def peak_lr(self):
        return self.batch_size / 1024 * self.lr_per_1024

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def validate(self):
        """Returns this config, or raises one ValueError naming every field whose value
        cannot run (``batch_size=0``, ``drop_path_rate=1.5``...) and what it may be.

        Called by :func:`get_config` and by ``trainer.train``, so that a bad value stops
        the run before its first step, not as a ZeroDivisionError or a TF error later.
        """
        problems = [
            f"{name}={getattr(self, name)!r} (must be {rule})"
            for name, rule in _RULES
            if not _ALLOWED[rule](getattr(self, name))
        ]
        if not problems and self.batch_size % self.accum_steps:
            problems.append(
                f"batch_size={self.batch_size} (must be divisible by accum_steps="
                f"{self.accum_steps})"
            )
        known = {**MODEL_CONFIGS, **HYBRID_CONFIGS, **BASELINES}
        if self.model not in ("custom", "resnet18") and self.model not in known:
            problems.append(
                f"model={self.model!r} (must be a variant ({', '.join(MODEL_CONFIGS)}), a "
                f"hybrid ({', '.join(HYBRID_CONFIGS)}), a baseline ({', '.join(BASELINES)}), "
                "'custom' or 'resnet18')"
            )
        if self.model == "resnet18" and self.dims and (len(self.dims) != 4 or self.dims[0] != 64):
            problems.append(
                f"dims={self.dims!r} (model 'resnet18' takes none or 4 numbers, the first 64: "
                "KerasHub's ResNet fixes its first stage at 64 channels)"
            )
        if self.task != "classification":
            problems += _dense_problems(self)
        if self.model in BASELINES:
            problems += _baseline_problems(self)
        elif self.head_dropout:
            problems.append(
                f"head_dropout={self.head_dropout!r} (must be 0: only the baselines' MLP head "
                "has dropout)"
            )
        if self.model == "custom" and not (self.depths and len(self.depths) == len(self.dims)):
            problems.append(
                f"depths={self.depths!r}, dims={self.dims!r} (model 'custom' needs both, "
                "one number per stage)"
            )
        if self.randaugment:
            try:
                augment.parse_randaugment(self.randaugment)
            except ValueError as error:
                problems.append(f"randaugment={self.randaugment!r} ({error})")
        if problems:
            raise ValueError(f"invalid training config: {'; '.join(problems)}.")
        return self


# What the dense-prediction tasks do not use; a value other than "off" would be ignored.
_CLASSIFICATION_ONLY = {
    "mixup_alpha": 0.0,
    "cutmix_alpha": 0.0,
    "randaugment": "",
    "random_erasing": 0.0,
}


def _dense_problems(config):
    """What a detection or segmentation config cannot have."""
    problems = [
        f"{name}={getattr(config, name)!r} (must be {off!r}: {config.task} does not use it)"
        for name, off in _CLASSIFICATION_ONLY.items()
        if getattr(config, name) != off
    ]
    if _is_int(config.image_size, 1) and config.image_size % 32:
        problems.append(
            f"image_size={config.image_size} (must be a multiple of 32 for {config.task}: the "
            "backbone's strides)"
        )
    return problems


def _is_int(value, low, high=None):
    return (
        isinstance(value, int | np.integer)
        and not isinstance(value, bool)
        and value >= low
        and (high is None or value <= high)
    )


def _is_number(value, low, high, low_open=False, high_open=False):
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return False
    if not math.isfinite(value):
        return False
    above = value > low if low_open else value >= low
    below = high is None or (value < high if high_open else value <= high)
    return above and below


# What each rule allows; _RULES says which fields follow it.
_ALLOWED = {
    "an integer >= 1": lambda v: _is_int(v, 1),
    "an integer >= 0": lambda v: _is_int(v, 0),
    "an integer in [0, 2**32)": lambda v: _is_int(v, 0, 2**32 - 1),
    "a number > 0": lambda v: _is_number(v, 0, None, low_open=True),
    "a number >= 0": lambda v: _is_number(v, 0, None),
    "a number in [0, 1]": lambda v: _is_number(v, 0, 1),
    "a number in [0, 1)": lambda v: _is_number(v, 0, 1, high_open=True),
    "a number in (0, 1]": lambda v: _is_number(v, 0, 1, low_open=True),
    "a finite number": lambda v: _is_number(v, -math.inf, None),
    "'float32' or 'mixed'": lambda v: v in ("float32", "mixed"),
    "'adamw' or 'lamb'": lambda v: v in ("adamw", "lamb"),
    "'classification', 'detection' or 'segmentation'": lambda v: (
        v in ("classification", "detection", "segmentation")
    ),
    "true or false": lambda v: isinstance(v, bool),
    "two numbers 0 < low <= high <= 1": lambda v: (
        isinstance(v, tuple | list)
        and len(v) == 2
        and all(_is_number(x, 0, 1, low_open=True) for x in v)
        and v[0] <= v[1]
    ),
}
_RULES = [
    ("task", "'classification', 'detection' or 'segmentation'"),
    ("image_size", "an integer >= 1"),
    ("epochs", "an integer >= 1"),
    ("batch_size", "an integer >= 1"),
    ("accum_steps", "an integer >= 1"),
    ("checkpoint_every", "an integer >= 1"),
    ("eval_every", "an integer >= 1"),
    ("warmup_epochs", "an integer >= 0"),
    ("cooldown_epochs", "an integer >= 0"),
    ("steps_per_epoch", "an integer >= 0"),
    ("eval_steps", "an integer >= 0"),
    ("seed", "an integer in [0, 2**32)"),
    ("crop_pct", "a number in (0, 1]"),
    ("lr_per_1024", "a number > 0"),
    ("warmup_lr", "a number >= 0"),
    ("min_lr", "a number >= 0"),
    ("weight_decay", "a number >= 0"),
    ("beta_1", "a number in [0, 1)"),
    ("beta_2", "a number in [0, 1)"),
    ("epsilon", "a number > 0"),
    ("drop_path_rate", "a number in [0, 1)"),
    ("head_dropout", "a number in [0, 1)"),
    ("optimizer", "'adamw' or 'lamb'"),
    ("layer_scale_init_value", "a finite number"),
    ("label_smoothing", "a number in [0, 1)"),
    ("mixup_alpha", "a number >= 0"),
    ("cutmix_alpha", "a number >= 0"),
    ("mixup_switch_prob", "a number in [0, 1]"),
    ("random_erasing", "a number in [0, 1]"),
    ("rrc_scale", "two numbers 0 < low <= high <= 1"),
    ("precision", "'float32' or 'mixed'"),
    ("hflip", "true or false"),
    ("xla", "true or false"),
]


# --- the MetaFormer baselines ------------------------------------------------------------

# The baselines' registry entries: {name: ModelSpec}.
BASELINES = {
    name: spec for name, spec in registry.MODELS.items() if spec.family in baselines.FAMILIES
}

# Fields of the PoolFormer MetaFormer that a baseline's family fixes (its registry config;
# its residual scales take the place of LayerScale).
_BASELINE_FIXED = (
    "token_mixers",
    "norm",
    "activation",
    "position_embeddings",
    "layer_scale_init_value",
)


def _baseline_problems(config):
    """What :meth:`Config.validate` adds for a baseline model."""
    spec = BASELINES[config.model]
    problems = []
    defaults = Config()
    for name in _BASELINE_FIXED:
        if getattr(config, name) != getattr(defaults, name):
            problems.append(
                f"{name}={getattr(config, name)!r} (model {config.model!r} has its family's; "
                "leave it unset)"
            )
    if config.head_dropout and spec.config.get("head") != "mlp":
        problems.append(
            f"head_dropout={config.head_dropout!r} (must be 0: {config.model} has a linear head)"
        )
    if bool(config.depths) != bool(config.dims) or (
        config.depths and not (len(config.depths) == len(config.dims) == 4)
    ):
        problems.append(
            f"depths={config.depths!r}, dims={config.dims!r} (a baseline's trunk override "
            "needs both, four numbers each; leave both unset for the registry's)"
        )
    else:
        mixers = spec.config.get("token_mixers", ())
        for stage, (mixer, dim) in enumerate(zip(mixers, config.dims, strict=False)):
            if mixer == "attention" and dim % 32:
                problems.append(
                    f"dims={config.dims!r} (stage {stage} has attention, whose heads are 32 "
                    "channels: its dim must be a multiple of 32)"
                )
    return problems


def _scaled_lr(recipe):
    """The recipe's lr as ``lr_per_1024``, this module's rule (peak lr = batch_size /
    1024 x lr_per_1024): linear in the batch, so a smaller batch keeps the official
    lr per image (4e-3 at 4096 is 1e-3 per 1024)."""
    return recipe["lr"] / (recipe["batch_size"] / 1024)


# How each number of ``ModelSpec.recipe`` lands on a Config field: a field name, or a
# function of the whole recipe returning (field, value).
_RECIPE_FIELDS = {
    "batch_size": "batch_size",
    "epochs": "epochs",
    "weight_decay": "weight_decay",
    "min_lr": "min_lr",
    "label_smoothing": "label_smoothing",
    "mixup": "mixup_alpha",
    "cutmix": "cutmix_alpha",
    "random_erasing": "random_erasing",
    "optimizer": "optimizer",
    "lr": lambda recipe: ("lr_per_1024", _scaled_lr(recipe)),
    "warmup_epochs": "warmup_epochs",
    "drop_path_rate": "drop_path_rate",
    "head_dropout": "head_dropout",
}

# What timm 0.6.11's LAMB (the official train.py's) uses unless told: its epsilon.
_OPTIMIZER_DEFAULTS = {"adamw": {"epsilon": 1e-8}, "lamb": {"epsilon": 1e-6}}


def baseline_config(name, **changes):
    """The official ImageNet-1k pretraining recipe of the baseline ``name``, from its
    registry entry: the numbers of ``sail-sg/metaformer``'s ``scripts/<family>/train_*.sh``
    (``ModelSpec.recipe``) over ``train.py``'s defaults (the fields' defaults here:
    warmup from 1e-6, 10 cooldown epochs, RandAugment rand-m9-mstd0.5-inc1, mixup switch
    0.5, random resized crop 0.08-1 with a random interpolation, flips; no EMA, no
    gradient clipping but LAMB's own). Evaluation crops as the released checkpoints
    were evaluated (1.0). A recipe number this module cannot map is an error."""
    spec = BASELINES[name]
    fields = {}
    for key in spec.recipe:
        if key not in _RECIPE_FIELDS:
            raise ValueError(f"{name}'s recipe has {key!r}, which no training field takes.")
        target = _RECIPE_FIELDS[key]
        field, value = target(spec.recipe) if callable(target) else (target, spec.recipe[key])
        fields[field] = value
    fields.update(_OPTIMIZER_DEFAULTS[fields.get("optimizer", "adamw")])
    top1 = f"; the paper reports {spec.top1}% top-1 with it" if spec.top1 else ""
    fields["note"] = (
        f"keras-poolformer train --config {name} --data tfds:imagenet2012 --data-dir DIR "
        f"--output runs/{name} [accum_steps=N to reach batch {fields['batch_size']} on fewer "
        f"devices]. Not run by this project yet (300 epochs of ImageNet){top1}."
    )
    crop = spec.checkpoints[0].crop_pct if spec.checkpoints else 1.0
    return Config(model=name, crop_pct=crop, **{**fields, **changes})


def variant_config(variant, **changes):
    """The paper's Table 1 recipe for one variant."""
    table = MODEL_CONFIGS[variant]
    note = (
        f"keras-poolformer train --config {variant} --data tfds:imagenet2012 --data-dir DIR "
        f"--output runs/{variant} [accum_steps=N to reach batch 4096 on fewer devices]. "
        f"Not run by this project yet (300 epochs of ImageNet need about 32 GPUs for days); "
        f"the paper reports {table['top1']}% top-1 with it on 32 GPUs."
    )
    changes.setdefault("note", note)
    return Config(
        model=variant,
        crop_pct=table["crop_pct"],
        drop_path_rate=table["drop_path_rate"],
        layer_scale_init_value=table["layer_scale_init_value"],
        **changes,
    )


CONFIGS = {key: variant_config(key) for key in MODEL_CONFIGS}


def hybrid_config(key, **changes):
    """The recipe of the official MetaFormer hybrids and identity model (design.md
    section 5): batch 1024 at peak lr 1e-3, S12's drop path and LayerScale, the rest of
    Table 1. Their norm is the official code's: LayerNorm for the attention hybrids,
    MLN for the others."""
    table = HYBRID_CONFIGS[key]
    note = (
        f"keras-poolformer train --config {key} --data tfds:imagenet2012 --data-dir DIR "
        f"--output runs/{key}. Not run by this project yet (300 epochs of ImageNet)."
    )
    changes.setdefault("note", note)
    return Config(
        model=key,
        token_mixers=table["token_mixers"],
        norm=table["norm"],
        position_embeddings=table["position_embeddings"],
        crop_pct=table["crop_pct"],
        batch_size=1024,
        lr_per_1024=1e-3,
        drop_path_rate=MODEL_CONFIGS["s12"]["drop_path_rate"],
        layer_scale_init_value=MODEL_CONFIGS["s12"]["layer_scale_init_value"],
        **changes,
    )


CONFIGS.update({key: hybrid_config(key) for key in HYBRID_CONFIGS})
CONFIGS.update({name: baseline_config(name) for name in BASELINES})

# Fine-tuning an ImageNet PoolFormer on a new dataset (use with --init imagenet):
# a short schedule at a tenth of the lr, the same augmentation.
CONFIGS["s12_finetune"] = variant_config(
    "s12",
    epochs=30,
    warmup_epochs=2,
    cooldown_epochs=0,
    batch_size=256,
    lr_per_1024=1e-4,
    note="keras-poolformer train --config s12_finetune --init imagenet --data folder:DIR "
    "--output runs/finetune. Not run by this project yet (it needs the release weights, "
    "which cannot be downloaded on its machines).",
)

# Imagenette from scratch on a 2-core CPU in about 40 minutes:
#   keras-poolformer train --config imagenette_cpu \
#       --data folder:../shared/data/imagenette2-160 --output runs/imagenette
# A PoolFormer of S12's depth at half its width, on 112 px crops, with the recipe's
# optimizer and schedule shape; RandAugment, erasing and mixup are off because they
# need far more than 18 epochs to pay for themselves.
CONFIGS["imagenette_cpu"] = Config(
    model="custom",
    depths=(2, 2, 6, 2),
    dims=(32, 64, 160, 256),
    image_size=112,
    crop_pct=0.875,
    epochs=18,
    warmup_epochs=1,
    cooldown_epochs=0,
    batch_size=64,
    lr_per_1024=1.6e-2,  # peak 1e-3 at batch 64
    min_lr=1e-5,
    drop_path_rate=0.0,
    layer_scale_init_value=1e-5,
    label_smoothing=0.1,
    mixup_alpha=0.0,
    cutmix_alpha=0.0,
    randaugment="",
    random_erasing=0.0,
    rrc_scale=(0.35, 1.0),
    checkpoint_every=100,
    note="keras-poolformer train --config imagenette_cpu --data folder:../shared/data/"
    "imagenette2-160 --output runs/imagenette, on 2 CPU cores (no GPU), 25.5 min wall "
    "clock: 74.09% top-1, 96.87% top-5 on the 3,925 val images (training/results/).",
)

# The README's first command: a tiny model on the project's synthetic dataset.
CONFIGS["demo"] = Config(
    model="custom",
    depths=(1, 1, 2, 1),
    dims=(16, 32, 48, 64),
    image_size=64,
    crop_pct=1.0,
    epochs=4,
    warmup_epochs=1,
    cooldown_epochs=0,
    batch_size=32,
    lr_per_1024=6.4e-2,  # peak 2e-3 at batch 32
    drop_path_rate=0.0,
    mixup_alpha=0.0,
    cutmix_alpha=0.0,
    randaugment="",
    random_erasing=0.0,
    rrc_scale=(0.6, 1.0),
    hflip=False,
    checkpoint_every=20,
    note="keras-poolformer train --config demo --data synthetic --output runs/demo, on 2 CPU "
    "cores: 99.6% val top-1 on the synthetic quadrant task, 4 epochs in about 20 s.",
)


# Dense prediction on the shared data, with the README's Imagenette PoolFormer as the
# backbone (PoolFormer-S12's depth at half its width; --init runs/imagenette), and the
# optimizer of the paper's detection and segmentation runs (AdamW, lr 2e-4, weight decay
# 1e-4), without its linear scaling, at a batch for 2 CPU cores; warmup, then cosine.
# The side by side: model=resnet18 dims=64,64,128,256 (ResNet-18's layout at the same
# 2.9M parameters), pretrained the same way (--config imagenette_cpu model=resnet18 ...).
_DENSE = dict(
    model="s12",
    depths=(2, 2, 6, 2),
    dims=(32, 64, 160, 256),
    crop_pct=1.0,
    warmup_epochs=1,
    cooldown_epochs=0,
    batch_size=8,
    lr_per_1024=2e-4 / 8 * 1024,  # peak 2e-4 at batch 8
    min_lr=1e-6,
    weight_decay=1e-4,
    drop_path_rate=0.0,
    label_smoothing=0.0,
    mixup_alpha=0.0,
    cutmix_alpha=0.0,
    randaugment="",
    random_erasing=0.0,
)

# RetinaNet on ../shared/data/raccoon (first 160 annotations by sorted name train, the
# last 40 validate), 192 px letterboxed images, flips; 12 epochs (240 steps), sized for 2
# CPU cores (a step of batch 8 at 256 px took 7.7 s there without tcmalloc).
CONFIGS["raccoon_retinanet"] = Config(
    task="detection",
    image_size=192,
    epochs=12,
    checkpoint_every=40,
    eval_every=4,
    note="keras-poolformer train --config raccoon_retinanet --data voc:../shared/data/"
    "raccoon --init runs/imagenette --output runs/raccoon, on 2 CPU cores with tcmalloc, "
    "16.9 min: val mAP@0.5 0.762, mAP@0.5:0.95 0.283 from a 4-epoch Imagenette trunk "
    "(docs/dense.md).",
    **_DENSE,
)

# DeepLabV3+ (KerasHub's DeepLabV3 with its P2 decoder) on ../shared/data/camvid (367
# train, 101 val, 11 classes, label 11 ignored), 192 px crops of scale 0.5-2 jitter,
# evaluated on the whole 360x480 images; 4 epochs (180 steps) to fit 2 CPU cores.
CONFIGS["camvid_deeplab"] = Config(
    task="segmentation",
    image_size=192,
    epochs=4,
    checkpoint_every=100,
    eval_every=2,
    note="keras-poolformer train --config camvid_deeplab --data masks:../shared/data/camvid "
    "--init runs/imagenette --output runs/camvid, on 2 CPU cores with tcmalloc, 11.8 min: "
    "val mIoU 0.173, pixel accuracy 55.1% from a 4-epoch Imagenette trunk (docs/dense.md).",
    **_DENSE,
)


def smoke(config):
    """Shrinks any config to a few steps on small images: for checking a setup end to end."""
    return config.replace(
        # RetinaNet's coarsest level has stride 128; 64 px is plenty for classification
        image_size=64 if config.task == "classification" else 128,
        epochs=2,
        warmup_epochs=1,
        cooldown_epochs=0,
        steps_per_epoch=3,
        batch_size=8,
        accum_steps=1,
        lr_per_1024=config.peak_lr / 8 * 1024,  # keep the peak lr
        eval_steps=2,
        checkpoint_every=2,
    )


def _parse(value, current):
    if isinstance(current, bool):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true or false, got {value!r}")
        return value.lower() in ("true", "1")
    if isinstance(current, tuple):
        return tuple(type(current[0])(v) if current else int(v) for v in value.split(","))
    return type(current)(value)


def get_config(name, overrides=(), smoke_run=False):
    """The named config with ``key=value`` overrides applied (and shrunk by ``smoke``)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; known: {', '.join(sorted(CONFIGS))}.")
    config = CONFIGS[name]
    fields = {f.name: f for f in dataclasses.fields(Config)}
    changes = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(
                f"override {item!r} is not key=value with a config field "
                f"({', '.join(sorted(fields))})."
            )
        try:
            changes[key] = _parse(value, getattr(config, key))
        except ValueError as error:
            raise ValueError(f"override {item!r}: {error}") from None
    config = config.replace(**changes).validate()  # before smoke(), which scales the lr
    if smoke_run:
        config = smoke(config)
    return config.validate()
