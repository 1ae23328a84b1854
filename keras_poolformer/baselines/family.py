"""What a family module of the MetaFormer baselines is made of: a :class:`Family`
(the architecture shared by its sizes, and one row per size), from which its
constructors are made and its models registered.
"""

import dataclasses
import os

from keras_poolformer import pretrained, registry
from keras_poolformer.baselines.builder import MetaFormerBaseline

REFERENCE = (
    'Yu et al., "MetaFormer Baselines for Vision", TPAMI 2023, '
    "https://arxiv.org/abs/2210.13452 (official code: github.com/sail-sg/metaformer)."
)

# depths and dims of the sizes, shared by the families that have them.
SIZES = {
    "s12": ((2, 2, 6, 2), (64, 128, 320, 512)),
    "s24": ((4, 4, 12, 4), (64, 128, 320, 512)),
    "s36": ((6, 6, 18, 6), (64, 128, 320, 512)),
    "m36": ((6, 6, 18, 6), (96, 192, 384, 768)),
    "m48": ((8, 8, 24, 8), (96, 192, 384, 768)),
    "s18": ((3, 3, 9, 3), (64, 128, 320, 512)),
    "cs36": ((3, 12, 18, 3), (64, 128, 320, 512)),
    "cm36": ((3, 12, 18, 3), (96, 192, 384, 576)),
    "cb36": ((3, 12, 18, 3), (128, 256, 512, 768)),
}


# What every official ImageNet-1k pretraining script shares (scripts/*/train_*.sh of
# sail-sg/metaformer over train.py's defaults): batch 4096, 300 epochs, cosine to 1e-5,
# weight decay 0.05, label smoothing 0.1, RandAugment m9, mixup 0.8, cutmix 1.0, random
# erasing 0.25; the families differ in optimizer, lr, warmup and the per-size rates.
PRETRAINING = {
    "batch_size": 4096,
    "epochs": 300,
    "weight_decay": 0.05,
    "min_lr": 1e-5,
    "label_smoothing": 0.1,
    "mixup": 0.8,
    "cutmix": 1.0,
    "random_erasing": 0.25,
}


@dataclasses.dataclass(frozen=True)
class Size:
    """One row of a family's table.

    Attributes:
        key: the size's name (``"s18"``).
        shape: the key of :data:`SIZES` with its depths and dims (``"cs36"``: the
            ConvFormer / CAFormer S36, deeper in stage 2 than PoolFormer's).
        params: the parameter count at 1000 classes.
        macs: multiply-accumulates at 224x224, as published.
        checkpoints: its :class:`~keras_poolformer.registry.Checkpoint` list.
        recipe: its official training recipe's numbers.
    """

    key: str
    shape: str
    params: int
    macs: float
    checkpoints: tuple = ()
    recipe: dict = dataclasses.field(default_factory=dict)


RELEASE_URL = pretrained.BASELINES_URL

# The release's checkpoint names after the model's, with the tags used here and timm's.
_RELEASES = {
    "in1k": ("", 224, 1000, "sail_in1k"),
    "in1k_384": ("_384", 384, 1000, "sail_in1k_384"),
    "in22k_ft_in1k": ("_in21ft1k", 224, 1000, "sail_in22k_ft_in1k"),
    "in22k_ft_in1k_384": ("_384_in21ft1k", 384, 1000, "sail_in22k_ft_in1k_384"),
    "in22k": ("_in21k", 224, 21841, "sail_in22k"),
}


def checkpoints(family, size, top1, in_timm=True):
    """The released checkpoints of ``{family}_{size}``: ``top1`` maps each tag of
    :data:`_RELEASES` it has to its published top-1 (``None`` for ImageNet-21k). All
    were evaluated at crop 1.0 (the official and timm configurations)."""
    rows = []
    for tag, accuracy in top1.items():
        suffix, resolution, classes, timm_tag = _RELEASES[tag]
        name = f"{family}_{size}"
        rows.append(
            registry.Checkpoint(
                tag=tag,
                url=f"{RELEASE_URL}{family}/{name}{suffix}.pth",
                resolution=resolution,
                crop_pct=1.0,
                classes=classes,
                top1=accuracy,
                timm=f"{name}.{timm_tag}" if in_timm else None,
            )
        )
    return tuple(rows)


@dataclasses.dataclass(frozen=True)
class Family:
    """A family of the baselines: its name, its builder arguments, its sizes.

    Attributes:
        key: the official code's prefix (``"caformer"``).
        title: the name people write (``"CAFormer"``).
        config: the builder arguments every size shares (mixers, norm, head).
        summary: one sentence on what the family is, for the docstrings.
        sizes: the :class:`Size` rows.
        recipe: the official training recipe's numbers every size shares (a size's
            own ``recipe`` adds to them).
    """

    key: str
    title: str
    config: dict
    summary: str
    sizes: tuple
    recipe: dict = dataclasses.field(default_factory=dict)

    def constructors(self):
        """Registers every size and returns its constructors, in table order."""
        return [
            _constructor(registry.register(self._spec(size)), self.summary) for size in self.sizes
        ]

    def _spec(self, size):
        depths, dims = SIZES[size.shape]
        return registry.ModelSpec(
            name=f"{self.key}_{size.key}",
            family=self.key,
            constructor=f"{self.title}{size.key.upper()}",
            config={"depths": depths, "dims": dims, **self.config},
            params=size.params,
            macs=size.macs,
            checkpoints=tuple(size.checkpoints),
            recipe={**self.recipe, **size.recipe},
        )


