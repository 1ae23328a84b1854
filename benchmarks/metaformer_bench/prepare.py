"""The shared models and their files, written once into the work folder before the
contenders load them (each ``prepare*`` runs in a process of its own, see
``runner.call_in_process``, so that TensorFlow and torch are freed after).

- S12 (:func:`prepare`): seeded random weights (or ``--weights``), the folded model's
  SavedModel, TFLite fp32 and int8 and ONNX files as ``keras-poolformer export`` writes
  them, and the PyTorch reference (transformers' PoolFormer) holding the same weights,
  exported to ONNX.
- Each baseline family's model (:func:`prepare_families`): the same exports but ONNX,
  and timm's model of it holding our weights, exported to ONNX.
- The check images every contender's logits are compared on, and the int8 calibration
  images: real ImageNet validation images at the model's evaluation crop when the
  shared data is there, else random pixels.
"""

import gc
import json
import os
import time
import traceback
from pathlib import Path

import numpy as np

from metaformer_bench.contenders import (
    configured_tensorflow,
    litert_interpreter,
    pixels_module,
    timm_module,
)
from metaformer_bench.settings import CROP_PCT, S12, SEED, SIZE


def load_images(folder, start, count, size=SIZE, crop_pct=CROP_PCT):
    """``count`` real images from ``folder`` (labels.csv order, from ``start``), or ``None``."""
    import csv

    import keras_poolformer as kp

    labels = Path(folder) / "labels.csv"
    if not labels.is_file():
        return None
    with open(labels, newline="") as f:
        names = [row["filename"] for row in csv.DictReader(f)][start : start + count]
    if len(names) < count:
        return None
    paths = [Path(folder) / "images" / name for name in names]
    return np.stack([kp.load_image(path, size, crop_pct) for path in paths])


def check_and_calibration(mode, folder, crop_pct):
    """The check images and the (disjoint) int8 calibration images, and whether they are
    real: random pixels when the folder is absent or holds too few."""
    check = load_images(folder, 0, mode.check_images, crop_pct=crop_pct)
    calibration = load_images(folder, mode.check_images, mode.calibration_images, crop_pct=crop_pct)
    if check is not None and calibration is not None:
        return check, calibration, True
    rng = np.random.default_rng(SEED + 1)
    shape = (SIZE, SIZE, 3)
    check = rng.uniform(0, 255, (mode.check_images, *shape)).astype(np.float32)
    calibration = rng.uniform(0, 255, (mode.calibration_images, *shape)).astype(np.float32)
    return check, calibration, False


def export_torch_onnx(module, path):
    """Exports a pixels-in torch module to ONNX; returns which exporter wrote it."""
    import importlib.util
    import warnings

    import torch

    example = (torch.zeros(1, SIZE, SIZE, 3),)
    names = {"input_names": ["images"], "output_names": ["logits"]}
    if importlib.util.find_spec("onnxscript") is not None:
        batch = torch.export.Dim("batch")
        torch.onnx.export(module, example, path, dynamic_shapes=({0: batch},), dynamo=True, **names)
        return "torch.onnx.export(dynamo=True)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            example,
            path,
            dynamic_axes={"images": {0: "batch"}},
            opset_version=17,
            dynamo=False,
            **names,
        )
    return "torch.onnx.export(dynamo=False): the TorchScript exporter, as onnxscript is missing"


def _size(path):
    if os.path.isdir(path):
        return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    return os.path.getsize(path)


class _Exports:
    """Writes artifacts, recording each one's time and size."""

    def __init__(self, settings, model):
        self.settings, self.model, self.done = settings, model, {}

    def __call__(self, name, write):
        start = time.perf_counter()
        result = write()
        self.done[name] = {
            "seconds": round(time.perf_counter() - start, 1),
            "bytes": _size(self.settings.artifact(name, self.model)),
        }
        return result


def _keras_exports(exports, deployed, calibration, crop_pct, onnx=True):
    """Our SavedModel, TFLite fp32 and int8 (and ONNX) of the folded model."""
    from keras_poolformer import export

    settings, model = exports.settings, exports.model
    folder = Path(settings.artifact("saved_model", model)).parent
    exports("saved_model", lambda: export.export_saved_model(deployed, folder, crop_pct=crop_pct))
    exports(
        "tflite_fp32",
        lambda: export.export_tflite(deployed, settings.artifact("tflite_fp32", model)),
    )
    exports(
        "tflite_int8",
        lambda: export.export_tflite(
            deployed,
            settings.artifact("tflite_int8", model),
            "int8",
            calibration_images=calibration,
        ),
    )
    if onnx:
        exports("onnx", lambda: export.export_onnx(deployed, settings.artifact("onnx", model)))
    for kind in ("tflite_fp32", "tflite_int8"):
        path = settings.artifact(kind, model)
        exports.done[kind]["resizes"] = litert_interpreter(path, 1, 2) is not None


def _write_reference_config(settings, model, **extra):
    from keras_poolformer.layers import IMAGENET_MEAN, IMAGENET_STD

    config = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), **extra}
    with open(settings.artifact("normalisation", model), "w") as f:
        json.dump(config, f)
    return config


def reference_artifacts(settings, model=S12, arch=None, weights=None):
    """A PoolFormer's Keras weights and its transformers reference holding them, in the
    work folder under ``model``; ``arch`` (``depths``, ``dims``) builds a PoolFormer of
    that shape instead of the named one (small ones for tests). Returns the Keras model
    and the reference as a pixels-in torch module."""
    import keras

    import keras_poolformer as kp
    from keras_poolformer.convert.verify import reference_model

    keras.utils.set_random_seed(SEED)
    if arch is not None:
        net = kp.PoolFormer(**arch, weights=weights)
    else:
        net = getattr(kp, kp.registry.resolve(model).constructor)(weights=weights)
    net.save_weights(settings.artifact("weights", model))
    reference = reference_model(kp.porting.export_state_dict(net))
    reference.save_pretrained(settings.artifact("reference", model))
    config = _write_reference_config(settings, model)
    return net, pixels_module(reference, config["mean"], config["std"]).eval()


