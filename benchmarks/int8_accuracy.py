"""What full-integer (int8) TFLite costs a trained classifier in accuracy, on real images.

    python benchmarks/int8_accuracy.py           # runs/imagenette beside the repository, Imagenette
    python benchmarks/int8_accuracy.py --run DIR --data DIR --calibration 500 --output DIR
    python benchmarks/int8_accuracy.py --draw first --output DIR  # as `export --calibration`

Why: the export checks (``keras-poolformer export --images``, ``benchmarks/benchmark.py``)
compare int8 logits with float ones on a handful of images, often with random weights.
Whether int8 changes the *answers* of a trained model can only be told by top-1 on a whole
validation split, which is what this script measures.

What it does, with the library's own functions throughout:

1. rebuilds the model of a ``keras-poolformer train`` run folder (``config.json``,
   ``classes.json``, ``final.weights.h5``) with ``trainer.load_run``, as
   ``keras-poolformer evaluate --run`` and ``export --run`` do;
2. exports its logits, folded (``export.fold``, the ``export`` command's default), to
   TFLite float32 and to full-integer int8 (``export.export_tflite``: uint8 pixels in,
   int8 logits out), the int8 file calibrated on ``--calibration`` images (default 200)
   of the *train* split, never of val: by default drawn with ``--seed``, the same number
   from every class (to within one); with ``--draw first`` the first ones by path, which
   is how ``keras-poolformer export --calibration FOLDER`` picks them (on Imagenette's
   train folder: all from the first class);
3. runs the whole val split through the run's evaluation pipeline
   (``data.eval_dataset``: decode, bicubic resize of the shorter side to
   ``image_size / crop_pct``, centre crop; the pipeline ``evaluate --run`` uses) and
   scores the Keras model (unfolded, batches of ``--batch-size`` as ``evaluate`` runs
   it), TFLite float32 and TFLite int8 (LiteRT's interpreter, ``--threads`` threads,
   one image at a time since the files take a batch of one);
4. reports top-1 / top-5 of each, the Keras top-1 beside the one the run logged at its
   end (the same evaluation), int8-vs-float32 top-1 agreement and the images where
   they disagree, per-class top-1, how the int8 weights were quantized (per channel or
   per tensor, read off the file), and writes ``int8_accuracy.json`` and
   ``int8_accuracy.md`` (each written to a temporary name and renamed) to
   ``--output`` (default ``benchmarks/results``).

The data folder is Imagenette's layout (``train/<wnid>/``, ``val/<wnid>/``), whose
class folders must be the run's classes. As ``evaluate --run`` does, the decode scan of
the splits is cached in the run folder (``scan_train.json``, ``scan_val.json``).
Timings are by-products on a possibly shared machine, not a benchmark.
"""