_DOCSTRING = """Instantiates the {title} model ({params:,} parameters, {macs} MACs).

{summary}

Reference: {reference}

Args:
    include_top: whether to end with the classifier ({head}).
    weights: ``"imagenet"`` (the default: the official ImageNet-1k checkpoint at 224,
        downloaded, converted and cached on first use), a checkpoint tag of this
        model ({tags}; ``"imagenet"`` is ``"in1k"``), ``None`` (random
        initialisation), the path to a Keras ``.weights.h5`` file, or the path to a
        checkpoint (``.pth``, ``.pth.tar``, ``.bin``, ``.safetensors``, ``.npz`` or a
        Hugging Face folder) in the official sail-sg/metaformer or the timm layout,
        read without unpickling code. Files are checked against the model before
        anything is loaded. With ``include_top=True``, ``classes`` must be the
        checkpoint's (21841 for ``in22k``); ``include_top=False`` skips the classifier.
    input_tensor: optional Keras tensor to use as image input.
    input_shape: ``(height, width, channels)``; {size_note} With the top, a
        ``*_384`` tag makes ``(384, 384, 3)`` the default.
    pooling: with ``include_top=False``: ``None`` (the last feature map),
        ``"avg"`` (its average, normalised as before the head) or ``"max"``.
    classes: number of classes of the classifier.
    classifier_activation: activation of the top layer (``None`` for logits).
    include_preprocessing: if True the model takes RGB pixels in 0..255.
    drop_path_rate: stochastic-depth rate of the last block (training only).{head_dropout}
    name: model name.

Returns:
    A ``keras.Model``.

Example:
>>> model = keras_poolformer.{constructor}()  # ImageNet-1k weights
>>> model.predict(images)  # (batch, 224, 224, 3) RGB pixels in 0..255
"""

_HEAD_DROPOUT_DOC = """
    head_dropout: dropout rate inside the MLP head (training only)."""


def _resolve_weights(spec, weights, include_top, classes, input_shape, input_tensor, **kwargs):
    """Turns ``weights="imagenet"`` or a checkpoint tag into the release to fetch (the
    builder fetches it once every argument is checked), checks ``classes`` against it,
    and, with the top, defaults ``input_shape`` to its resolution; paths and ``None``
    pass through."""
    if isinstance(weights, str) and not os.path.exists(weights):
        tag = "in1k" if weights == "imagenet" else weights
        tags = [c.tag for c in spec.checkpoints]
        if tag in tags:
            checkpoint = spec.checkpoint(tag)
            if include_top and classes != checkpoint.classes:
                raise ValueError(
                    f"weights={weights!r} with include_top=True needs classes="
                    f"{checkpoint.classes} (the checkpoint's classifier), got classes={classes}. "
                    "Use include_top=False for a new head."
                )
            if input_shape is None and input_tensor is None and include_top:
                input_shape = (checkpoint.resolution, checkpoint.resolution, 3)
            weights = pretrained.baseline_release(spec.name, tag)
        elif os.sep not in weights and not os.path.splitext(weights)[1]:
            raise ValueError(
                f"{spec.constructor} has no checkpoint {weights!r}; weights is None, "
                f"'imagenet' (= 'in1k'), one of its checkpoint tags ({', '.join(tags)}), or "
                "the path to a .weights.h5 file or a checkpoint."
            )
    return {
        "weights": weights,
        "include_top": include_top,
        "classes": classes,
        "input_shape": input_shape,
        "input_tensor": input_tensor,
        **kwargs,
    }


def _constructor(spec, summary):
    """The Keras Applications style constructor of ``spec``."""
    config = spec.config
    mlp_head = config.get("head") == "mlp"

    def build(name, head_dropout=0.0, **kwargs):
        kwargs = _resolve_weights(spec, **kwargs)
        return MetaFormerBaseline(**config, head_dropout=head_dropout, name=name, **kwargs)

    if mlp_head:

        def constructor(
            include_top=True,
            weights="imagenet",
            input_tensor=None,
            input_shape=None,
            pooling=None,
            classes=1000,
            classifier_activation="softmax",
            include_preprocessing=True,
            drop_path_rate=0.0,
            head_dropout=0.0,
            name=spec.name,
        ):
            return build(
                name,
                head_dropout,
                include_top=include_top,
                weights=weights,
                input_tensor=input_tensor,
                input_shape=input_shape,
                pooling=pooling,
                classes=classes,
                classifier_activation=classifier_activation,
                include_preprocessing=include_preprocessing,
                drop_path_rate=drop_path_rate,
            )

    else:

        def constructor(
            include_top=True,
            weights="imagenet",
            input_tensor=None,
            input_shape=None,
            pooling=None,
            classes=1000,
            classifier_activation="softmax",
            include_preprocessing=True,
            drop_path_rate=0.0,
            name=spec.name,
        ):
            return build(
                name,
                include_top=include_top,
                weights=weights,
                input_tensor=input_tensor,
                input_shape=input_shape,
                pooling=pooling,
                classes=classes,
                classifier_activation=classifier_activation,
                include_preprocessing=include_preprocessing,
                drop_path_rate=drop_path_rate,
            )

    fixed = "random" in config.get("token_mixers", ())
    constructor.__name__ = constructor.__qualname__ = spec.constructor
    constructor.__doc__ = _DOCSTRING.format(
        title=spec.constructor,
        params=spec.params,
        macs=f"{spec.macs / 1e9:.1f}G",
        summary=summary,
        reference=REFERENCE,
        head="an MLP head" if mlp_head else "a linear layer",
        size_note=(
            "fixed at ``(224, 224, 3)`` by the random mixing matrices."
            if fixed
            else "any size of at least 32; ``(224, 224, 3)`` by default with the top."
        ),
        head_dropout=_HEAD_DROPOUT_DOC if mlp_head else "",
        constructor=spec.constructor,
        tags=", ".join(f"``{c.tag!r}``" for c in spec.checkpoints),
    )
    return constructor