def prepare(mode, settings, images_folder, weights=None):
    """Builds the S12 every contender runs and writes its artifacts into the work folder.

    ``weights``: anything ``PoolFormerS12(weights=...)`` takes; seeded random weights if
    ``None``. The SavedModel, TFLite and ONNX files are written from the folded model,
    as ``keras-poolformer export`` writes them by default.

    Returns what the report needs to know about them: sizes and export times, where the
    check and calibration images came from, the MACs of the scaling models.
    """
    configured_tensorflow(settings)
    import keras_poolformer as kp
    from keras_poolformer import export

    model, module = reference_artifacts(settings, S12, weights=weights)
    check, calibration, real = check_and_calibration(mode, images_folder, CROP_PCT)
    np.save(settings.artifact("check"), check)

    exports = _Exports(settings, S12)
    _keras_exports(exports, export.fold(model), calibration, CROP_PCT)
    path = settings.artifact("reference_onnx")
    exporter = exports("reference_onnx", lambda: export_torch_onnx(module, path))
    exports.done["reference_onnx"]["exporter"] = exporter

    size_free = kp.PoolFormerS12(weights=None, input_shape=(None, None, 3))
    return {
        "weights": str(weights) if weights else f"random (seed {SEED})",
        "exports": exports.done,
        "images": "real ImageNet validation images" if real else "random pixels",
        "images_folder": str(images_folder) if real else None,
        "check_images": len(check),
        "calibration_images": len(calibration),
        "macs": {key: config["macs"] for key, config in kp.MODEL_CONFIGS.items()},
        "s12_macs_by_size": {
            size: kp.count_macs(size_free, (size, size)) for size in mode.scaling_sizes
        },
    }


def timm_state_dict(timm_net, official):
    """Our official-layout state dict ``official`` under timm's keys and shapes, by the
    converter's own renaming rules (timm's 1x1 convolutions are official Linears)."""
    import torch

    from keras_poolformer.convert.layouts import baseline_to_official

    shapes = {key: tuple(value.shape) for key, value in timm_net.state_dict().items()}
    renamed, _ = baseline_to_official({key: np.zeros(0) for key in shapes}, "timm")
    state = {}
    for key, official_key in zip(shapes, renamed, strict=True):
        value = np.asarray(official[official_key], np.float32)
        if value.shape != shapes[key] and value.shape + (1, 1) != shapes[key]:
            raise ValueError(f"{key}: timm has {shapes[key]}, ours {value.shape}")
        state[key] = torch.from_numpy(np.ascontiguousarray(value.reshape(shapes[key])))
    return state


def prepare_family(mode, settings, model, images_folder, weights=None):
    """One baseline family's model (``"caformer_s18"``): seeded random weights or
    ``weights``, our folded exports, the check and calibration images at its evaluation
    crop, and timm's model holding our weights with its ONNX export."""
    import keras
    import torch

    import keras_poolformer as kp
    from keras_poolformer import export
    from keras_poolformer.baselines import layout

    spec = kp.registry.resolve(model)
    crop_pct = spec.checkpoints[0].crop_pct if spec.checkpoints else 1.0
    keras.utils.set_random_seed(SEED)
    net = getattr(kp, spec.constructor)(weights=weights)
    net.save_weights(settings.artifact("weights", model))
    check, calibration, real = check_and_calibration(mode, images_folder, crop_pct)
    np.save(settings.artifact("check", model), check)

    exports = _Exports(settings, model)
    _keras_exports(exports, export.fold(net), calibration, crop_pct, onnx=False)

    epsilon = getattr(net.get_layer("head"), "epsilon", None)  # the MLP head's norm
    config = _write_reference_config(settings, model, head_norm_eps=epsilon)
    timm_net = timm_module(model, epsilon)
    state = timm_state_dict(timm_net, layout.export_state_dict(net))
    timm_net.load_state_dict(state, strict=True)
    torch.save(state, settings.artifact("timm_state", model))
    module = pixels_module(timm_net.eval(), config["mean"], config["std"]).eval()
    path = settings.artifact("reference_onnx", model)
    exporter = exports("reference_onnx", lambda: export_torch_onnx(module, path))
    exports.done["reference_onnx"]["exporter"] = exporter
    return {
        "model": model,
        "title": _title(spec.constructor),
        "weights": str(weights) if weights else f"random (seed {SEED})",
        "exports": exports.done,
        "images": "real ImageNet validation images" if real else "random pixels",
        "crop_pct": crop_pct,
        "check_images": len(check),
        "calibration_images": len(calibration),
    }


def prepare_families(mode, settings, images_folder, weights=None):
    """:func:`prepare_family` for each of ``mode.families``; a family that fails is
    returned with its error (``{"model", "error"}``) and the others go on."""
    import keras

    configured_tensorflow(settings)
    prepared = {}
    for model in mode.families:
        try:
            prepared[model] = prepare_family(mode, settings, model, images_folder, weights)
        except Exception:
            traceback.print_exc()
            message = traceback.format_exc().strip().splitlines()[-1]
            prepared[model] = {"model": model, "title": model, "error": message}
        keras.backend.clear_session()
        gc.collect()
    return prepared


def _title(constructor):
    """``"CAFormer-S18"`` for ``"CAFormerS18"``."""
    import re

    return re.sub(r"([SMB]\d+)$", r"-\1", constructor)
