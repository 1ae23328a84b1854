"""What each phase measures, and the results it returns (plain dicts, for the json).

- ``inference``: S12 at the mode's batches, every contender of the ``inference`` group,
  logits checked against the Keras model's on the check images.
- ``training``: one AdamW step of S12 at the mode's training batch.
- ``scaling``: Keras graph mode over the variants and over input sizes, against MACs.
- ``families``: CAFormer-S18, ConvFormer-S18 and PoolFormerV2-S12 (``mode.families``),
  each as the ``inference`` phase is, against timm's model holding our weights.
- ``gpu``: S12 in half precision on a device (Keras mixed precision, with and without
  XLA; the PyTorch reference under autocast, eager and compiled), inference and a
  training step; logits compared loosely with Keras fp32. ``device="cpu"`` runs the
  same code without a GPU (bfloat16), for tests and for ``--gpu-phase-on-cpu``.
"""

import dataclasses
from pathlib import Path

import numpy as np

from metaformer_bench.contenders import (
    Contender,
    half_precision,
    keras,
    registered,
)
from metaformer_bench.prepare import prepare_families
from metaformer_bench.runner import Bench, call_in_process
from metaformer_bench.settings import LEARNING_RATE, S12, SIZE, TOLERANCE, WEIGHT_DECAY


def records(contenders, bench, speeds, peaks=None, memory=None):
    """One result record per contender, failed ones included."""
    out = []
    for c in contenders:
        record = {"name": c.name, "label": c.label, "precision": c.precision, "size": c.size}
        record["error"] = bench.errors.get(c.name)
        record["speed"] = {str(b): s for (n, b), s in speeds.items() if n == c.name}
        if peaks and memory and peaks.get(c.name) and memory.get(c.name):
            before, after = peaks[c.name], memory[c.name]
            record["memory"] = {
                "loaded_rss_mib": bench.loaded_memory[c.name]["rss_mib"],
                "peak_rss_mib": max(before["peak_rss_mib"], after["peak_rss_mib"]),
                "peak_rss_in_rounds_mib": after["peak_rss_mib"] if before["reset"] else None,
            }
        out.append(record)
    return out


def agreement(logits, reference, fp32, real_images):
    """How closely ``logits`` follow the Keras model's on the same images."""
    cosine = np.sum(logits * reference, axis=1) / (
        np.linalg.norm(logits, axis=1) * np.linalg.norm(reference, axis=1)
    )
    top1 = float(np.mean(np.argmax(logits, 1) == np.argmax(reference, 1)))
    max_abs_diff = float(np.abs(logits - reference).max())
    return {
        "max_abs_diff": max_abs_diff,
        "within_tolerance": bool(max_abs_diff <= TOLERANCE) if fp32 else None,
        # Top-1 agreement on random pixels says nothing; it is kept for real images only.
        "top1_agreement": top1 if real_images else None,
        "cosine_mean": float(np.mean(cosine)),
        "cosine_min": float(np.min(cosine)),
    }


def measure_inference(
    contenders, mode, settings, check, real_images, log_dir, log, reference="keras"
):
    """Loads ``contenders`` (a worker each), checks their logits on ``check`` against
    those of the one named ``reference``, times them in alternating rounds at
    ``mode.batches`` and reads their memory."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    bench = Bench([[c] for c in contenders], settings, log_dir, log)
    try:
        log("warming up")
        bench.warm_up(mode.batches)
        log(f"checking logits on {len(check)} images")
        logits = bench.logits(check, chunk=max(mode.batches))
        peaks = bench.reset_peaks()
        log("timing")
        speeds = bench.rounds(mode.batches, mode.rounds, mode.seconds, warmup=1)
        memory = bench.memory()
    finally:
        bench.close()
    out = records(contenders, bench, speeds, peaks, memory)
    expected = logits.get(reference)
    for record in out:
        if expected is not None and logits.get(record["name"]) is not None:
            fp32 = record["precision"] == "fp32"
            record["agreement"] = agreement(logits[record["name"]], expected, fp32, real_images)
    return {
        "batches": list(mode.batches),
        "keras_max_abs_logit": float(np.abs(expected).max()) if expected is not None else None,
        "contenders": out,
    }


def measure_training(contenders, mode, settings, log_dir, log):
    """Loads the training ``contenders`` and times their step at ``mode.train_batch``."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    bench = Bench([[c] for c in contenders], settings, log_dir, log)
    try:
        log("warming up (XLA compiles here)")
        bench.warm_up([mode.train_batch])
        peaks = bench.reset_peaks()
        log("timing")
        speeds = bench.rounds([mode.train_batch], mode.train_rounds, mode.train_seconds, 0)
        memory = bench.memory()
    finally:
        bench.close()
    return records(contenders, bench, speeds, peaks, memory)


def inference_phase(mode, settings, prepared, log_dir, log):
    log(f"checks on {prepared['check_images']} {prepared['images']}")
    check = np.load(settings.artifact("check"))
    real = prepared["images"].startswith("real")
    contenders = registered("inference")
    return measure_inference(contenders, mode, settings, check, real, log_dir, log)


