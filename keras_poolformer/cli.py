"""The ``keras-poolformer`` command line (also ``python -m keras_poolformer``).

keras-poolformer summary [--models NAME ...] [--build] [--images IMAGE ...]
keras-poolformer predict IMAGE ... [--model s12] [--weights imagenet|PATH] [--run DIR]
keras-poolformer convert CHECKPOINT --output FILE [--model NAME] [--verify [--images ...]]
keras-poolformer train --config NAME [KEY=VALUE ...] --data SPEC --output DIR [--smoke]
keras-poolformer evaluate --run DIR | --model NAME --weights PATH --data SPEC
keras-poolformer configs
"""

import argparse
import os
import re
import sys
import time

FIELDS = (
    "model",
    "family",
    "params",
    "paper params",
    "MACs",
    "paper MACs",
    "MACs vs paper",
    "counted on",
)


def _print_table(rows, header):
    widths = [max(len(str(v)) for v in col) for col in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        cells = [str(v).ljust(w) if i < 2 else str(v).rjust(w) for i, (v, w) in enumerate(
            zip(row, widths, strict=True))]  # fmt: skip
        print("  ".join(cells).rstrip(), flush=True)


def all_model_names():
    """Every name ``summary`` and ``export --model`` take: every registered model
    (:data:`keras_poolformer.registry.MODELS`: PoolFormer v1, the v1 MetaFormers and the
    baselines) and the short names of the first releases (``"s12"``, ``"pppa_s12"``...,
    :data:`keras_poolformer.registry.ALIASES`)."""
    from keras_poolformer import registry

    return [*registry.ALIASES, *registry.MODELS]


def _model_entry(name):
    """``(label, family, constructor, published params, published MACs, registry spec,
    image size, crop_pct)`` of a name from :func:`all_model_names`."""
    import keras_poolformer as kp
    from keras_poolformer import registry

    spec = registry.resolve(name)
    label = name.upper() if name in registry.ALIASES else name
    first = spec.checkpoints[0] if spec.checkpoints else None
    return (label, spec.family, getattr(kp, spec.constructor), spec.params, spec.macs, spec,
            first.resolution if first else 224, first.crop_pct if first else 1.0)  # fmt: skip


def _counts_from_config(spec):
    """``(params, MACs at 224)`` of a registered model worked out from its ``config``,
    without building it (what the built graph gives: tests/test_baselines_cli.py)."""
    import math

    from keras_poolformer import analysis, poolformer_table, porting

    config = spec.config
    if spec.family == "poolformer":
        shapes = porting.official_shapes(config["depths"], config["dims"], config["mlp_ratio"])
        macs = analysis.baseline_macs({**config, "token_mixers": "pooling"})
    elif spec.family == "metaformer":
        from keras_poolformer.convert import hybrids

        shapes = hybrids.official_shapes(poolformer_table.short_key(spec))
        macs = analysis.baseline_macs(config)
        side = (224 + 2 * 2 - 7) // 4 + 1
        for s, (depth, dim, mixer) in enumerate(
            zip(config["depths"], config["dims"], config["token_mixers"], strict=True)
        ):
            side = side if s == 0 else (side + 2 - 3) // 2 + 1
            if mixer == "spatial_mlp":  # one token-by-token matrix per block
                macs += depth * (side * side) ** 2 * dim
    else:
        return analysis.baseline_params(config), analysis.baseline_macs(config)
    return sum(math.prod(shape) for shape in shapes.values()), macs


def summary(args):
    """Counts each model's parameters and MACs beside the published figures, and runs
    the given images through it. Every registered model is counted from its
    configuration (:func:`_counts_from_config`) unless ``--build`` (or ``--images``)
    asks for the built models' graphs."""
    import numpy as np

    import keras_poolformer as kp
    from keras_poolformer import registry

    images = None
    _check_images(args.images)
    names = list(dict.fromkeys([*(args.variants or ()), *(args.models or ())]))
    names = names or list(registry.MODELS)
    if args.images:
        images = np.stack([kp.load_image(path) for path in args.images])
        print(f"{len(images)} image(s) loaded and transformed to 224x224.")
    header = list(FIELDS) + ([f"ms/image (batch {len(images)})"] if images is not None else [])
    rows = []
    for name in names:
        label, family, constructor, paper_params, paper_macs, spec, _, _ = _model_entry(name)
        model = None
        if args.build or images is not None:
            print(f"building {label} ...", flush=True)
            model = constructor(weights=None)
            params, macs = model.count_params(), kp.count_macs(model)
        else:
            params, macs = _counts_from_config(spec)
        row = [
            label,
            family,
            f"{params:,}",
            f"{paper_params:,}",
            f"{macs / 1e9:.3f}G",
            f"{paper_macs / 1e9:.1f}G" if paper_macs else "-",
            f"{100 * (macs / paper_macs - 1):+.1f}%" if paper_macs else "-",
            "model" if model is not None else "config",
        ]
        if images is not None:
            model.predict_on_batch(images)  # trace once, outside the timing
            start = time.perf_counter()
            probs = model.predict_on_batch(images)
            elapsed = time.perf_counter() - start
            if probs.shape != (len(images), 1000) or not np.all(np.isfinite(probs)):
                raise RuntimeError(f"{label} gave bad outputs {probs.shape}")
            row.append(f"{1000 * elapsed / len(images):.0f}")
        rows.append(row)
    print()
    _print_table(rows, header)
    print(
        "\n'paper params': the published count (for the baselines the registry's, equal to "
        "timm's); 'counted on': the built model's graph, or the architecture's config."
    )
    if images is not None:
        print("\n(The models above have random weights: this shows they run, not what they see.)")
    return 0


def _check_images(paths):
    """Refuses image paths that cannot be read (missing, a folder) before any model is
    built, so that a typo costs a second, not a model load and a TensorFlow error."""
    for path in paths or ():
        if os.path.isdir(path):
            raise ValueError(f"image '{path}' is a folder; pass image files.")
        if not os.path.isfile(path):
            raise ValueError(f"image '{path}' does not exist.")
        if not os.access(path, os.R_OK):
            raise ValueError(f"image '{path}' is not readable (permission denied).")


def _classifier(args):
    """The model a command works on: ``--run DIR`` (a training run) or ``--model`` with
    ``--weights``. Returns ``(model giving logits, class names or None for ImageNet,
    image size, crop_pct)``."""
    import keras_poolformer as kp

    if args.run:
        from keras_poolformer.training import trainer

        config, names, model, _ = trainer.load_run(args.run)
        return model, names, config.image_size, config.crop_pct
    weights = None if str(args.weights).lower() == "none" else args.weights
    if args.model in kp.VARIANTS:
        model = kp.VARIANTS[args.model](weights=weights, classifier_activation=None)
        return model, None, 224, kp.MODEL_CONFIGS[args.model]["crop_pct"]
    _, _, constructor, _, _, spec, size, crop_pct = _model_entry(args.model)
    model = constructor(weights=weights, classifier_activation=None)
    if spec is not None and weights is not None and not os.path.exists(weights):
        # a checkpoint tag: its own evaluation crop (every baseline release: 1.0)
        checkpoint = spec.checkpoint("in1k" if weights == "imagenet" else weights)
        crop_pct = checkpoint.crop_pct
    return model, None, model.input_shape[1] or size, crop_pct


def _softmax(logits):
    import numpy as np

    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def predict(args):
    """Prints the top-5 classes of each image: ImageNet, or a training run's classes."""
    import numpy as np

    import keras_poolformer as kp

    _check_images(args.images)
    task = _run_task(args)
    if task not in (None, "classification"):
        return _dense_predict(args, task)
    model, names, size, crop_pct = _classifier(args)
    if names is None:
        names = [f"{name} ({wnid})" for wnid, name in kp.imagenet.class_names()]
    images = np.stack([kp.load_image(p, size, crop_pct) for p in args.images])
    probs = _softmax(model.predict(images, batch_size=args.batch_size, verbose=0))
    for path, row in zip(args.images, probs, strict=True):
        print(path)
        for index in np.argsort(-row)[: min(5, len(names))]:
            print(f"  {row[index]:7.2%}  {names[index]}")
    return 0


class _UnverifiedError(Exception):
    """A conversion that ``--verify`` did not pass; its exit status is the argument."""


def convert(args):
    """Converts a PyTorch checkpoint to Keras, optionally verifying it. With
    ``--verify`` the output file appears only once the conversion is verified."""
    from keras_poolformer import files

    _check_images(args.images)
    if not args.verify:
        _convert(args, args.output)
        return 0
    try:
        with files.atomic_path(args.output) as tmp:
            _convert(args, tmp)
    except _UnverifiedError as refused:
        return refused.args[0]
    return 0


def _convert(args, output):
    import numpy as np

    import keras_poolformer as kp
    from keras_poolformer.convert import convert_checkpoint, describe

    model, info = convert_checkpoint(args.checkpoint, output, variant=args.model)
    arch = info["architecture"]
    tensors = len(info["report"].loaded)
    print(
        f"{args.checkpoint}: {info['layout']} layout, {describe(arch)}, {tensors} tensors "
        f"-> {args.output} ({model.count_params():,} parameters)"
    )
    if not args.verify:
        return
    if arch.get("kind") in ("baseline", "hybrid"):
        # transformers has PoolFormer v1 only, and timm (the baselines' reference) is a
        # test dependency: these conversions are checked by the test suite instead.
        print(
            f"keras-poolformer: error: --verify compares with transformers' PoolFormer v1 and "
            f"cannot check {describe(arch)}; nothing was written (convert without --verify; "
            "the test suite checks the baselines and hybrids against PyTorch references)",
            file=sys.stderr,
        )
        raise _UnverifiedError(2)

    from keras_poolformer.convert.verify import TOLERANCE, compare

    crop_pct = kp.MODEL_CONFIGS.get(arch["variant"] or "", {}).get("crop_pct", 0.9)
    if args.images:
        images = np.stack([kp.load_image(path, crop_pct=crop_pct) for path in args.images])
        source = f"{len(images)} image(s)"
    else:
        images = np.random.default_rng(0).uniform(0, 255, (4, 224, 224, 3)).astype("float32")
        source = "4 random-noise images (pass --images for real ones)"
    result = compare(model, info["state"], images)
    print(f"verified against transformers' PoolFormer on {source}:")
    print(f"  max |logit difference|: {result['max_abs_diff']:.3g} (tolerance {TOLERANCE:g})")
    print(f"  top-1 agreement: {result['top1_agreement']:.0%}")
    print(f"  top-5 agreement (same classes, same order): {result['top5_agreement']:.0%}")
    if result["max_abs_diff"] > TOLERANCE:
        print(
            "keras-poolformer: error: the converted model does not match; nothing was written",
            file=sys.stderr,
        )
        raise _UnverifiedError(1)


# The config `train --task T` uses when no --config is given.
DEFAULT_TASK_CONFIGS = {"detection": "raccoon_retinanet", "segmentation": "camvid_deeplab"}


def train(args):
    """Trains a config; started again with the same command, it resumes."""
    from keras_poolformer.training import configs, trainer

    name = args.config or DEFAULT_TASK_CONFIGS.get(args.task)
    if name is None:
        raise ValueError("train needs --config NAME (keras-poolformer configs lists them).")
    overrides = list(args.overrides) + ([f"task={args.task}"] if args.task else [])
    config = configs.get_config(name, overrides, smoke_run=args.smoke)
    metrics = trainer.train(
        config,
        args.data,
        args.output,
        data_dir=args.data_dir,
        strategy=args.strategy,
        init=args.init,
    )
    print(f"final weights: {os.path.join(args.output, 'final.weights.h5')}")
    if "val_top1" in metrics:
        print(f"val top-1 {metrics['val_top1']:.2%}, top-5 {metrics['val_top5']:.2%}")
    else:
        print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith("val_")))
    return 0


