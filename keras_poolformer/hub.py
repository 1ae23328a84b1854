"""Every model of the library as a KerasHub backbone, for KerasHub's and keras-cv's tasks.

:class:`MetaFormerBackbone` is a ``keras_hub.models.FeaturePyramidBackbone``: any
registered model (``"poolformer_s12"``, ``"caformer_s18"``, an alias such as ``"s12"``)
without its classifier, whose ``pyramid_outputs`` are the four stage outputs ``"P2"``
... ``"P5"`` (strides 4 to 32). KerasHub's ``RetinaNetBackbone(image_encoder=...)`` and
``DeepLabV3Backbone(image_encoder=...)`` take it as it is; for keras-cv's task models
(``RetinaNet``, ``YOLOV8Detector``, ``DeepLabV3Plus``) it names the same four layers in
``pyramid_level_inputs``.

The backbone's layers are the layers of the model our constructors build, with the same
names, so weights move between the two by name (:func:`backbone_from_model`).

Example:
>>> backbone = keras_poolformer.hub.MetaFormerBackbone("poolformer_s12")
>>> features = keras.Model(backbone.inputs, backbone.pyramid_outputs)
>>> {k: tuple(v.shape) for k, v in features(np.zeros((1, 224, 224, 3))).items()}
{'P2': (1, 56, 56, 64), 'P3': (1, 28, 28, 128), 'P4': (1, 14, 14, 320), 'P5': (1, 7, 7, 512)}
"""

import functools

import keras
import keras_hub

from keras_poolformer import baselines, models, registry
from keras_poolformer.layers import ImageNormalization

_PACKAGE = "keras_poolformer"
LEVELS = ("P2", "P3", "P4", "P5")


def constructor(name, depths=None, dims=None):
    """The public constructor (``PoolFormerS12``, ``CAFormerS18``...) of a registered model
    name or alias; ``ValueError`` listing the names. With ``depths`` and ``dims``, the
    family's builder with the model's parts on that trunk instead (a smaller model of
    the same kind, such as the README's Imagenette PoolFormer)."""
    spec = registry.resolve(name)
    if depths or dims:
        if not (depths and dims and len(depths) == len(dims) == 4):
            raise ValueError(f"depths and dims need 4 numbers each, got {depths!r}, {dims!r}.")
        config = {**spec.config, "depths": tuple(depths), "dims": tuple(dims)}
        builder = {"poolformer": models.PoolFormer, "metaformer": models.MetaFormer}.get(
            spec.family, baselines.MetaFormerBaseline
        )
        return functools.partial(builder, **config, name=f"{spec.name}_custom")
    for module in (models, baselines):
        if hasattr(module, spec.constructor):
            return getattr(module, spec.constructor)
    raise ValueError(f"model {spec.name!r} has no constructor {spec.constructor!r}.")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MetaFormerBackbone(keras_hub.models.FeaturePyramidBackbone):
    """A registered model of this library, without its classifier, as a KerasHub backbone.

    Args:
        model: a name of the registry (``keras-poolformer summary`` lists them) or an
            alias (``"s12"``).
        image_shape: ``(height, width, 3)``; ``None`` sizes take any image (each side a
            multiple of 32 gives exact strides). Models with position embeddings or a
            random / spatial-MLP mixer need a fixed size.
        include_preprocessing: the model takes RGB pixels in 0..255 and normalises them
            with ImageNet's mean and std inside, as our classifiers do.
        drop_path_rate: stochastic depth, for training.
        depths, dims: optional, 4 numbers each: the model's parts on a trunk of this size
            (the README's Imagenette model is ``"poolformer_s12"`` with dims 32 ... 256).
        dtype: the dtype policy of the layers.

    The main output is what the classifier head takes: the last stage's map (for
    PoolFormer v1 after its final norm). ``pyramid_outputs`` holds the four stage outputs.
    """

    def __init__(
        self,
        model="poolformer_s12",
        image_shape=(None, None, 3),
        include_preprocessing=True,
        drop_path_rate=0.0,
        depths=None,
        dims=None,
        dtype=None,
        **kwargs,
    ):
        spec = registry.resolve(model)
        image_shape = tuple(image_shape)
        if len(image_shape) != 3 or image_shape[-1] != 3:
            raise ValueError(
                f"image_shape must be (height, width, 3) with None or a size for each side, "
                f"got {image_shape!r}."
            )
        kwargs.setdefault("name", f"{spec.name}_backbone")
        trunk = constructor(spec.name, depths, dims)(
            include_top=False,
            weights=None,
            input_shape=image_shape,
            include_preprocessing=include_preprocessing,
            drop_path_rate=drop_path_rate,
        )
        stages = models.stage_output_layers(trunk)
        super().__init__(inputs=trunk.inputs[0], outputs=trunk.outputs[0], dtype=dtype, **kwargs)
        self.pyramid_outputs = {
            level: layer.output for level, layer in zip(LEVELS, stages, strict=True)
        }
        self._pyramid_layers = {
            level: layer.name for level, layer in zip(LEVELS, stages, strict=True)
        }
        self.model = spec.name
        self.image_shape = image_shape
        self.include_preprocessing = include_preprocessing
        self.drop_path_rate = drop_path_rate
        self.depths = tuple(depths) if depths else None
        self.dims = tuple(dims) if dims else None

    @property
    def pyramid_level_inputs(self):
        """keras-cv's view of the pyramid: ``{"P2": layer name, ...}``."""
        return dict(self._pyramid_layers)

    def get_config(self):
        config = super().get_config()
        config.update(
            model=self.model,
            image_shape=self.image_shape,
            include_preprocessing=self.include_preprocessing,
            drop_path_rate=self.drop_path_rate,
            depths=self.depths,
            dims=self.dims,
        )
        return config