import argparse
import csv
import importlib.metadata
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
SHARED_DATA = Path(os.environ.get("KERAS_POOLFORMER_SHARED_DATA", ROOT.parent / "shared/data"))
DEFAULT_DATA = SHARED_DATA / "imagenette2-160"
# `keras-poolformer train ... --output runs/imagenette` run from the repository or beside it.
RUN_CANDIDATES = (ROOT / "runs/imagenette", ROOT.parent / "runs/imagenette")
CONTENDERS = ("keras", "tflite_fp32", "tflite_int8")
LABELS = {"keras": "Keras", "tflite_fp32": "TFLite float32", "tflite_int8": "TFLite int8"}
FILTER_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def default_run():
    return next((str(p) for p in RUN_CANDIDATES if (p / "config.json").is_file()), None)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    run = default_run()
    parser.add_argument(
        "--run",
        default=run,
        required=run is None,
        help=f"a `keras-poolformer train` run folder (default: {run or 'none found'})",
    )
    parser.add_argument(
        "--data", default=str(DEFAULT_DATA), help=f"Imagenette folder (default: {DEFAULT_DATA})"
    )
    parser.add_argument(
        "--calibration",
        type=int,
        default=200,
        help="train images that calibrate int8 (default 200)",
    )
    parser.add_argument("--seed", type=int, default=0, help="draw of the calibration images")
    parser.add_argument(
        "--draw",
        choices=["balanced", "first"],
        default="balanced",
        help="calibration images: a seeded draw, the same number per class (default), or "
        "the first ones by path, as `keras-poolformer export --calibration` takes them",
    )
    parser.add_argument("--threads", type=int, default=2, help="LiteRT interpreter threads")
    parser.add_argument("--batch-size", type=int, default=32, help="Keras batch (as evaluate)")
    parser.add_argument(
        "--output", default=str(RESULTS), help=f"folder for the reports (default: {RESULTS})"
    )
    args = parser.parse_args(argv)
    if args.calibration < 1 or args.threads < 1 or args.batch_size < 1:
        parser.error("--calibration, --threads and --batch-size must be >= 1")
    for name in ("config.json", "classes.json", "final.weights.h5"):
        if not os.path.isfile(os.path.join(args.run, name)):
            parser.error(f"{args.run} is not a finished training run (no {name})")
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(args.data, split)):
            parser.error(f"{args.data} has no {split}/ folder (Imagenette's layout)")
    return args


# --- the measurement ---------------------------------------------------------------------


