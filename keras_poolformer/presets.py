"""KerasHub tasks and presets for every model of the library.

:class:`MetaFormerImageClassifier` is a ``keras_hub.models.ImageClassifier`` on a
:class:`~keras_poolformer.hub.MetaFormerBackbone` whose head is the head of our models,
layer for layer and with the same layer names (``avg_pool``, ``norm``, ``head``), so a
model built by our constructors (or trained by ``keras-poolformer train``) moves into it
by name (:func:`classifier_from_model`) and computes the same numbers.
:class:`MetaFormerImageClassifierPreprocessor` applies our evaluation transform
(:func:`keras_poolformer.eval_transform`: Pillow-exact bicubic resize of the shorter side
to ``image_size / crop_pct``, centre crop) through :class:`MetaFormerImageConverter`.

:func:`save_preset` writes a KerasHub preset folder, which KerasHub loads back with the
base classes once ``keras_poolformer`` is imported:

>>> keras_poolformer.presets.save_preset(keras_poolformer.PoolFormerS12(), "s12_preset")
>>> classifier = keras_hub.models.ImageClassifier.from_preset("s12_preset")
>>> classifier.predict(np.random.randint(0, 256, (2, 300, 400, 3), dtype="uint8"))
"""

import os
import shutil
import tempfile
import types

import keras
import keras_hub
import numpy as np

from keras_poolformer import hub, imagenet, registry
from keras_poolformer.baselines.layers import MlpHead
from keras_poolformer.layers import ImageNormalization

_PACKAGE = "keras_poolformer"
# The families whose backbone output already carries the final norm (PoolFormer v1 and
# the v1 MetaFormer hybrids normalise the map, then pool); the baselines pool, then norm.
V1_FAMILIES = ("poolformer", "metaformer")
# The baselines' LayerNorm after the pooling (builder.MetaFormerBaseline).
HEAD_NORM_EPSILON = 1e-6


