"""The classifiers that ``Config.task == "classification"`` trains, built from a config:
PoolFormer and the v1 MetaFormers, the MetaFormer baselines, and KerasHub's ResNet (the
dense-prediction runs' side-by-side backbone), each optionally starting from pretrained
weights with a fresh head."""

import keras

import keras_poolformer as kp


def build_baseline(config, num_classes, init=None):
    """A MetaFormer baseline (``config.model`` a registry name, ``caformer_s18``) with
    logits out: its constructor with the config's drop path (and head dropout, for the
    MLP-head families), or, when the config gives depths and dims, the family's parts on
    that trunk (for tests and small experiments).

    ``init`` (``"imagenet"``, a checkpoint tag, or a weights or checkpoint file) fills
    everything but the classifier, which starts fresh: the trunk and the final norm
    from the release (or the file), the head as initialised here."""
    from keras_poolformer.baselines import layout

    spec = kp.registry.get(config.model)
    args = {
        "input_shape": (config.image_size, config.image_size, 3),
        "classes": num_classes,
        "classifier_activation": None,
        "drop_path_rate": config.drop_path_rate,
        "weights": None,
    }
    if spec.config.get("head") == "mlp":
        args["head_dropout"] = config.head_dropout
    if config.depths:
        architecture = {**spec.config, "depths": tuple(config.depths), "dims": tuple(config.dims)}

        def build(**kwargs):
            return kp.baselines.MetaFormerBaseline(
                **architecture, **kwargs, name=f"{spec.name}_custom"
            )
    else:

        def build(**kwargs):
            return getattr(kp, spec.constructor)(**kwargs)

    model = build(**args)
    if init:
        # pooling="avg" keeps the final norm, which the pretrained head was fed by.
        donor_args = {**args, "include_top": False, "pooling": "avg", "weights": init}
        donor = build(**donor_args)
        state = layout.export_state_dict(donor)
        fresh = layout.export_state_dict(model)
        state.update({key: value for key, value in fresh.items() if key.startswith("head.")})
        layout.load_state_dict(model, state)
    return model


def build_resnet(config, num_classes, init=None):
    """KerasHub's ResNet (:class:`keras_poolformer.hub.ResNetBackbone`, ``config.dims`` or
    ResNet-18's widths) with average pooling and a dense classifier, logits out: the
    side-by-side backbone of the dense-prediction runs, pretrained like ours."""
    from keras_poolformer import hub

    if init:
        raise ValueError("--init is not supported for model 'resnet18': train it from scratch.")
    size = config.image_size
    backbone = hub.ResNetBackbone(
        **({"dims": tuple(config.dims)} if config.dims else {}), image_shape=(size, size, 3)
    )
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(backbone.outputs[0])
    logits = keras.layers.Dense(num_classes, name="head")(pooled)
    return keras.Model(backbone.inputs, logits, name="resnet18")


def build_model(config, num_classes, init=None):
    """The classifier to train (logits out), optionally initialised from pretrained
    weights (``"imagenet"`` or a weights/checkpoint path) with a fresh head."""
    if config.model == "resnet18":
        return build_resnet(config, num_classes, init)
    if config.model in kp.registry.MODELS:
        return build_baseline(config, num_classes, init)
    if config.model == "custom":
        depths, dims = config.depths, config.dims
    else:
        table = kp.MODEL_CONFIGS.get(config.model, kp.MODEL_CONFIGS["s12"])  # hybrids: S12
        depths, dims = table["depths"], table["dims"]
    mixers = config.token_mixers[0] if len(config.token_mixers) == 1 else config.token_mixers
    poolformer = (
        config.norm == "mln"
        and config.activation == "gelu"
        and not config.position_embeddings
        and set(config.token_mixers) == {"pooling"}
    )
    common = {
        "depths": depths,
        "dims": dims,
        "token_mixers": mixers,
        "norm": config.norm,
        "activation": config.activation,
        "position_embeddings": config.position_embeddings,
        "layer_scale_init_value": config.layer_scale_init_value,
        "input_shape": (config.image_size, config.image_size, 3),
        "name": f"{'poolformer' if poolformer else 'metaformer'}_{config.model}",
    }
    model = kp.MetaFormer(
        **common,
        classes=num_classes,
        classifier_activation=None,
        drop_path_rate=config.drop_path_rate,
        weights=None,
    )
    if init:
        if not poolformer:
            raise ValueError(
                "--init loads PoolFormer weights; this config's model is another MetaFormer."
            )
        donor = kp.MetaFormer(**common, include_top=False, weights=init)
        state = kp.porting.export_state_dict(donor)
        fresh_head = kp.porting.export_state_dict(model)
        state.update({k: v for k, v in fresh_head.items() if k.startswith("head.")})
        kp.porting.load_state_dict(model, state)
    return model
