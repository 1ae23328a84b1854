"""The report of a run: the machine, one markdown table per phase, the ratios against
the issue's goals, and a plot.

The goals (:data:`GOALS`) are ratios of two contenders of one table at one batch:
ours over the reference's img/s (peak RSS for memory, where ours must be the smaller),
judged pass or miss against a target. Everything is computed from the results dict
alone, so a saved ``benchmark.json`` can be reported again.
"""

import dataclasses
import os
import platform
from importlib import metadata

import numpy as np

from metaformer_bench.settings import TOLERANCE

ORT = "torch_onnx"  # the reference's ONNX export on onnxruntime: the ratio columns' base


@dataclasses.dataclass(frozen=True)
class Goal:
    """``contender`` over ``baseline`` in ``phase``'s tables must reach ``target``.

    ``metric``: ``"speed"`` (median img/s, the ratio must be at least the target) or
    ``"peak_rss"`` (peak resident memory, the ratio must be at most the target).
    ``largest_batch``: judged at the run's largest batch only, else at each batch.
    """

    text: str
    phase: str  # "inference" (S12), "families" (each family) or "training" (S12)
    contender: str
    baseline: str
    target: float
    metric: str = "speed"
    largest_batch: bool = False


GOALS = (
    Goal("TF path: Keras graph >= ort on the PyTorch export", "inference", "keras", ORT, 1.0),
    Goal("TF path: SavedModel >= ort on the PyTorch export", "inference", "saved_model", ORT, 1.0),
    Goal("TF path, oneDNN on: Keras graph >= ort", "inference", "keras_onednn", ORT, 1.0),
    Goal("TF path, oneDNN on: SavedModel >= ort", "inference", "saved_model_onednn", ORT, 1.0),
    Goal("our ONNX >= the PyTorch export, both on ort", "inference", "onnx", ORT, 1.0),
    Goal("int8 >= 2.5x fp32 ort", "inference", "tflite_int8", ORT, 2.5, largest_batch=True),
    Goal("TFLite fp32 >= ort on timm's export", "families", "tflite_fp32", ORT, 1.0),
    Goal("SavedModel >= ort on timm's export", "families", "saved_model", ORT, 1.0),
    Goal(
        "SavedModel, oneDNN on >= ort on timm's export",
        "families",
        "saved_model_onednn",
        ORT,
        1.0,
    ),
    Goal("int8 >= 1.5x ort on timm's export", "families", "tflite_int8", ORT, 1.5),
    Goal("training step >= 1.5x PyTorch eager", "training", "keras_train", "torch_train", 1.5),
    Goal("peak RSS <= PyTorch's", "training", "keras_train", "torch_train", 1.0, metric="peak_rss"),
    Goal(
        "training step, oneDNN on >= 1.5x PyTorch eager",
        "training",
        "keras_train_onednn",
        "torch_train",
        1.5,
    ),
    Goal(
        "peak RSS, oneDNN on <= PyTorch's",
        "training",
        "keras_train_onednn",
        "torch_train",
        1.0,
        metric="peak_rss",
    ),
)


def _tables(results, phase):
    """(model, batches, records) of each table of ``phase`` in the results."""
    data = results.get(phase)
    if not data or data.get("error"):
        return []
    if phase == "inference":
        return [("S12", data["batches"], data["contenders"])]
    if phase == "training":
        return [("S12", [data["batch"]], data["contenders"])]
    return [(m["title"], m["batches"], m["contenders"]) for m in data["models"]]


def _value(record, metric, batch):
    if record is None:
        return None
    if metric == "peak_rss":
        return (record.get("memory") or {}).get("peak_rss_mib")
    speed = record["speed"].get(str(batch))
    return speed["median"] if speed else None


def goal_rows(results, goals=GOALS):
    """One row per goal, table and batch: the ratio, the target and whether it is met
    (``None`` where a contender failed or is missing). Phases that did not run give
    no rows."""
    rows = []
    for goal in goals:
        for model, batches, table in _tables(results, goal.phase):
            by_name = {r["name"]: r for r in table}
            for batch in batches[-1:] if goal.largest_batch else batches:
                ours = _value(by_name.get(goal.contender), goal.metric, batch)
                theirs = _value(by_name.get(goal.baseline), goal.metric, batch)
                ratio = ours / theirs if ours is not None and theirs else None
                met = None
                if ratio is not None and goal.metric == "peak_rss":
                    met = ratio <= goal.target
                elif ratio is not None:
                    met = ratio >= goal.target
                rows.append(
                    {
                        "goal": goal.text,
                        "model": model,
                        "batch": batch,
                        "metric": goal.metric,
                        "ratio": ratio,
                        "target": goal.target,
                        "met": met,
                    }
                )
    return rows