# ImageConverter's own options, fixed by our evaluation transform: not configurable.
_FIXED_CONVERTER_OPTIONS = (
    "scale",
    "offset",
    "crop_to_aspect_ratio",
    "pad_to_aspect_ratio",
    "interpolation",
    "antialias",
)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MetaFormerImageConverter(keras_hub.layers.ImageConverter):
    """Our evaluation transform as a KerasHub image converter.

    Each image is resized (shorter side to ``int(image_size / crop_pct)``, bicubic) and
    centre-cropped to ``image_size`` square by :func:`keras_poolformer.eval_transform`:
    ``uint8`` images (and integer ones, clipped to 0..255 first) exactly as Pillow
    resizes them, float images with one antialiased bicubic ``tf.image.resize``. Pixels
    stay in 0..255 (our models normalise inside), float32.

    Takes one image ``(height, width, 3)``, a batch ``(batch, height, width, 3)``, or a
    list of images of different sizes (stacked after the transform).

    Args:
        image_size: side of the square output.
        crop_pct: fraction of the resized shorter side kept by the centre crop.

    Example:
    >>> converter = keras_poolformer.presets.MetaFormerImageConverter(224, crop_pct=0.9)
    >>> converter(np.zeros((375, 500, 3), "uint8")).shape
    TensorShape([224, 224, 3])
    """

    backbone_cls = hub.MetaFormerBackbone

    def __init__(self, image_size=224, crop_pct=imagenet.DEFAULT_CROP_PCT, **kwargs):
        for key in _FIXED_CONVERTER_OPTIONS:
            kwargs.pop(key, None)
        if isinstance(image_size, (tuple, list)):
            if len(image_size) != 2 or image_size[0] != image_size[1]:
                raise ValueError(f"image_size must be one side (square), got {image_size!r}.")
            image_size = image_size[0]
        if not isinstance(image_size, (int, np.integer)) or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}.")
        if not 0.0 < float(crop_pct) <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct!r}.")
        super().__init__(
            image_size=(int(image_size), int(image_size)),
            interpolation="bicubic",
            antialias=True,
            **kwargs,
        )
        self.crop_pct = float(crop_pct)

    def _one(self, image):
        import tensorflow as tf

        if isinstance(image, tf.RaggedTensor):
            image = image.to_tensor()
        image = tf.convert_to_tensor(image)
        if image.dtype.is_integer and image.dtype != tf.uint8:
            image = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
        elif image.dtype.is_floating and image.dtype != tf.float32:
            image = tf.cast(image, tf.float32)
        return imagenet.eval_transform(image, self.image_size[0], self.crop_pct)

    def call(self, inputs):
        import tensorflow as tf

        if isinstance(inputs, dict):
            raise ValueError(
                "MetaFormerImageConverter takes images, not a dict (no bounding boxes)."
            )
        if isinstance(inputs, (list, tuple)):
            try:
                inputs = tf.convert_to_tensor(np.stack([np.asarray(x) for x in inputs]))
            except ValueError:  # images of different sizes
                return tf.stack([self._one(np.asarray(x)) for x in inputs])
        if not isinstance(inputs, tf.RaggedTensor):
            inputs = tf.convert_to_tensor(inputs)
        rank = inputs.shape.rank
        if rank == 3:
            return self._one(inputs)
        if rank != 4:
            raise ValueError(
                f"MetaFormerImageConverter takes an image (height, width, 3) or a batch "
                f"(batch, height, width, 3), got shape {inputs.shape}."
            )
        size = self.image_size[0]
        return tf.map_fn(
            self._one, inputs, fn_output_signature=tf.TensorSpec((size, size, 3), tf.float32)
        )

    def get_config(self):
        config = super().get_config()
        for key in _FIXED_CONVERTER_OPTIONS:
            config.pop(key, None)
        config.update(image_size=self.image_size[0], crop_pct=self.crop_pct)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MetaFormerImageClassifierPreprocessor(keras_hub.models.ImageClassifierPreprocessor):
    """The image preprocessing of :class:`MetaFormerImageClassifier`: a
    :class:`MetaFormerImageConverter` (our evaluation transform), labels passed through.

    Args:
        image_converter: a :class:`MetaFormerImageConverter`.

    Example:
    >>> preprocessor = keras_poolformer.presets.MetaFormerImageClassifierPreprocessor(
    ...     keras_poolformer.presets.MetaFormerImageConverter(224, crop_pct=0.9))
    >>> x, y = preprocessor(np.zeros((2, 300, 400, 3), "uint8"), np.array([1, 2]))
    """

    backbone_cls = hub.MetaFormerBackbone
    image_converter_cls = MetaFormerImageConverter


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MetaFormerImageClassifier(keras_hub.models.ImageClassifier):
    """A KerasHub image classifier with the head of our models.

    On a PoolFormer v1 or v1 MetaFormer backbone (whose output is already normalised):
    global average pooling (``avg_pool``), then ``head`` (Dense). On a baseline backbone:
    ``avg_pool``, ``norm`` (LayerNorm, epsilon 1e-6), then ``head``: a Dense, or for
    ConvFormer and CAFormer the :class:`~keras_poolformer.baselines.layers.MlpHead`.
    With an activation, a float32 ``predictions`` layer follows, as in our models.

    Args:
        backbone: a :class:`~keras_poolformer.hub.MetaFormerBackbone`.
        num_classes: rows of the classifier.
        preprocessor: ``None`` or a :class:`MetaFormerImageClassifierPreprocessor`.
        activation: ``None`` (logits) or ``"softmax"``.
        head: ``None`` (the registered model's: ``"linear"`` or ``"mlp"``), or one of them.
        head_mlp_ratio, head_norm_epsilon: the MLP head's hidden width per channel and
            LayerNorm epsilon (``MlpHead``'s defaults: 4 and 1e-5).
        head_dropout: dropout inside the MLP head (training only).
        head_dtype: dtype policy of the head (default: the backbone's).

    Example:
    >>> backbone = keras_poolformer.hub.MetaFormerBackbone("caformer_s18")
    >>> classifier = keras_poolformer.presets.MetaFormerImageClassifier(backbone, 10)
    >>> classifier.predict(np.zeros((1, 224, 224, 3))).shape
    (1, 10)
    """

    backbone_cls = hub.MetaFormerBackbone
    preprocessor_cls = MetaFormerImageClassifierPreprocessor

    def __init__(
        self,
        backbone,
        num_classes,
        preprocessor=None,
        activation=None,
        head=None,
        head_mlp_ratio=4.0,
        head_dropout=0.0,
        head_norm_epsilon=1e-5,
        head_dtype=None,
        **kwargs,
    ):
        compile_now = kwargs.pop("compile", True)
        for key in ("pooling", "dropout"):  # ImageClassifier's head options: ours is fixed
            kwargs.pop(key, None)
        if activation not in (None, "softmax"):
            raise ValueError(f"activation must be None or 'softmax', got {activation!r}.")
        spec = registry.resolve(backbone.model)
        head = head or spec.config.get("head", "linear")
        if head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}.")
        if head_dropout and head != "mlp":
            raise ValueError("head_dropout applies to the MLP head only (head='mlp').")
        head_dtype = head_dtype or backbone.dtype_policy
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.pooler = keras.layers.GlobalAveragePooling2D(name="avg_pool", dtype=head_dtype)
        self.head_norm = None
        if spec.family not in V1_FAMILIES:
            self.head_norm = keras.layers.LayerNormalization(
                epsilon=HEAD_NORM_EPSILON, name="norm", dtype=head_dtype
            )
        if head == "mlp":
            self.output_head = MlpHead(
                num_classes,
                mlp_ratio=head_mlp_ratio,
                dropout=head_dropout,
                epsilon=head_norm_epsilon,
                name="head",
                dtype=head_dtype,
            )
        else:
            self.output_head = keras.layers.Dense(num_classes, name="head", dtype=head_dtype)
        self.output_activation = None
        if activation is not None:
            self.output_activation = keras.layers.Activation(
                activation, dtype="float32", name="predictions"
            )

        inputs = backbone.input
        x = self.pooler(backbone(inputs))
        if self.head_norm is not None:
            x = self.head_norm(x)
        outputs = self.output_head(x)
        if self.output_activation is not None:
            outputs = self.output_activation(outputs)
        task = keras_hub.models.Task
        task.__init__(self, inputs=inputs, outputs=outputs, compile=False, **kwargs)

        self.num_classes = int(num_classes)
        self.activation = activation
        self.head = head
        self.head_mlp_ratio = float(head_mlp_ratio)
        self.head_dropout = float(head_dropout)
        self.head_norm_epsilon = float(head_norm_epsilon)
        if compile_now:
            self.compile()

    def head_layers(self):
        """The layers after the backbone that hold weights (``norm``, ``head``)."""
        return [layer for layer in (self.head_norm, self.output_head) if layer is not None]

    def get_config(self):
        config = keras_hub.models.Task.get_config(self)
        config.update(
            num_classes=self.num_classes,
            activation=self.activation,
            head=self.head,
            head_mlp_ratio=self.head_mlp_ratio,
            head_dropout=self.head_dropout,
            head_norm_epsilon=self.head_norm_epsilon,
        )
        return config