def _run_task(args):
    """The task of ``--run DIR`` (from its config.json), or None without ``--run``."""
    import json

    if not getattr(args, "run", None):
        return None
    path = os.path.join(args.run, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"'{args.run}' is not a training output folder (no config.json).")
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("task", "classification")


def _dense_evaluate(args, task_name):
    """The validation metrics of a detection or segmentation run."""
    from keras_poolformer.training import tasks, trainer

    config, names, model, spec = trainer.load_run(args.run)
    if args.weights:
        model.load_weights(args.weights)
    task = tasks.get(task_name)
    source = task.load_source(args.data or spec, args.data_dir, cache_dir=args.run)
    metrics = task.evaluate(model, source.val, config.replace(eval_steps=0))
    print(f"{args.data or spec}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if task_name == "segmentation":
        from keras_poolformer.training import segmentation

        ious = segmentation.per_class_iou(model, source.val, config, names, source.ignore_index)
        for name, iou in ious.items():
            print(f"  {name:>12}  IoU {iou:.4f}")
    return 0


def _dense_predict(args, task_name):
    """PNGs of a detection or segmentation run's predictions, one per image."""
    from keras_poolformer.training import trainer

    if not args.output:
        raise ValueError("predict --run on a detection or segmentation run needs --output DIR.")
    config, names, model, _ = trainer.load_run(args.run)
    os.makedirs(args.output, exist_ok=True)
    stems = [os.path.splitext(os.path.basename(p))[0] for p in args.images]
    if task_name == "detection":
        from keras_poolformer.training import detection

        found = detection.predict_images(model, args.images, config, names)
        for path, stem, item in zip(args.images, stems, found, strict=True):
            out = os.path.join(args.output, f"{stem}.png")
            detection.draw_detections(path, item, out, names)
            best = [
                f"{names[c]} {s:.2f} [{', '.join(f'{v:.0f}' for v in b)}]"
                for b, s, c in zip(item["boxes"], item["scores"], item["classes"], strict=True)
                if s >= 0.3
            ]
            print(f"{path}: {'; '.join(best) or 'nothing above 0.3'} -> {out}")
    else:
        import numpy as np

        from keras_poolformer.training import segmentation

        masks = segmentation.predict_masks(model, args.images, config)
        for path, stem, mask in zip(args.images, stems, masks, strict=True):
            out = os.path.join(args.output, f"{stem}.png")
            segmentation.draw_overlay(path, mask, out, names)
            counts = np.bincount(mask.ravel(), minlength=len(names)) / mask.size
            top = np.argsort(-counts)[:3]
            shares = ", ".join(f"{names[i]} {counts[i]:.0%}" for i in top)
            print(f"{path}: {shares} -> {out}")
    return 0


def _dense_export(args, task_name):
    """The SavedModel of a detection or segmentation run (image bytes in)."""
    from keras_poolformer.training import trainer

    if args.tflite or args.onnx or args.preset or not args.saved_model:
        raise ValueError(
            f"a {task_name} run exports a SavedModel only: use --saved-model DIR alone."
        )
    config, names, model, _ = trainer.load_run(args.run)
    module = __import__(f"keras_poolformer.training.{task_name}", fromlist=["export_saved_model"])
    directory = os.path.join(args.saved_model, str(args.version))
    written = module.export_saved_model(model, config, names, directory)
    print(f"SavedModel ({task_name}, image bytes in): {written or directory}")
    return 0


def evaluate(args):
    """Top-1 / top-5 of a model on a dataset's validation split (or a detection run's mAP,
    a segmentation run's mean IoU)."""
    import keras_poolformer as kp
    from keras_poolformer.training import configs, data, trainer

    task = _run_task(args)
    if task not in (None, "classification"):
        return _dense_evaluate(args, task)

    if args.run:
        config, _, model, spec = trainer.load_run(args.run)
        spec = args.data or spec
        source = data.load_source(spec, args.data_dir, cache_dir=args.run)
        if args.weights:
            model.load_weights(args.weights)
    else:
        if not (args.model and args.weights and args.data):
            raise ValueError("evaluate needs --run DIR, or --model, --weights and --data.")
        config, spec = configs.get_config(args.model), args.data
        source = data.load_source(spec, args.data_dir)
        model = trainer.build_model(config, len(source.class_names))
        if str(args.weights).endswith(".weights.h5"):
            model.load_weights(args.weights)
        else:
            from keras_poolformer.convert import load_official

            kp.porting.load_state_dict(model, load_official(args.weights)[0])
    top1, top5 = trainer.evaluate(model, source, config, batch_size=args.batch_size)
    print(f"{spec}: top-1 {top1:.2%}, top-5 {top5:.2%}")
    return 0


def list_configs(args):
    """Prints each training config's task (when not classification), model, batch,
    schedule and note."""
    from keras_poolformer.training import configs

    for name, config in sorted(configs.CONFIGS.items()):
        task = "" if config.task == "classification" else f"{config.task}, "
        print(
            f"{name}: {task}model {config.model}, {config.image_size}px, "
            f"batch {config.batch_size}, "
            f"{config.epochs}+{config.cooldown_epochs} epochs, peak lr {config.peak_lr:.3g}"
        )
        print(f"    {config.note}")
    return 0


def _cosine(a, b):
    import numpy as np

    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(
        np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
    )


CALIBRATION_IMAGES = 200  # int8 calibration draw from --calibration (TFLite's usual 100-500)


def calibration_split(found, check_count, count=CALIBRATION_IMAGES, seed=0):
    """Splits the images of a ``--calibration`` folder into ``(calibration, checks)``.

    Both are drawn from a seeded shuffle of the whole folder, so a folder sorted by class
    gives every class its share rather than the first class all of it (the first 200
    files of ImageNet's val tree are one class). The checks come first in the shuffle and
    the calibration images after them, so the two do not overlap when the folder holds
    more than ``check_count`` images; a smaller folder serves as both. The draw depends
    on the file names and ``seed`` alone, so repeated exports calibrate alike.

    >>> calibration_split([f"{c}/{i}.jpg" for c in "ab" for i in range(3)], 2, count=3)
    (['b/2.jpg', 'b/1.jpg', 'a/0.jpg'], ['b/0.jpg', 'a/2.jpg'])
    """
    import numpy as np

    ordered = sorted(found)
    if not ordered:
        return [], []
    shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    checks = shuffled[:check_count]
    rest = shuffled[check_count:] or shuffled
    return rest[:count], checks


def export(args):
    """Writes the SavedModel, the KerasHub preset, TFLite and ONNX asked for (each on its
    own or together), then checks each against Keras."""
    import glob

    import numpy as np
    import tensorflow as tf

    import keras_poolformer as kp
    from keras_poolformer import export as export_lib

    task = _run_task(args)
    if task not in (None, "classification"):
        return _dense_export(args, task)
    deploy = args.saved_model or args.tflite or args.onnx
    if not (deploy or args.preset):
        raise ValueError("export needs at least one of --saved-model, --preset, --tflite, --onnx.")
    if args.preset:
        from keras_poolformer import presets

        presets.check_destination(args.preset)  # before the model is built
    _check_images(args.images)
    if args.calibration and not os.path.isdir(args.calibration):
        raise ValueError(f"calibration folder '{args.calibration}' does not exist.")
    if args.tflite and args.quantize == "int8" and not args.calibration:
        raise ValueError("--quantize int8 needs --calibration FOLDER (images to calibrate on).")
    found = []
    if args.calibration:
        from keras_poolformer.training.data import IMAGE_SUFFIXES

        found = [
            p for p in glob.glob(os.path.join(args.calibration, "**", "*"), recursive=True)
            if p.lower().endswith(IMAGE_SUFFIXES)
        ]  # fmt: skip
        if not found:
            raise ValueError(f"calibration folder '{args.calibration}' holds no images.")
    limits = kp.imagenet.ImageLimits(  # checked before the model is built
        max_pixels=args.max_pixels,
        max_side=args.max_side,
        max_aspect_ratio=args.max_aspect_ratio,
    )
    model, class_names, size, crop_pct = _classifier(args)
    reference = export_lib.logits_model(model)
    deployed = export_lib.fold(reference) if args.fold and deploy else reference
    paths = list(args.images or [])
    calibration = None
    if found:
        drawn, checks = calibration_split(found, 0 if paths else args.check_images)
        paths = paths or checks
        if args.tflite and args.quantize == "int8":
            calibration = np.stack([kp.load_image(p, size, crop_pct) for p in drawn])
            overlap = "" if not set(drawn) & set(paths) else ", overlapping the checks"
            print(
                f"int8 calibration: {len(drawn)} of {len(found)} images in "
                f"{args.calibration} (seeded draw{overlap})"
            )
    images = np.stack([kp.load_image(p, size, crop_pct) for p in paths]) if paths else None
    keras_logits = reference.predict(images, verbose=0) if images is not None else None
    rows = []

    if args.saved_model:
        directory = export_lib.export_saved_model(
            deployed, args.saved_model, args.version, class_names, crop_pct, image_limits=limits
        )
        print(
            f"SavedModel: {directory} (signatures serving_default, predict_pixels; "
            "warm-up requests)"
        )
        if images is not None:
            served = tf.saved_model.load(directory).signatures["serving_default"]
            encoded = [tf.io.read_file(p) for p in paths]
            probs = served(image_bytes=tf.stack(encoded))["probabilities"].numpy()
            keras_probs = tf.nn.softmax(keras_logits).numpy()
            rows.append(("SavedModel (JPEG bytes in)", probs, keras_probs, None))
    if args.preset:
        directory = presets.save_preset(model, args.preset, crop_pct=crop_pct, image_size=size)
        print(
            f"KerasHub preset: {directory} (image size {size}, crop {crop_pct:g}; "
            "keras_hub.models.ImageClassifier.from_preset)"
        )
        if images is not None:
            import keras_hub

            loaded = keras_hub.models.ImageClassifier.from_preset(directory)
            logits = np.asarray(loaded(images))
            rows.append(("KerasHub preset (reloaded)", logits, keras_logits, None))
    if args.tflite:
        size_bytes = export_lib.export_tflite(deployed, args.tflite, args.quantize, calibration)
        print(f"TFLite ({args.quantize}): {args.tflite}, {size_bytes / 1e6:.1f} MB")
        if images is not None:
            rows.append(
                (
                    f"TFLite {args.quantize}",
                    export_lib.run_tflite(args.tflite, images),
                    keras_logits,
                    size_bytes,
                )
            )
    if args.onnx:
        size_bytes = export_lib.export_onnx(deployed, args.onnx)
        print(f"ONNX: {args.onnx}, {size_bytes / 1e6:.1f} MB")
        if images is not None:
            rows.append(
                (
                    "ONNX (onnxruntime)",
                    export_lib.run_onnx(args.onnx, images),
                    keras_logits,
                    size_bytes,
                )
            )
    if rows:
        print(f"agreement with the Keras model on {len(paths)} image(s):")
        for name, ours, theirs, _ in rows:
            top1 = float(np.mean(ours.argmax(1) == theirs.argmax(1)))
            print(
                f"  {name}: max |difference| {np.abs(ours - theirs).max():.3g}, "
                f"top-1 agreement {top1:.0%}, cosine {_cosine(ours, theirs):.6f}"
            )
    return 0


def gradcam(args):
    """Writes a Grad-CAM overlay PNG per image, titled with the top class."""
    import numpy as np

    import keras_poolformer as kp
    from keras_poolformer.gradcam import gradcam as heatmaps
    from keras_poolformer.gradcam import save_overlay

    _check_images(args.images)
    model, names, size, crop_pct = _classifier(args)
    names = names or [name for _, name in kp.imagenet.class_names()]
    images = np.stack([kp.load_image(p, size, crop_pct) for p in args.images])
    maps, classes = heatmaps(model, images)
    probs = _softmax(np.asarray(model.predict(images, verbose=0)))
    os.makedirs(args.output, exist_ok=True)
    for path, image, heatmap, index, row in zip(
        args.images, images, maps, classes, probs, strict=True
    ):
        stem = os.path.splitext(os.path.basename(path))[0]
        target = os.path.join(args.output, f"{stem}_gradcam.png")
        save_overlay(image, heatmap, f"{names[index]} ({row[index]:.1%})", target)
        print(f"{path}: {names[index]} ({row[index]:.1%}) -> {target}")
    return 0


def _image_limit_defaults():
    """The default serving image limits (the export command's option defaults)."""
    from keras_poolformer.imagenet import DEFAULT_IMAGE_LIMITS

    return DEFAULT_IMAGE_LIMITS


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other error of
    the command (the full usage is one ``--help`` away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text):
    """argparse type: an integer >= 1 (a batch of -1 or 0 images cannot run)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def build_parser():
    from keras_poolformer import poolformer_table

    variants = list(poolformer_table.VARIANT_SPECS)
    parser = _Parser(prog="keras-poolformer", description="PoolFormer (MetaFormer) in Keras 3.")
    commands = parser.add_subparsers(dest="command", required=True)

    names = all_model_names()
    p = commands.add_parser(
        "summary",
        help="every model's parameters and MACs beside the published figures",
    )
    p.add_argument(
        "--models", nargs="+", choices=names, metavar="NAME", help="these models (default: all)"
    )
    p.add_argument("--variants", nargs="+", choices=variants, help="these PoolFormer variants")
    p.add_argument(
        "--build",
        action="store_true",
        help="build the baselines too and count their graphs (slower: seconds a model)",
    )
    p.add_argument("--images", nargs="+", metavar="IMAGE", help="also run these images")
    p.set_defaults(handler=summary)

    p = commands.add_parser(
        "predict", help="top-5 classes of images (or a dense run's boxes / masks as PNGs)"
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", choices=variants, default="s12")
    p.add_argument("--run", help="a training output folder: its model and classes")
    p.add_argument(
        "--output", help="folder for the PNGs of a detection or segmentation run's predictions"
    )
    p.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (default), a .weights.h5 file or a PyTorch checkpoint of that variant",
    )
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.set_defaults(handler=predict)

    p = commands.add_parser(
        "convert",
        help="convert a PyTorch checkpoint (official, timm or transformers layout) to Keras",
    )
    p.add_argument("checkpoint", help=".pth/.pth.tar/.bin/.safetensors/.npz or a HF model folder")
    p.add_argument("--output", required=True, help="a .weights.h5 or .keras file")
    from keras_poolformer.convert import model_names

    p.add_argument(
        "--model",
        choices=model_names(),
        metavar="MODEL",
        help="expected model: a PoolFormer variant (s12...), a v1 hybrid (metaformer_pppa_s12...) "
        "or a baseline (caformer_s18...); inferred otherwise, but needed to tell "
        "identityformer from poolformerv2 when the file name does not",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="compare with transformers' PyTorch PoolFormer (needs the [test] extra; "
        "PoolFormer v1 only)",
    )
    p.add_argument("--images", nargs="+", metavar="IMAGE", help="images for --verify")
    p.set_defaults(handler=convert)

    p = commands.add_parser("train", help="train with the paper's recipe (resumes if interrupted)")
    p.add_argument("--config", help="a training config (training/configs.py)")
    p.add_argument(
        "--task",
        choices=["classification", "detection", "segmentation"],
        help="what to learn (default: the config's; alone, detection trains raccoon_retinanet "
        "and segmentation camvid_deeplab)",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument(
        "--data",
        required=True,
        help="folder:PATH, tfds:NAME[:split] or synthetic; voc:PATH (detection), "
        "masks:PATH (segmentation)",
    )
    p.add_argument("--data-dir", help="the TFDS data folder")
    p.add_argument("--output", required=True, help="run folder (checkpoints, logs, weights)")
    p.add_argument(
        "--strategy", default="auto", help="auto, one-device, mirrored, multi-worker, tpu"
    )
    p.add_argument(
        "--init",
        help="start from 'imagenet', a weights/checkpoint path or (detection, segmentation) a "
        "classification run folder (new head)",
    )
    p.add_argument("--smoke", action="store_true", help="shrink the config to a few steps")
    p.set_defaults(handler=train)

    p = commands.add_parser(
        "export", help="SavedModel for TF Serving, KerasHub preset, TFLite and ONNX, checked"
    )
    p.add_argument("--model", choices=names, metavar="NAME", default="s12", help="any model name")
    p.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet', a checkpoint tag of a baseline (in1k_384, ...), 'none' (random), "
        "a .weights.h5 or a checkpoint",
    )
    p.add_argument("--run", help="export a training output folder's model instead")
    p.add_argument("--saved-model", help="base folder; writes DIR/<version>/")
    p.add_argument("--preset", metavar="DIR", help="write a KerasHub preset folder (new or empty)")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--tflite", help="also write a TFLite file")
    p.add_argument("--quantize", choices=["none", "fp16", "dynamic", "int8"], default="none")
    p.add_argument(
        "--calibration",
        help=f"image folder: int8 calibration ({CALIBRATION_IMAGES} drawn) and held-out checks",
    )
    p.add_argument("--onnx", help="also write an ONNX file")
    p.add_argument(
        "--no-fold", dest="fold", action="store_false", help="export without inference folding"
    )
    p.add_argument("--images", nargs="+", metavar="IMAGE", help="check the exports on these")
    p.add_argument(
        "--check-images", type=_positive_int, default=16, help="checks from --calibration"
    )
    limits = _image_limit_defaults()
    p.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=limits.max_pixels,
        help=f"serving refuses images of more pixels (default {limits.max_pixels})",
    )
    p.add_argument(
        "--max-side",
        type=_positive_int,
        default=limits.max_side,
        help=f"serving refuses images with a longer side (default {limits.max_side})",
    )
    p.add_argument(
        "--max-aspect-ratio",
        type=float,
        default=limits.max_aspect_ratio,
        help=f"serving refuses longer/shorter sides beyond (default {limits.max_aspect_ratio:g})",
    )
    p.set_defaults(handler=export)

    p = commands.add_parser("gradcam", help="Grad-CAM heat-map overlays as PNG files")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", choices=variants, default="s12")
    p.add_argument(
        "--weights", default="imagenet", help="'imagenet', a .weights.h5 or a checkpoint"
    )
    p.add_argument("--run", help="explain a training output folder's model instead")
    p.add_argument("--output", required=True, help="folder for the PNG files")
    p.set_defaults(handler=gradcam)

    p = commands.add_parser("configs", help="list the training configs and how they were run")
    p.set_defaults(handler=list_configs)

    p = commands.add_parser("evaluate", help="top-1 / top-5 on a validation split")
    p.add_argument("--run", help="a training output folder (its config, weights and data)")
    p.add_argument("--model", help="a training config name (architecture and eval transform)")
    p.add_argument("--weights", help=".weights.h5 or checkpoint")
    p.add_argument("--data", help="folder:PATH, tfds:NAME[:split] or synthetic")
    p.add_argument("--data-dir")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.set_defaults(handler=evaluate)
    return parser


def _one_line(error):
    """An error as one line for the terminal: TensorFlow's node tags and graph context
    dropped, a multi-line message joined (and cut if long)."""
    import tensorflow as tf

    if isinstance(error, tf.errors.OpError):  # "{{function_node ...}} what; why [Op:ReadFile]"
        text = re.sub(r"\{\{[^}]*\}\}|\s*\[Op:[^]]*\]", "", error.message).strip()
        text = text.splitlines()[0] if text else ""
    else:
        text = " ".join(str(error).split())
    text = text or type(error).__name__
    return text if len(text) <= 500 else f"{text[:497]}..."


def main(argv=None):
    """Runs one command. User errors (bad paths, values, files) end with one line on
    stderr and exit status 2; programming errors keep their traceback."""
    args = build_parser().parse_args(argv)
    import tensorflow as tf

    # Each model traces its own predict function once; TF's retracing notice is noise here.
    tf.get_logger().setLevel("ERROR")
    user_errors = (
        ValueError,  # our own errors, and Keras' on bad files and shapes
        OSError,
        RuntimeError,  # RecursionError included
        tf.errors.NotFoundError,
        tf.errors.InvalidArgumentError,  # undecodable images, bad shapes
        tf.errors.FailedPreconditionError,  # a folder where a file was expected
        tf.errors.DataLossError,
        tf.errors.PermissionDeniedError,
        tf.errors.ResourceExhaustedError,  # out of memory: a smaller --batch-size helps
    )
    try:
        return args.handler(args)
    except user_errors as error:
        print(f"keras-poolformer: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("keras-poolformer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