def calibration_indices(labels, count, seed):
    """``count`` indices into ``labels`` drawn with ``seed``: a shuffled order per class,
    taken one class after another, so every class gives the same number to within one."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    longest = max(len(indices) for indices in per_class)
    ordered = [indices[i] for i in range(longest) for indices in per_class if i < len(indices)]
    if count > len(ordered):
        raise ValueError(
            f"{count} calibration images asked for; the train split has {len(ordered)}"
        )
    return np.array(ordered[:count])


def weight_quantization(interpreter):
    """``{op: {"per_channel": n, "per_tensor": n}}`` over the filters (input 1) of the
    conv and fully connected ops of an int8 interpreter."""
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    found = {}
    for op in interpreter._get_ops_details():
        if op["op_name"] not in FILTER_OPS:
            continue
        scales = tensors[op["inputs"][1]]["quantization_parameters"]["scales"]
        kind = "per_channel" if len(scales) > 1 else "per_tensor"
        counts = found.setdefault(op["op_name"], {"per_channel": 0, "per_tensor": 0})
        counts[kind] += 1
    return found


def io_quantization(interpreter):
    (source,) = interpreter.get_input_details()
    (target,) = interpreter.get_output_details()
    return {
        "input": {"dtype": source["dtype"].__name__, "scale_zero": list(source["quantization"])},
        "output": {"dtype": target["dtype"].__name__, "scale_zero": list(target["quantization"])},
    }


def recorded_top1(run):
    """The last ``val_top1`` the run logged in ``log.csv`` (its end-of-training
    evaluation of the whole val split), or None."""
    path = os.path.join(run, "log.csv")
    if not os.path.isfile(path):
        return None
    with open(path, newline="", encoding="utf-8") as f:
        values = [row.get("val_top1") for row in csv.DictReader(f)]
    values = [float(v) for v in values if v]
    return values[-1] if values else None


def measure(args, log=print):
    """Exports the run's model, scores the three contenders on the val split and returns
    what :func:`summarise` needs, in a dict."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from keras_poolformer import export as export_lib
    from keras_poolformer.tflite_io import invoke_tflite
    from keras_poolformer.training import data, trainer

    start = time.perf_counter()
    phases = {}
    config, class_names, model, run_data = trainer.load_run(args.run)
    if config.task != "classification":
        raise ValueError(f"{args.run} is a {config.task} run; this measures classifiers.")
    source = data.load_source(f"folder:{args.data}", cache_dir=args.run)
    if list(source.class_names) != list(class_names):
        raise ValueError(f"{args.data}'s classes are not the run's ({args.run}/classes.json)")
    val, train = source.val, source.train
    if not len(val):
        raise ValueError(f"{args.data} has no readable val images.")
    log(
        f"{args.run}: {model.count_params():,} parameters, {config.image_size}px, crop "
        f"{config.crop_pct}; {len(val)} val images, {len(train)} train"
    )
    phases["load"] = time.perf_counter() - start

    # Calibration images go through the evaluation pipeline, as the val images do.
    if args.draw == "first":  # the split is sorted by class, then by file name
        chosen = np.arange(min(args.calibration, len(train)))
    else:
        chosen = calibration_indices(train.labels, args.calibration, args.seed)
    calibration_split = data.Split(train.images[chosen], train.labels[chosen])
    calibration = np.concatenate(
        [images.numpy() for images, _ in data.eval_dataset(calibration_split, config, 64)]
    )
    deployed = export_lib.fold(export_lib.logits_model(model))  # as `export --run` writes it
    workdir = tempfile.mkdtemp(prefix="int8_accuracy_")
    sizes, interpreters = {}, {}
    try:
        for name, quantize in (("tflite_fp32", "none"), ("tflite_int8", "int8")):
            began = time.perf_counter()
            path = os.path.join(workdir, f"{name}.tflite")
            images = calibration if quantize == "int8" else None
            sizes[name] = export_lib.export_tflite(deployed, path, quantize, images)
            phases[f"export_{name}"] = time.perf_counter() - began
            log(f"{name}: {sizes[name] / 1e6:.2f} MB, exported in {phases[f'export_{name}']:.0f} s")
            with open(path, "rb") as f:
                content = f.read()
            interpreters[name] = Interpreter(model_content=content, num_threads=args.threads)
            interpreters[name].allocate_tensors()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    # One pass over val: each batch through the Keras model (as `evaluate` runs it), then
    # image by image through both interpreters.
    size = config.image_size

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    def keras_logits(images):
        return model(images, training=False)

    keras_logits(tf.zeros([1, size, size, 3]))  # traced here, not in the timing

    logits = {name: [] for name in CONTENDERS}
    seconds = dict.fromkeys(CONTENDERS, 0.0)
    labels, done, next_report, began = [], 0, 0, time.perf_counter()
    for images, batch_labels in data.eval_dataset(val, config, args.batch_size):
        tick = time.perf_counter()
        logits["keras"].append(keras_logits(images).numpy())
        seconds["keras"] += time.perf_counter() - tick
        pixels = images.numpy()
        for name, interpreter in interpreters.items():
            tick = time.perf_counter()
            logits[name].append(np.stack([invoke_tflite(interpreter, x[None])[0] for x in pixels]))
            seconds[name] += time.perf_counter() - tick
        labels.append(batch_labels.numpy())
        done += len(pixels)
        if done >= next_report or done == len(val):
            elapsed = time.perf_counter() - began
            left = elapsed / done * (len(val) - done)
            log(f"  {done:5d} / {len(val)} val images, {elapsed:.0f} s, about {left:.0f} s left")
            next_report += max(len(val) // 10, 1)
    phases["evaluate"] = time.perf_counter() - began
    int8 = interpreters["tflite_int8"]
    return {
        "config": config,
        "class_names": class_names,
        "run_data": run_data,
        "source": source,
        "labels": np.concatenate(labels),
        "logits": {name: np.concatenate(values) for name, values in logits.items()},
        "seconds": seconds,
        "calibration_labels": train.labels[chosen],
        "sizes": sizes,
        "quantization": {**io_quantization(int8), "weights": weight_quantization(int8)},
        "phases": {**phases, "wall": time.perf_counter() - start},
    }


def _top(logits, labels):
    order = np.argsort(-logits, axis=1)
    return order[:, 0], np.any(order[:, :5] == labels[:, None], axis=1)


def mcnemar_p(gained, lost):
    """Exact two-sided McNemar p-value: the chance of a split of the ``gained + lost``
    images that only one model gets right at least this uneven, were either model as
    likely to be the one (a binomial test at 1/2)."""
    total = gained + lost
    tail = sum(math.comb(total, k) for k in range(min(gained, lost) + 1))
    return min(1.0, 2 * tail / 2**total)


def _agreement(ours, theirs, labels, ours_logits, theirs_logits):
    """How two contenders' answers and logits compare on the same images."""
    gained = int(np.sum((ours == labels) & (theirs != labels)))
    lost = int(np.sum((ours != labels) & (theirs == labels)))
    return {
        "top1_agreement": float(np.mean(ours == theirs)),
        "disagreements": int(np.sum(ours != theirs)),
        "right_where_other_wrong": gained,
        "wrong_where_other_right": lost,
        "mcnemar_exact_p": mcnemar_p(gained, lost),
        "max_abs_logit_difference": float(np.abs(ours_logits - theirs_logits).max()),
        "largest_abs_logit_of_other": float(np.abs(theirs_logits).max()),
        "mean_cosine": _mean_cosine(ours_logits, theirs_logits),
    }


def summarise(args, measured):
    """The report: figures per contender, agreement, per-class top-1 and the context."""
    from keras_poolformer.imagenet import class_names as imagenet_class_names

    config, classes, source = measured["config"], measured["class_names"], measured["source"]
    labels, logits = measured["labels"], measured["logits"]
    n = len(labels)
    predicted, results = {}, {}
    for name in CONTENDERS:
        predicted[name], in_top5 = _top(logits[name], labels)
        correct = int(np.sum(predicted[name] == labels))
        results[name] = {
            "top1": correct / n,
            "top5": float(np.mean(in_top5)),
            "correct": correct,
            "ms_per_image": 1000 * measured["seconds"][name] / n,
        }
    pairs = {"tflite_fp32_vs_keras": ("tflite_fp32", "keras")}
    pairs["tflite_int8_vs_fp32"] = ("tflite_int8", "tflite_fp32")
    agreement = {
        key: _agreement(predicted[a], predicted[b], labels, logits[a], logits[b])
        for key, (a, b) in pairs.items()
    }
    names = dict(imagenet_class_names())
    calibration_counts = np.bincount(measured["calibration_labels"], minlength=len(classes))
    per_class = []
    for index, wnid in enumerate(classes):
        mask = labels == index
        row = {"class": wnid, "name": names.get(wnid, ""), "val_images": int(mask.sum())}
        for name in CONTENDERS:
            row[name] = float(np.mean(predicted[name][mask] == index)) if mask.any() else None
        per_class.append(row)
    logged = recorded_top1(args.run)
    return {
        "what": "top-1 on the whole val split of a trained run's Keras model, its TFLite "
        "float32 and its TFLite int8, with the run's evaluation transform",
        "command": args.command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "git": _git(),
        "machine": _machine(),
        "versions": _versions(),
        "run": {
            "folder": os.path.abspath(args.run),
            "model": config.model,
            "depths": list(config.depths),
            "dims": list(config.dims),
            "token_mixers": list(config.token_mixers),
            "image_size": config.image_size,
            "crop_pct": config.crop_pct,
            "epochs": config.epochs,
            "trained_on": measured["run_data"],
            "classes": len(classes),
            "logged_val_top1": logged,
        },
        "data": {
            "folder": os.path.abspath(args.data),
            "val_images": n,
            "val_skipped": len(source.val.skipped),
            "train_images": len(source.train),
        },
        "calibration": {
            "images": len(measured["calibration_labels"]),
            "split": "train",
            "draw": args.draw,
            "seed": args.seed if args.draw == "balanced" else None,
            "per_class": calibration_counts.tolist(),
        },
        "tflite": {
            "folded": True,
            "threads": args.threads,
            "fp32_bytes": measured["sizes"]["tflite_fp32"],
            "int8_bytes": measured["sizes"]["tflite_int8"],
            "int8_quantization": measured["quantization"],
        },
        "keras_batch_size": args.batch_size,
        "results": results,
        "int8_minus_fp32_top1_points": 100
        * (results["tflite_int8"]["top1"] - results["tflite_fp32"]["top1"]),
        "keras_top1_equals_logged": (
            None if logged is None else round(logged * n) == results["keras"]["correct"]
        ),
        "agreement": agreement,
        "per_class": per_class,
        "seconds": {k: round(v, 1) for k, v in measured["phases"].items()},
    }


def _mean_cosine(a, b):
    dot = np.sum(a * b, axis=1)
    return float(np.mean(dot / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


# --- context -----------------------------------------------------------------------------


def _git():
    """The commit of the repository the imported ``keras_poolformer`` comes from, and
    its tracked files that differ from it (an edit to the library changes the export)."""
    import keras_poolformer

    repository = Path(keras_poolformer.__file__).resolve().parents[1]

    def git(*args):
        command = ["git", "-C", str(repository), *args]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        changed = git("status", "--porcelain", "--untracked-files=no").splitlines()
    except (OSError, subprocess.CalledProcessError):
        return {"repository": str(repository), "commit": None, "changed_files": None}
    return {
        "repository": str(repository),
        "commit": commit,
        "changed_files": sorted(line[3:] for line in changed),
    }


def _machine():
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu
            )
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores_usable": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _versions():
    found = {}
    for package in ("keras-poolformer", "tensorflow", "keras", "ai-edge-litert", "numpy"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


# --- the reports -------------------------------------------------------------------------


def markdown(report):
    """The report as a Markdown page."""
    results, run, calibration = report["results"], report["run"], report["calibration"]
    data, tflite = report["data"], report["tflite"]
    int8, fp32 = (
        report["agreement"]["tflite_int8_vs_fp32"],
        report["agreement"]["tflite_fp32_vs_keras"],
    )
    n = data["val_images"]
    quantization = tflite["int8_quantization"]
    filters = ", ".join(
        f"{op} {c['per_channel']} per channel / {c['per_tensor']} per tensor"
        for op, c in quantization["weights"].items()
    )
    drawn = (
        f"drawn with seed {calibration['seed']}"
        if calibration["draw"] == "balanced"
        else "the first by path"
    )
    logged = run["logged_val_top1"]
    if logged is None:
        logged_text = "the run logged no val top-1."
    else:
        same = "the same figure" if report["keras_top1_equals_logged"] else "**a different figure**"
        logged_text = f"the run logged {logged:.2%} at its end: {same}."
    lines = [
        "# int8 TFLite accuracy of a trained model",
        "",
        f"Made by `benchmarks/int8_accuracy.py` ({report['date']}). Run `{run['folder']}`: "
        f"{run['model']} MetaFormer, depths {run['depths']}, dims {run['dims']}, mixers "
        f"{sorted(set(run['token_mixers']))}, {run['image_size']} px, crop {run['crop_pct']}, "
        f"{run['epochs']} epochs on `{run['trained_on']}`, {run['classes']} classes.",
        "",
        f"Scored on all {n:,} val images of `{data['folder']}` ({data['val_skipped']} skipped "
        "as unreadable) through the run's evaluation transform. The TFLite files are the "
        f"folded model's, run by LiteRT with {tflite['threads']} threads; int8 is calibrated "
        f"on {calibration['images']} train images ({drawn}; per class "
        f"{calibration['per_class']}).",
        "",
        "| model | top-1 | top-5 | right | ms / image |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in CONTENDERS:
        r = results[name]
        lines.append(
            f"| {LABELS[name]} | {r['top1']:.2%} | {r['top5']:.2%} | {r['correct']:,} | "
            f"{r['ms_per_image']:.1f} |"
        )
    lines += [
        "",
        f"- **int8 - float32 top-1: {report['int8_minus_fp32_top1_points']:+.2f} points.** "
        f"Top-1 agreement {int8['top1_agreement']:.2%}: {int8['disagreements']} images "
        f"disagree, int8 right where float32 is wrong on {int8['right_where_other_wrong']}, "
        f"wrong where float32 is right on {int8['wrong_where_other_right']} (exact McNemar "
        f"p = {int8['mcnemar_exact_p']:.2g}: the chance of a split this uneven were int8 "
        "merely different, not better or worse). Logit cosine "
        f"{int8['mean_cosine']:.5f} on average; largest |difference| "
        f"{int8['max_abs_logit_difference']:.3g} (largest float32 |logit| "
        f"{int8['largest_abs_logit_of_other']:.3g}).",
        f"- TFLite float32 vs Keras: top-1 agreement {fp32['top1_agreement']:.2%} "
        f"({fp32['disagreements']} disagree), largest |logit difference| "
        f"{fp32['max_abs_logit_difference']:.2g}.",
        f"- Keras top-1 ({results['keras']['correct']:,} right) vs the run's own evaluation: "
        + logged_text,
        f"- Files: float32 {tflite['fp32_bytes'] / 1e6:.2f} MB, int8 "
        f"{tflite['int8_bytes'] / 1e6:.2f} MB. int8 (scale, zero point) of the input "
        f"{quantization['input']['scale_zero']} ({quantization['input']['dtype']}), of the "
        f"logits {quantization['output']['scale_zero']}; weights: {filters}.",
        "",
        "Top-1 per class:",
        "",
        "| class | name | images | Keras | TFLite float32 | TFLite int8 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in report["per_class"]:
        cells = " | ".join("-" if row[k] is None else f"{row[k]:.2%}" for k in CONTENDERS)
        lines.append(f"| {row['class']} | {row['name']} | {row['val_images']} | {cells} |")
    machine, git = report["machine"], report["git"]
    load = ", ".join(f"{v:.1f}" for v in machine["load_average_at_end"] or [])
    commit = f"keras_poolformer from `{git['repository']}` at commit {(git['commit'] or '?')[:10]}"
    if git["changed_files"]:
        commit += f" with changes to {', '.join(git['changed_files'])}"
    lines += [
        "",
        f"Machine: {machine['cpu']}, {machine['cores_usable']} usable cores (shared; load "
        f"average at the end {load}); {machine['platform']}, Python {machine['python']}. "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
        + f"; {commit}. Seconds: "
        + ", ".join(f"{k} {v:g}" for k, v in report["seconds"].items())
        + " (timings are by-products, not a benchmark).",
    ]
    if report["command"]:
        lines += ["", f"Command: `{report['command']}`"]
    return "\n".join(lines) + "\n"


def write_reports(report, folder):
    """Writes ``int8_accuracy.json`` and ``.md`` in ``folder``, each through a temporary
    file renamed into place."""
    from keras_poolformer import files

    written = []
    for name, text in (
        ("int8_accuracy.json", json.dumps(report, indent=2) + "\n"),
        ("int8_accuracy.md", markdown(report)),
    ):
        path = os.path.join(folder, name)
        with files.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        written.append(path)
    return written


def main(argv=None, log=print):
    """Runs the measurement, writes the reports and returns the report."""
    args = parse_args(argv)
    args.command = None if argv is not None else " ".join(["python", *sys.argv])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    report = summarise(args, measure(args, log))
    for path in write_reports(report, args.output):
        log(f"wrote {path}")
    r = report["results"]
    log(
        "top-1: "
        + ", ".join(f"{LABELS[k]} {r[k]['top1']:.2%}" for k in CONTENDERS)
        + f"; int8 vs float32 agreement "
        f"{report['agreement']['tflite_int8_vs_fp32']['top1_agreement']:.2%}"
    )
    return report


if __name__ == "__main__":
    main()