def copy_weights_by_name(source, target, what):
    """Sets every weight of ``target``'s layers from the layer of the same name in
    ``source``; ``ValueError`` naming the layers that ``source`` lacks or that differ in
    shape, before anything is assigned."""
    pairs, problems = [], []
    by_name = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        if not layer.weights:
            continue
        other = by_name.get(layer.name)
        if other is None:
            problems.append(f"{layer.name} (missing)")
            continue
        ours, theirs = layer.get_weights(), other.get_weights()
        shapes = [w.shape for w in ours], [w.shape for w in theirs]
        if shapes[0] != shapes[1]:
            problems.append(f"{layer.name} (shapes {shapes[1]} for {shapes[0]})")
        else:
            pairs.append((layer, theirs))
    if problems:
        raise ValueError(f"{what}: {len(problems)} layer(s) do not match: {', '.join(problems)}.")
    for layer, values in pairs:
        layer.set_weights(values)


def architecture(model, spec_name=None):
    """``(spec, depths, dims)`` of a model built by our constructors or by the trainer:
    the registry entry named after the model (``"caformer_s18"``; a trainer's trunk
    override ends in ``"_custom"``) and the trunk's size read from its blocks."""
    name = spec_name or model.name
    candidates = [name]
    if name.endswith("_custom"):
        candidates.append(name[: -len("_custom")])
    if name == "poolformer_custom":  # the trainer's PoolFormer of any size
        candidates.append("poolformer_s12")
    spec = None
    for candidate in candidates:
        try:
            spec = registry.resolve(candidate)
            break
        except ValueError:
            continue
    if spec is None:
        raise ValueError(
            f"model {model.name!r} is not named after a registered model; pass spec_name "
            f"(one of {', '.join(sorted(registry.MODELS))})."
        )
    stages = models.stage_output_layers(model)
    depths = tuple(int(models.porting._BLOCK_NAME.match(s.name)[2]) + 1 for s in stages)
    dims = tuple(int(s.output.shape[-1]) for s in stages)
    return spec, depths, dims


