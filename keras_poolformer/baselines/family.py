"""What a family module of the MetaFormer baselines is made of: a :class:`Family`
(the architecture shared by its sizes, and one row per size), from which its
constructors are made and its models registered.
"""

import dataclasses

from keras_poolformer import registry
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


@dataclasses.dataclass(frozen=True)
class Family:
    """A family of the baselines: its name, its builder arguments, its sizes.

    Attributes:
        key: the official code's prefix (``"caformer"``).
        title: the name people write (``"CAFormer"``).
        config: the builder arguments every size shares (mixers, norm, head).
        summary: one sentence on what the family is, for the docstrings.
        sizes: the :class:`Size` rows.
    """

    key: str
    title: str
    config: dict
    summary: str
    sizes: tuple

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
            recipe=dict(size.recipe),
        )


_DOCSTRING = """Instantiates the {title} model ({params:,} parameters, {macs} MACs).

{summary}

Reference: {reference}

Args:
    include_top: whether to end with the classifier ({head}).
    weights: ``None`` (random initialisation) or the path to a Keras
        ``.weights.h5`` file.
    input_tensor: optional Keras tensor to use as image input.
    input_shape: ``(height, width, channels)``; {size_note}
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
>>> model = keras_poolformer.{constructor}(weights=None)
>>> model.predict(images)  # (batch, 224, 224, 3) RGB pixels in 0..255
"""

_HEAD_DROPOUT_DOC = """
    head_dropout: dropout rate inside the MLP head (training only)."""


def _constructor(spec, summary):
    """The Keras Applications style constructor of ``spec``."""
    config = spec.config
    mlp_head = config.get("head") == "mlp"

    def build(name, head_dropout=0.0, **kwargs):
        return MetaFormerBaseline(**config, head_dropout=head_dropout, name=name, **kwargs)

    if mlp_head:

        def constructor(
            include_top=True,
            weights=None,
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
            weights=None,
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
    )
    return constructor