def training_phase(mode, settings, log_dir, log):
    return {
        "batch": mode.train_batch,
        "optimizer": f"AdamW(lr={LEARNING_RATE}, weight_decay={WEIGHT_DECAY})",
        "contenders": measure_training(registered("training"), mode, settings, log_dir, log),
    }


def scaling_contenders(mode):
    """Keras graph mode for each variant at 224, and S12 at each input size."""
    configs = [(variant, SIZE) for variant in mode.scaling_variants]
    configs += [("s12", size) for size in mode.scaling_sizes]
    return [
        Contender(
            f"keras_{variant}_{size}",
            f"Keras {variant.upper()} {size}x{size}, graph",
            keras,
            size=size,
            options={"model": variant, "size": size, "ported": False},
        )
        for variant, size in dict.fromkeys(configs)  # S12 at 224 once
    ]


def scaling_phase(mode, settings, prepared, log_dir, log):
    contenders = scaling_contenders(mode)
    bench = Bench([contenders], settings, log_dir, log)  # one worker: memory is shared
    try:
        log("warming up")
        bench.warm_up([mode.scaling_batch])
        log("timing")
        speeds = bench.rounds([mode.scaling_batch], mode.scaling_rounds, mode.seconds, 1)
    finally:
        bench.close()
    by_name = {r["name"]: r for r in records(contenders, bench, speeds)}

    def row(record, macs):
        speed = record["speed"].get(str(mode.scaling_batch))
        return {
            "name": record["name"],
            "macs": macs,
            "images_per_s": speed["median"] if speed else None,
            # MACs done per second: flat when time grows in step with the MACs.
            "gmacs_per_s": speed["median"] * macs / 1e9 if speed else None,
            "error": record["error"],
        }

    return {
        "batch": mode.scaling_batch,
        "variants": [
            {"variant": v, **row(by_name[f"keras_{v}_{SIZE}"], prepared["macs"][v])}
            for v in mode.scaling_variants
        ],
        "sizes": [
            {"size": s, **row(by_name[f"keras_s12_{s}"], prepared["s12_macs_by_size"][s])}
            for s in mode.scaling_sizes
        ],
    }


def families_phase(mode, settings, images_folder, weights, log_dir, log):
    """Each of ``mode.families`` as the inference phase runs S12, against timm; a family
    whose export fails is reported with its error and the others go on."""
    log(f"exporting {', '.join(mode.families)}")
    log_dir = Path(log_dir)
    prepared = call_in_process(
        log_dir / "prepare_families.log", prepare_families, mode, settings, images_folder, weights
    )
    models = []
    for model in mode.families:
        info = prepared[model]
        if info.get("error"):
            log(f"{model} failed to export: {info['error']}")
            models.append({**info, "batches": list(mode.batches), "contenders": []})
            continue
        log(f"{info['title']}: checks on {info['check_images']} {info['images']}")
        check = np.load(settings.artifact("check", model))
        real = info["images"].startswith("real")
        contenders = registered("families", model=model)
        result = measure_inference(contenders, mode, settings, check, real, log_dir / model, log)
        models.append({**info, "error": None, **result})
    return {"batches": list(mode.batches), "models": models}


def gpu_found():
    """Whether both frameworks see a GPU: ``{"found", "reason"}`` and the GPU's name."""
    try:
        import torch
    except ImportError:
        return {"found": False, "reason": "torch is not installed"}
    if not torch.cuda.is_available():
        return {"found": False, "reason": "torch.cuda.is_available() is False"}
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return {"found": False, "reason": "TensorFlow sees no GPU"}
    return {"found": True, "reason": None, "name": torch.cuda.get_device_name(0)}


def gpu_phase(
    mode,
    settings,
    real_images,
    log_dir,
    log,
    device="gpu",
    device_name=None,
    model=S12,
    arch=None,
    names=None,
):
    """S12 (or ``model``; ``arch`` for a PoolFormer of another shape) in half
    precision on ``device`` ("gpu", or "cpu" to run this code without one): inference
    at the mode's batches and a training step, every contender of the ``gpu`` and
    ``gpu_training`` groups (those in ``names`` if given). Logits are compared with
    the Keras fp32 contender's (``keras``) on the model's check images, without the
    fp32 tolerance: max abs diff, top-1 agreement, cosine."""
    half = half_precision(device)
    precision = {"float16": "fp16", "bfloat16": "bf16"}[half]

    def chosen(group):
        picked = registered(group, device=device, model=model, arch=arch)
        picked = [c for c in picked if names is None or c.name in names]
        return [
            dataclasses.replace(c, precision=precision) if c.precision == "half" else c
            for c in picked
        ]

    log_dir = Path(log_dir) / "gpu"
    check = np.load(settings.artifact("check", model))
    inference = measure_inference(chosen("gpu"), mode, settings, check, real_images, log_dir, log)
    training = measure_training(chosen("gpu_training"), mode, settings, log_dir, log)
    return {
        "device": device,
        "device_name": device_name or device,
        "half_precision": half,
        "model": model,
        "batches": list(mode.batches),
        "inference": inference,
        "training": {"batch": mode.train_batch, "contenders": training},
    }