def backbone_from_model(model, spec_name=None, image_shape=None):
    """A :class:`MetaFormerBackbone` holding the trunk weights of ``model``, a model built
    by this library's constructors or trained by ``keras-poolformer train`` (with or
    without its top; its registry entry and trunk size from :func:`architecture`).

    Args:
        model: the Keras model.
        spec_name: its registry name, when the model is not named after one.
        image_shape: the backbone's input shape (default: the model's).
    """
    spec, depths, dims = architecture(model, spec_name)
    custom = (depths, dims) != (tuple(spec.config["depths"]), tuple(spec.config["dims"]))
    shape = image_shape or tuple(model.input_shape[1:])
    backbone = MetaFormerBackbone(
        spec.name,
        image_shape=shape,
        depths=depths if custom else None,
        dims=dims if custom else None,
    )
    copy_weights_by_name(model, backbone, f"model {model.name!r} into a {spec.name} backbone")
    return backbone


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResNetBackbone(keras_hub.models.FeaturePyramidBackbone):
    """KerasHub's ResNet (basic blocks, ResNet-18's layout by default) taking RGB pixels in
    0..255 as our backbones do: ImageNet's mean and std are applied inside, then
    ``keras_hub.models.ResNetBackbone`` built from its constructor (no preset download).

    The side-by-side baseline of the dense-prediction runs: ``dims=(64, 64, 128, 256)``
    is ResNet-18's layout at 2.9M parameters, the size of the README's Imagenette
    PoolFormer (KerasHub fixes the first stage at 64 channels).

    Args:
        dims: channels of the four stages (the stem has ``dims[0]``, which KerasHub
            requires to be 64).
        depths: basic blocks per stage (ResNet-18: 2, 2, 2, 2; ResNet-34: 3, 4, 6, 3).
        image_shape: ``(height, width, 3)``.
        dtype: the dtype policy of the layers.

    Example:
    >>> backbone = keras_poolformer.hub.ResNetBackbone(dims=(64, 64, 128, 256))
    >>> sorted(backbone.pyramid_outputs)
    ['P2', 'P3', 'P4', 'P5']
    """

    def __init__(
        self,
        dims=(64, 128, 256, 512),
        depths=(2, 2, 2, 2),
        image_shape=(None, None, 3),
        dtype=None,
        **kwargs,
    ):
        if len(dims) != 4 or len(depths) != 4:
            raise ValueError(f"dims and depths need 4 numbers each, got {dims!r}, {depths!r}.")
        if dims[0] != 64:
            raise ValueError(
                f"dims {tuple(dims)!r}: KerasHub's ResNet needs its first stage at 64 channels; "
                "narrow the later stages instead, e.g. (64, 64, 128, 256)."
            )
        kwargs.setdefault("name", "resnet_backbone")
        resnet = keras_hub.models.ResNetBackbone(
            input_conv_filters=[dims[0]],
            input_conv_kernel_sizes=[7],
            stackwise_num_filters=list(dims),
            stackwise_num_blocks=list(depths),
            stackwise_num_strides=[1, 2, 2, 2],
            block_type="basic_block",
            image_shape=tuple(image_shape),
            name="resnet",
        )
        pyramid = keras.Model(resnet.inputs, resnet.pyramid_outputs, name="resnet_pyramid")
        images = keras.Input(tuple(image_shape), name="images")
        features = pyramid(ImageNormalization(name="normalize")(images))
        super().__init__(inputs=images, outputs=features["P5"], dtype=dtype, **kwargs)
        self.pyramid_outputs = {level: features[level] for level in LEVELS}
        self.dims = tuple(dims)
        self.depths = tuple(depths)
        self.image_shape = tuple(image_shape)

    def get_config(self):
        config = super().get_config()
        config.update(dims=self.dims, depths=self.depths, image_shape=self.image_shape)
        return config