# --- The machine ---------------------------------------------------------------------------


def _cpu():
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni")
    wanted += ("amx_tile", "amx_int8")
    return model, [flag for flag in wanted if flag in flags]


# CPU flags on which TensorFlow turns its oneDNN rewrites on by itself (its
# DefaultOneDnnPolicy: AVX-512 VNNI or BF16, AVX-VNNI, AMX).
_ONEDNN_BY_DEFAULT = {"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile"}


def _onednn_default(flags):
    if _ONEDNN_BY_DEFAULT & set(flags):
        return "oneDNN on by default on this CPU"
    return "oneDNN off by default on this CPU: no AVX-512 VNNI/BF16, AVX-VNNI or AMX"


def _version(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _env(name, default=""):
    value = os.environ.get(name)
    if value is not None:
        return value
    return f"unset ({default})" if default else "unset"


def machine(settings):
    model, flags = _cpu()
    memory = None
    if os.path.exists("/proc/meminfo"):
        with open("/proc/meminfo") as f:
            memory = round(int(f.readline().split()[1]) / 1024**2, 1)
    packages = ["tensorflow", "keras", "torch", "transformers", "timm", "onnxruntime", "onnx"]
    packages += ["tf2onnx", "ai-edge-litert", "numpy"]
    return {
        "cpu": model,
        "cpu_flags": flags,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {package: _version(package) for package in packages},
        "load_average_before": os.getloadavg(),
        "threads": {
            "tensorflow": {
                "intra_op": settings.threads,
                "inter_op": settings.inter_op_threads,
                "TF_ENABLE_ONEDNN_OPTS": _env("TF_ENABLE_ONEDNN_OPTS", _onednn_default(flags)),
            },
            "torch": {
                "num_threads": settings.threads,
                "interop_threads": settings.inter_op_threads,
                "OMP_WAIT_POLICY": "PASSIVE" if not settings.spin else _env("OMP_WAIT_POLICY"),
            },
            "onnxruntime": {
                "intra_op_num_threads": settings.threads,
                "inter_op_num_threads": settings.inter_op_threads,
                "allow_spinning": settings.spin,
            },
            "litert": {"num_threads": settings.threads},
        },
    }


# --- Markdown --------------------------------------------------------------------------------


def _speed(record, batch):
    speed = record["speed"].get(str(batch))
    if not speed:
        return "failed" if record["error"] else "-"
    return f"{speed['median']:.2f} ({speed['min']:.2f}..{speed['max']:.2f})"


def _ratio(record, base, batch):
    ours, theirs = _value(record, "speed", batch), _value(base, "speed", batch)
    return f"{ours / theirs:.2f}x" if ours is not None and theirs else "-"


MEMORY_KEYS = ("peak_rss_mib", "peak_rss_in_rounds_mib", "loaded_rss_mib")


def _mib(memory, key):
    value = (memory or {}).get(key)
    return f"{value:.0f}" if value is not None else "-"


def _check(agreement):
    if not agreement:
        return "-", "-", "-"
    diff = f"{agreement['max_abs_diff']:.1e}"
    if agreement["within_tolerance"] is not None:
        diff += " ok" if agreement["within_tolerance"] else " FAIL"
    top1 = agreement["top1_agreement"]
    top1 = f"{100 * top1:.1f}%" if top1 is not None else "-"
    return diff, top1, f"{agreement['cosine_mean']:.5f} (min {agreement['cosine_min']:.5f})"


def _table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def _exports(exports):
    return ", ".join(
        f"{name} {e['bytes'] / 1e6:.1f} MB in {e['seconds']} s" for name, e in exports.items()
    )


def _one_image_tflite(exports):
    """A sentence when our TFLite files did not resize to a batch, else nothing."""
    if all(e.get("resizes", True) for e in exports.values()):
        return ""
    return (
        " Our TFLite files take one image, and this model's do not resize to a batch in "
        "LiteRT (a reshape keeps the batch of 1): their batch > 1 is one call per image."
    )


def _header_md(results):
    m = results["machine"]
    threads = m["threads"]
    lines = [
        f"# PoolFormer benchmark ({results['mode']} mode)",
        "",
        f"{m['cpu']} ({', '.join(m['cpu_flags'])}), {m['usable_cores']} usable cores, "
        f"{m['memory_gib']} GiB; {results['started']}, {results['duration_s'] / 60:.1f} min. "
        f"Threads: {threads['tensorflow']['intra_op']} intra-op, "
        f"{threads['tensorflow']['inter_op']} inter-op for every runtime; "
        f"TF_ENABLE_ONEDNN_OPTS {threads['tensorflow']['TF_ENABLE_ONEDNN_OPTS']}; torch "
        f"OMP_WAIT_POLICY {threads['torch']['OMP_WAIT_POLICY']}; onnxruntime spinning "
        f"{'on' if threads['onnxruntime']['allow_spinning'] else 'off'}. Load average "
        f"(1 min) before / after: {m['load_average_before'][0]:.2f} / "
        f"{m['load_average_after'][0]:.2f}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".",
        "",
        "img/s: median over alternating rounds (slowest..fastest round). Peak RSS: the most "
        "resident memory of the contender's own worker process (VmHWM, MiB) over its whole "
        "life (interpreter, framework, model, warm-up and compilation, checks, timed "
        "rounds); 'in rounds': over the timed rounds alone; 'loaded': RSS once loaded. "
        "'vs ort': img/s over that of the reference's ONNX export on onnxruntime at the "
        "same batch.",
    ]
    exports = results["artifacts"]["exports"]
    return lines + [
        "",
        f"Weights: {results['artifacts'].get('weights', 'random')}. Our exports are of the "
        f"folded model, as `keras-poolformer export` writes them: {_exports(exports)}. "
        f"Reference ONNX by {exports['reference_onnx']['exporter']}.{_one_image_tflite(exports)}",
    ]


def _speed_table(batches, contenders):
    """The inference table of S12 and of each family, with the ratio columns."""
    base = {r["name"]: r for r in contenders}.get(ORT)
    headers = ["contender", *(f"batch {b} img/s" for b in batches)]
    headers += [f"vs ort b{b}" for b in batches]
    headers += ["peak RSS MiB", "in rounds", "loaded", "max abs diff", "top-1 agr.", "cosine"]
    rows = [
        [
            r["label"],
            *(_speed(r, b) for b in batches),
            *(_ratio(r, base, b) for b in batches),
            *(_mib(r.get("memory"), key) for key in MEMORY_KEYS),
            *_check(r.get("agreement")),
        ]
        for r in contenders
    ]
    return _table(headers, rows)


def _inference_md(inference, artifacts):
    lines = [
        "## Inference, S12 224x224",
        "",
        f"Logits checked on {artifacts['check_images']} {artifacts['images']} against the "
        f"Keras model's (largest |logit| {inference['keras_max_abs_logit']:.3g}); fp32 must "
        f"agree within {TOLERANCE}. int8 calibrated on {artifacts['calibration_images']} "
        f"{artifacts['images']}; top-1 agreement is given on real images only.",
        "",
    ]
    return lines + _speed_table(inference["batches"], inference["contenders"])


def _families_md(families):
    sections = []
    for m in families["models"]:
        title = f"## Inference, {m['title']} 224x224"
        if m.get("error"):
            sections.append([title, "", f"Failed before timing: {m['error']}"])
            continue
        largest = m["keras_max_abs_logit"]
        lines = [
            title,
            "",
            f"Weights: {m['weights']}. Logits checked on {m['check_images']} {m['images']} "
            f"(crop {m['crop_pct']}) against the Keras model's (largest |logit| "
            f"{'-' if largest is None else f'{largest:.3g}'}); fp32 must agree within "
            f"{TOLERANCE}. The reference is timm's model holding our weights; 'vs ort' is "
            f"over its ONNX export ({m['exports']['reference_onnx']['exporter']}) on "
            f"onnxruntime. int8 calibrated on {m['calibration_images']} {m['images']}. "
            f"Exports: {_exports(m['exports'])}.{_one_image_tflite(m['exports'])}",
            "",
        ]
        sections.append(lines + _speed_table(m["batches"], m["contenders"]))
    return sections


def _training_md(training):
    lines = [
        f"## Training step, S12 224x224, batch {training['batch']}, {training['optimizer']}",
        "",
    ]
    rows = [
        [
            r["label"],
            _speed(r, training["batch"]),
            *(_mib(r.get("memory"), key) for key in MEMORY_KEYS),
        ]
        for r in training["contenders"]
    ]
    return lines + _table(["contender", "img/s", "peak RSS MiB", "in rounds", "loaded"], rows)


def _scaling_row(name, r):
    if r["images_per_s"] is None:
        return [name, f"{r['macs'] / 1e9:.2f}", "failed", "-", "-"]
    return [
        name,
        f"{r['macs'] / 1e9:.2f}",
        f"{r['images_per_s']:.2f}",
        f"{1000 / r['images_per_s']:.0f}",
        f"{r['gmacs_per_s']:.1f}",
    ]


def _scaling_md(scaling):
    lines = [
        f"## Cost growth, Keras graph mode, batch {scaling['batch']}",
        "",
        "GMAC/s = img/s x MACs per image: constant when time grows in step with the MACs. "
        "Variants: the paper's MACs (MODEL_CONFIGS); sizes: MACs counted on the graph.",
        "",
    ]
    headers = ["GMACs", "img/s", "ms/img", "GMAC/s"]
    rows = [_scaling_row(r["variant"].upper(), r) for r in scaling["variants"]]
    lines += _table(["variant (224x224)", *headers], rows)
    rows = [_scaling_row(f"{r['size']}x{r['size']}", r) for r in scaling["sizes"]]
    return lines + [""] + _table(["S12 input", *headers], rows)


def _gpu_md(gpu):
    if gpu.get("skipped"):
        return ["## GPU", "", f"GPU phase: skipped, {gpu['skipped']}."]
    on_cpu = gpu["device"] == "cpu"
    inference, training = gpu["inference"], gpu["training"]
    lines = [
        f"## GPU: {gpu['model'].upper()} 224x224 in half precision on {gpu['device_name']}",
        "",
        f"Half precision: {gpu['half_precision']} (Keras mixed_{gpu['half_precision']}, "
        f"torch.autocast). Logits compared with Keras fp32 on the same device, loosely (no "
        f"{TOLERANCE} gate). "
        + (
            "Run on the CPU (--gpu-phase-on-cpu): this checks the phase's code, the speeds "
            "are not a GPU's."
            if on_cpu
            else ""
        ),
        "",
    ]
    batches = inference["batches"]
    headers = ["contender", "precision", *(f"batch {b} img/s" for b in batches)]
    headers += ["max abs diff vs fp32", "top-1 agr.", "cosine"]
    rows = [
        [r["label"], r["precision"], *(_speed(r, b) for b in batches), *_check(r.get("agreement"))]
        for r in inference["contenders"]
    ]
    lines += _table(headers, rows) + ["", f"Training step, batch {training['batch']}:", ""]
    rows = [
        [r["label"], r["precision"], _speed(r, training["batch"])] for r in training["contenders"]
    ]
    return lines + _table(["contender", "precision", "img/s"], rows)


def _goals_md(results):
    rows = goal_rows(results)
    if not rows:
        return None
    verdict = {True: "pass", False: "**miss**", None: "n/a"}
    table = [
        [
            r["goal"],
            r["model"],
            r["batch"],
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
            f"{'<=' if r['metric'] == 'peak_rss' else '>='} {r['target']}x",
            verdict[r["met"]],
        ]
        for r in rows
    ]
    met = sum(r["met"] is True for r in rows)
    return [
        "## Ratios against the goals",
        "",
        "Ours over the reference at the same batch: img/s, or peak RSS for memory (which "
        "must be at most the target). 'ort': onnxruntime running the reference exported to "
        "ONNX from PyTorch (transformers' S12, timm's families). The int8 goal of S12 is "
        "judged at the run's largest batch (32 in full mode). n/a: a contender failed or "
        f"did not run. {met} of {len(rows)} met.",
        "",
        *_table(["goal", "model", "batch", "ratio", "target", "result"], table),
    ]


def _failures(results):
    failures = []
    for phase in ("inference", "training", "scaling", "families", "gpu"):
        if (results.get(phase) or {}).get("error"):
            failures.append(f"- {phase} phase: {results[phase]['error']}")
    tables = [
        r
        for phase in ("inference", "training")
        for r in results.get(phase, {}).get("contenders", [])
    ]
    tables += [r for key in ("variants", "sizes") for r in results.get("scaling", {}).get(key, [])]
    for m in results.get("families", {}).get("models", []):
        if m.get("error"):
            failures.append(f"- {m['model']}: {m['error']}")
        tables += [{**r, "name": f"{m['model']} {r['name']}"} for r in m["contenders"]]
    gpu = results.get("gpu", {})
    for part in ("inference", "training"):
        contenders = gpu.get(part, {}).get("contenders", [])
        tables += [{**r, "name": f"gpu {r['name']}"} for r in contenders]
    return failures + [f"- {r['name']}: {r['error']}" for r in tables if r.get("error")]


def markdown(results):
    """The report: machine and settings, one table per phase that ran, the goals."""
    sections = [_header_md(results)]
    if results.get("inference", {}).get("contenders"):
        sections.append(_inference_md(results["inference"], results["artifacts"]))
    if results.get("families", {}).get("models"):
        sections += _families_md(results["families"])
    if results.get("training", {}).get("contenders"):
        sections.append(_training_md(results["training"]))
    if results.get("scaling", {}).get("variants"):
        sections.append(_scaling_md(results["scaling"]))
    if "gpu" in results and not results["gpu"].get("error"):
        sections.append(_gpu_md(results["gpu"]))
    goals = _goals_md(results)
    if goals:
        sections.append(goals)
    failures = _failures(results)
    if failures:
        sections.append(["## Failures", "", *failures])
    return "\n\n".join("\n".join(section) for section in sections) + "\n"


# --- The plot --------------------------------------------------------------------------------


def _bars(ax, records, batches, title):
    """Median images/s per contender and batch, with the slowest..fastest round."""
    y = np.arange(len(records))
    height = 0.8 / len(batches)
    for i, batch in enumerate(batches):
        speeds = [r["speed"].get(str(batch)) or {"median": 0, "min": 0, "max": 0} for r in records]
        median = np.array([s["median"] for s in speeds])
        spread = [median - [s["min"] for s in speeds], [s["max"] for s in speeds] - median]
        ax.barh(y + i * height, median, height, xerr=spread, capsize=2, label=f"batch {batch}")
    ax.set_yticks(y + height * (len(batches) - 1) / 2, [r["label"] for r in records])
    ax.invert_yaxis()
    ax.set_xlabel("images/s (median, bars: slowest..fastest round)")
    ax.set_title(title)
    ax.legend()


def _growth(ax, rows, key, title):
    """ms per image against MACs, with the line of time proportional to MACs."""
    rows = [r for r in rows if r["images_per_s"]]
    if not rows:
        return
    macs = np.array([r["macs"] / 1e9 for r in rows])
    ms = np.array([1000 / r["images_per_s"] for r in rows])
    ax.plot(macs, ms, "o-", label="measured")
    ax.plot([0, macs.max()], [0, macs.max() * ms[0] / macs[0]], "--", label="in proportion")
    for r, x, y in zip(rows, macs, ms, strict=True):
        ax.annotate(str(r[key]).upper(), (x, y), (4, -12), textcoords="offset points")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("GMACs per image")
    ax.set_ylabel("ms per image")
    ax.set_title(title)
    ax.legend()


def plot(results, path):
    """Inference, training, the two cost-growth curves, and when they ran the families
    and the GPU phase: one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = [m for m in results.get("families", {}).get("models", []) if m["contenders"]]
    gpu = results.get("gpu", {}).get("inference")
    ratios = [1, 1, 2] if families or gpu else [1, 1]  # the families' panel has 18 rows
    figure, axes = plt.subplots(
        len(ratios), 2, figsize=(15, 5 * sum(ratios)), gridspec_kw={"height_ratios": ratios}
    )
    if results.get("inference", {}).get("contenders"):
        inference = results["inference"]
        _bars(axes[0, 0], inference["contenders"], inference["batches"], "Inference, S12 224x224")
    if results.get("training", {}).get("contenders"):
        training = results["training"]
        title = f"Training step, S12, batch {training['batch']}"
        _bars(axes[0, 1], training["contenders"], [training["batch"]], title)
    if results.get("scaling", {}).get("variants"):
        scaling = results["scaling"]
        batch = scaling["batch"]
        _growth(axes[1, 0], scaling["variants"], "variant", f"Variants at 224x224, batch {batch}")
        _growth(axes[1, 1], scaling["sizes"], "size", f"S12 over input sizes, batch {batch}")
    if families:
        labelled = [
            {**r, "label": f"{m['title']}: {r['label']}"} for m in families for r in m["contenders"]
        ]
        _bars(axes[2, 0], labelled, families[0]["batches"], "Inference, the baseline families")
    if gpu:
        title = f"Half precision on {results['gpu']['device_name']}"
        _bars(axes[2, 1], gpu["contenders"], gpu["batches"], title)
    for ax in axes.flat:
        if not ax.has_data():
            ax.set_axis_off()
    figure.suptitle(f"PoolFormer on {results['machine']['cpu']} ({results['mode']} mode)")
    figure.tight_layout(rect=(0, 0, 1, 0.98))  # room for the suptitle
    figure.savefig(path, dpi=110)
    plt.close(figure)
