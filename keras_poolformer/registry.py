"""One table of every named model: the family modules register into it, and the
constructors, ``summary``, ``export --model`` and the converter's detection read it.

A :class:`ModelSpec` holds all that is known of one named model: the builder and its
arguments, the published parameter count, MACs and top-1, and its released
checkpoints (:class:`Checkpoint`: where it lives, its resolution, crop and classes).
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One released checkpoint of a named model.

    Attributes:
        tag: its name after the model's (``"in1k"``, ``"in1k_384"``,
            ``"in22k_ft_in1k"``, ``"in22k_ft_in1k_384"``, ``"in22k"``).
        url: where the official file is.
        resolution: the image side it was trained and evaluated at.
        crop_pct: the evaluation centre crop.
        classes: rows of its classifier (1000, or 21841 for ImageNet-21k).
        top1: the published ImageNet-1k top-1 (``None`` for ImageNet-21k heads).
        timm: the same weights' name on the timm hub (``"caformer_s18.sail_in1k"``),
            ``None`` where timm has none.
    """

    tag: str
    url: str
    resolution: int = 224
    crop_pct: float = 1.0
    classes: int = 1000
    top1: float | None = None
    timm: str | None = None


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything about one named model.

    Attributes:
        name: its registry key, as the official code names it (``"caformer_s18"``).
        family: the family's key (``"caformer"``).
        constructor: the public constructor's name (``"CAFormerS18"``).
        config: the builder's architecture arguments (depths, dims, mixers, ...).
        params: the parameter count at 1000 classes.
        macs: multiply-accumulates at 224x224, as published.
        checkpoints: the released checkpoints, the ImageNet-1k 224 one first.
        recipe: the official training recipe's numbers (drop path, head dropout, ...).
    """

    name: str
    family: str
    constructor: str
    config: dict
    params: int
    macs: float
    checkpoints: tuple = ()
    recipe: dict = dataclasses.field(default_factory=dict)

    @property
    def top1(self):
        """The published top-1 of the ImageNet-1k checkpoint at 224, or ``None``."""
        return self.checkpoints[0].top1 if self.checkpoints else None

    def checkpoint(self, tag):
        """The checkpoint tagged ``tag``; ``ValueError`` naming the ones there are."""
        for checkpoint in self.checkpoints:
            if checkpoint.tag == tag:
                return checkpoint
        tags = ", ".join(c.tag for c in self.checkpoints) or "none"
        raise ValueError(f"{self.name} has no checkpoint {tag!r}; it has: {tags}.")


MODELS = {}
# Short names kept from the first releases ("s12" for "poolformer_s12"...): name -> name.
ALIASES = {}


def register(spec):
    """Adds ``spec`` to :data:`MODELS`; a second model of the same name is an error."""
    if spec.name in MODELS:
        raise ValueError(f"a model named {spec.name!r} is registered already.")
    MODELS[spec.name] = spec
    return spec


def get(name):
    """The :class:`ModelSpec` named ``name``; ``ValueError`` listing the names."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}."
        ) from None


def add_alias(alias, name):
    """Lets :func:`resolve` take ``alias`` for the registered model ``name``."""
    if alias in MODELS or alias in ALIASES:
        raise ValueError(f"the name {alias!r} is taken already.")
    if name not in MODELS:
        raise ValueError(f"no model named {name!r} is registered.")
    ALIASES[alias] = name
    return alias


def resolve(name):
    """The :class:`ModelSpec` of a registered name or of an alias (:data:`ALIASES`);
    ``ValueError`` listing the names."""
    return get(ALIASES.get(name, name))


def family_models(family):
    """The specs of one family, in registration order."""
    return [spec for spec in MODELS.values() if spec.family == family]


def zoo_table(families):
    """The README's model-zoo table, as Markdown, from :data:`MODELS`: the models of
    ``families`` (family keys, in the order given), each with its constructor,
    parameters, MACs at 224, and its released checkpoints with their published
    ImageNet-1k top-1."""
    lines = [
        "| family | model | params | MACs (224) | eval crop | checkpoints: `weights=` tag "
        "(top-1 %) |",
        "|---|---|---|---|---|---|",
    ]
    for family in families:
        for spec in family_models(family):
            tags = ", ".join(f"`{c.tag}` ({_accuracy(c)})" for c in spec.checkpoints)
            params, macs = f"{spec.params / 1e6:.1f}M", f"{spec.macs / 1e9:.1f}G"
            crops = "/".join(sorted({f"{c.crop_pct:g}" for c in spec.checkpoints}))
            lines.append(
                f"| {family} | `{spec.constructor}` | {params} | {macs} | {crops} | {tags} |"
            )
    return "\n".join(lines)


def _accuracy(checkpoint):
    """A checkpoint's published top-1 for the zoo table, or what stands in for it."""
    if checkpoint.classes != 1000:
        return f"{checkpoint.classes:,} classes"
    return "—" if checkpoint.top1 is None else f"{checkpoint.top1}"
