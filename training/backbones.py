"""The image encoder of a detection or segmentation run, and its pretrained start.

Both dense tasks put KerasHub's heads (RetinaNet, DeepLabV3) on a
``keras_hub.models.FeaturePyramidBackbone`` with ``pyramid_outputs`` P2..P5:

- a MetaFormer of this library (:class:`keras_poolformer.hub.MetaFormerBackbone`):
  ``Config.model`` a registry name or alias, optionally on the config's depths and dims;
  ``"custom"`` is read as the trainer reads it, a PoolFormer on those depths and dims;
- ``"resnet18"``: KerasHub's ResNet (:class:`keras_poolformer.hub.ResNetBackbone`) with
  ResNet-18's layout, ``Config.dims`` optional, the side-by-side backbone.

``--init`` fills the encoder by layer name from a classifier: ``"imagenet"``, a
classification run folder, or a classifier's ``.weights.h5``; the task's head stays fresh.
"""

import json
import os

import keras

RESNET18_DIMS = (64, 128, 256, 512)


def trunk_name(config):
    """The registry name of ``config``'s MetaFormer; ``"custom"`` (a PoolFormer on the
    config's depths and dims, as the classification trainer builds it) is
    ``poolformer_s12``'s parts on that trunk."""
    if config.model != "custom":
        return config.model
    if (
        set(config.token_mixers) != {"pooling"}
        or config.norm != "mln"
        or config.activation != "gelu"
        or config.position_embeddings
    ):
        raise ValueError(
            f"{config.task} with model 'custom' takes PoolFormer's parts only; use a registry "
            "name (e.g. caformer_s18) with depths and dims for other trunks."
        )
    return "poolformer_s12"


def build_encoder(config, image_shape=(None, None, 3)):
    """The encoder of ``config`` for ``image_shape`` inputs of 0..255 RGB pixels."""
    from keras_poolformer import hub

    if config.model == "resnet18":
        return hub.ResNetBackbone(dims=tuple(config.dims or RESNET18_DIMS), image_shape=image_shape)
    return hub.MetaFormerBackbone(
        trunk_name(config),
        image_shape=image_shape,
        depths=tuple(config.depths) or None,
        dims=tuple(config.dims) or None,
        drop_path_rate=config.drop_path_rate,
    )


def freeze_unused(encoder):
    """Makes the encoder's layers that feed no pyramid level non-trainable (PoolFormer
    v1's final norm, after P5, which only the classifier read): they would get no
    gradient (``None``, which gradient accumulation cannot add). Their weights stay, so a
    checkpoint or a copied classifier still fills them."""
    used = {id(layer) for layer in keras.Model(encoder.inputs, encoder.pyramid_outputs).layers}
    for layer in encoder.layers:
        if layer.weights and id(layer) not in used:
            layer.trainable = False


def _imagenet_donor(config):
    """A model holding the released ImageNet weights under the encoder's layer names
    (downloaded, or from the package's cache); the ResNet's come from KerasHub's preset."""
    import keras_hub

    from keras_poolformer import hub

    if config.model == "resnet18":
        if config.dims and tuple(config.dims) != RESNET18_DIMS:
            raise ValueError("ImageNet weights exist for ResNet-18's own widths only.")
        return keras_hub.models.ResNetBackbone.from_preset("resnet_18_imagenet")
    if config.depths or config.dims:
        raise ValueError("'imagenet' weights exist for the registry's trunks only.")
    return hub.constructor(trunk_name(config))(
        include_top=False, weights="imagenet", input_shape=(None, None, 3)
    )


def classifier_from_weights(config, path):
    """The classifier of ``config`` (its task set to classification) holding the weights
    file ``path``. Its number of classes comes from a ``classes.json`` beside the file (a
    run folder's), else from the widths of the file's 2-D kernels, each tried in turn."""
    import h5py

    from keras_poolformer.training import classifiers

    config = config.replace(task="classification")
    names = os.path.join(os.path.dirname(os.path.abspath(path)), "classes.json")
    if os.path.isfile(names):
        with open(names, encoding="utf-8") as f:
            widths = [len(json.load(f))]
    else:
        widths = []
        with h5py.File(path, "r") as f:
            f.visititems(
                lambda _, obj: (
                    widths.append(obj.shape[-1])
                    if isinstance(obj, h5py.Dataset) and len(obj.shape) == 2
                    else None
                )
            )
    errors = []
    for classes in dict.fromkeys(reversed(widths)):
        model = classifiers.build_model(config, int(classes))
        try:
            model.load_weights(path)
            return model
        except ValueError as error:
            errors.append(str(error)[:200])
    raise ValueError(f"{path} holds no classifier of this config ({'; '.join(errors)[:600]}).")


def init_encoder(encoder, config, init):
    """Copies pretrained weights into ``encoder`` by layer name (the task's head stays
    fresh); ``ValueError`` naming the layers that do not match, before any is set.

    ``init``: ``"imagenet"`` (the release weights of ``config.model``), a classification
    run folder (``config.json``, ``final.weights.h5``; its trunk must be this config's),
    or a classifier's ``.weights.h5`` of the same model and trunk."""
    from keras_poolformer import hub

    what = f"--init {init} into the {config.task} backbone"
    init = os.fspath(init)
    if init == "imagenet":
        donor = _imagenet_donor(config)
        if config.model == "resnet18":  # KerasHub's bare ResNet: the same graph, in order
            pyramid = keras.Model(donor.inputs, donor.pyramid_outputs)
            encoder.get_layer("resnet_pyramid").set_weights(pyramid.get_weights())
        else:
            hub.copy_weights_by_name(donor, encoder, what)
        return
    if os.path.isdir(init):
        from keras_poolformer.training import trainer

        run_config, _, donor, _ = trainer.load_run(init)
        if run_config.task != "classification":
            raise ValueError(f"--init {init}: a {run_config.task} run, not a classifier.")
    elif init.endswith(".weights.h5") and os.path.isfile(init):
        donor = classifier_from_weights(config, init)
    else:
        raise ValueError(
            f"--init {init!r}: expected 'imagenet', a classification run folder or a "
            "classifier's .weights.h5."
        )
    hub.copy_weights_by_name(donor, encoder, what)