def classifier_from_model(model, crop_pct=None, image_size=None, spec_name=None):
    """A :class:`MetaFormerImageClassifier`, with its preprocessor, holding the weights of
    ``model``, a classifier built by this library's constructors (``PoolFormerS12``,
    ``CAFormerS18``, ...) or trained by ``keras-poolformer train``.

    The classifier ends as the model does (logits, or softmax when the model has it) and
    is checked against it on one random image before it is returned: a difference
    beyond float32 rounding raises ``ValueError``.

    Args:
        model: the Keras model (with its top).
        crop_pct: the preprocessor's centre crop; default the registered model's first
            checkpoint's (0.9 for PoolFormer S12, 1.0 for the baselines).
        image_size: the preprocessor's output side; default the model's input size, or
            the checkpoint's resolution where the model takes any size.
        spec_name: the registry name when the model is not named after one.

    Example:
    >>> model = keras_poolformer.PoolFormerS12(weights=None)
    >>> classifier = keras_poolformer.presets.classifier_from_model(model)
    >>> classifier.predict(np.zeros((1, 300, 400, 3), "uint8")).shape
    (1, 1000)
    """
    spec, depths, dims = hub.architecture(model, spec_name)
    names = {layer.name: layer for layer in model.layers}
    if "head" not in names:
        raise ValueError(f"model {model.name!r} has no classifier (built with include_top=False).")
    checkpoint = spec.checkpoints[0] if spec.checkpoints else None
    if crop_pct is None:
        crop_pct = checkpoint.crop_pct if checkpoint else imagenet.DEFAULT_CROP_PCT
    image_shape = tuple(model.input_shape[1:])
    if image_size is None:
        image_size = image_shape[0] or (checkpoint.resolution if checkpoint else 224)
    custom = (depths, dims) != (tuple(spec.config["depths"]), tuple(spec.config["dims"]))
    backbone = hub.MetaFormerBackbone(
        spec.name,
        image_shape=image_shape,
        include_preprocessing=any(isinstance(x, ImageNormalization) for x in model.layers),
        depths=depths if custom else None,
        dims=dims if custom else None,
    )
    hub.copy_weights_by_name(model, backbone, f"model {model.name!r} into a {spec.name} backbone")

    head = names["head"]
    options = {}
    if isinstance(head, MlpHead):
        options = dict(
            head="mlp",
            head_mlp_ratio=head.mlp_ratio,
            head_dropout=head.dropout,
            head_norm_epsilon=head.epsilon,
        )
    elif spec.config.get("head") == "mlp":
        options = dict(head="linear")
    activation = None
    if "predictions" in names:
        activation = keras.activations.serialize(names["predictions"].activation)
        activation = activation if isinstance(activation, str) else activation.get("config")
    converter = MetaFormerImageConverter(image_size=image_size, crop_pct=crop_pct)
    classifier = MetaFormerImageClassifier(
        backbone,
        num_classes=int(model.output_shape[-1]),
        preprocessor=MetaFormerImageClassifierPreprocessor(converter),
        activation=activation,
        **options,
    )
    hub.copy_weights_by_name(
        model,
        types.SimpleNamespace(layers=classifier.head_layers()),
        f"model {model.name!r}'s head into the classifier",
    )
    _check_same(model, classifier, image_shape, image_size)
    return classifier


def _check_same(model, classifier, image_shape, image_size):
    """Raises ``ValueError`` unless ``classifier`` (without its preprocessor) computes
    what ``model`` does on one random image."""
    side = image_size
    height, width = image_shape[0] or side, image_shape[1] or side
    pixels = np.random.default_rng(0).uniform(0, 255, (1, height, width, 3)).astype("float32")
    ours = np.asarray(classifier(pixels, training=False))
    theirs = np.asarray(model(pixels, training=False))
    difference = float(np.max(np.abs(ours - theirs)))
    if not np.isfinite(difference) or difference > 1e-4 * max(1.0, float(np.abs(theirs).max())):
        raise ValueError(
            f"the KerasHub classifier does not reproduce model {model.name!r} (max "
            f"difference {difference:.3g}); pass spec_name if the model is not the "
            "registered architecture."
        )


def check_destination(directory):
    """The absolute path of ``directory`` if a preset can be written there (a new folder
    in an existing one, or an empty folder); ``ValueError`` saying why not otherwise.

    Example:
    >>> keras_poolformer.presets.check_destination("new_preset")
    '/home/me/new_preset'
    """
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory):
        if not os.path.isdir(directory):
            raise ValueError(f"preset destination '{directory}' is a file, not a folder.")
        if os.listdir(directory):
            raise ValueError(
                f"preset destination '{directory}' exists and is not empty; "
                "choose a new or empty folder."
            )
    parent = os.path.dirname(directory)
    if not os.path.isdir(parent):
        raise ValueError(f"the folder '{parent}' for the preset does not exist.")
    return directory


def save_preset(model, directory, crop_pct=None, image_size=None, spec_name=None):
    """Writes a KerasHub preset folder of ``model`` (:func:`classifier_from_model`):
    ``config.json`` and ``model.weights.h5`` (the backbone), ``task.json`` and
    ``task.weights.h5`` (the classifier and its head), ``preprocessor.json``,
    ``image_converter.json`` and ``metadata.json``.

    The preset is written into a temporary folder beside ``directory`` and renamed into
    place, so a failure never leaves a half-written preset; an existing ``directory``
    must be empty (``ValueError`` otherwise).

    Args:
        model, crop_pct, image_size, spec_name: as for :func:`classifier_from_model`.
        directory: the preset folder to create.

    Returns:
        The preset folder's path.

    Example:
    >>> keras_poolformer.presets.save_preset(keras_poolformer.CAFormerS18(), "caformer")
    >>> keras_hub.models.ImageClassifier.from_preset("caformer")
    """
    directory = check_destination(directory)
    parent = os.path.dirname(directory)
    classifier = classifier_from_model(model, crop_pct, image_size, spec_name)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would stay on the preset
        classifier.save_to_preset(staging)
        if os.path.isdir(directory):
            os.rmdir(directory)  # empty (checked above); rename needs it gone
        os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory
