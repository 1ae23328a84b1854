"""Speed and memory of keras_poolformer against the PyTorch references, in one run (issue 7).

    python benchmarks/benchmark.py             # full run: about 70 minutes on 2 cores
    python benchmarks/benchmark.py --quick     # smoke run of every part: about 12 minutes
    python benchmarks/benchmark.py --output DIR --threads 2 --phases inference --no-spin
    python benchmarks/benchmark.py --quick --phases gpu --gpu-phase-on-cpu

What it measures, with seeded random weights (speed does not depend on the values;
``--weights`` takes real ones, e.g. ``imagenet`` or an S12 checkpoint file, which makes
the int8 agreement meaningful):

1. ``inference``: images/s of PoolFormer-S12 at 224x224, batch 1 and 32, of each
   contender: our Keras model through a ``tf.function`` (graph mode as built, graph mode
   after ``export.fold``, and XLA), and the files ``keras-poolformer export`` writes
   (folded, its default): our SavedModel's ``predict_pixels`` signature, our TFLite fp32
   and int8 files on the LiteRT interpreter, our ONNX file on onnxruntime, the PyTorch
   reference (transformers' ``PoolFormerForImageClassification``) eager under
   ``torch.inference_mode()``, and the reference exported to ONNX on onnxruntime. Every
   contender gets the same numpy batch of RGB pixels 0..255 (batch, 224, 224, 3) and
   returns numpy logits: moving data in and out and normalising the pixels are part of
   every timed call.
2. ``training``: images/s of one AdamW step (cross-entropy, random labels) at batch 32:
   Keras (``compile`` + ``train_on_batch``, with and without XLA) against PyTorch eager.
3. Peak memory of each contender: the VmHWM of its own worker process (the most resident
   memory it held at any moment, framework and interpreter included), over its whole life
   and over the timed rounds alone. Not ``ru_maxrss``: a spawned child inherits its
   parent's peak in that figure on Linux.
4. ``scaling``: how cost grows: the five variants in Keras graph mode against their MACs,
   and S12 over input sizes 160 to 384 (batch 8).
5. ``families``: CAFormer-S18, ConvFormer-S18 and PoolFormerV2-S12 as in 1 (Keras graph,
   our SavedModel, TFLite fp32 and int8), against timm's model holding our weights,
   eager and exported to ONNX on onnxruntime. ``--weights`` other than a file (``imagenet``)
   applies to them too.
6. ``gpu``: when TensorFlow and torch both see a GPU: S12 in half precision (Keras
   mixed_float16 with and without XLA, the reference under ``torch.autocast`` eager and
   ``torch.compile``), inference and a training step, logits compared loosely with Keras
   fp32. ``--gpu-phase-on-cpu`` runs the same code on the CPU in bfloat16.

The report ends with the issue's goals as ratios (ours over onnxruntime running the
reference's ONNX export; the training step over PyTorch eager), each pass or miss.

How it keeps the comparison fair:

- Every contender lives in its own worker process, loaded once; the rounds then
  alternate: round r times every (contender, batch) once, starting at a place rotated by
  r, before round r + 1 begins. Machine drift and other load hit all contenders alike;
  the spread over rounds (min..max next to the median) shows how much there was.
- Every runtime is given the same thread count (default: every core this process may
  use): TensorFlow's intra- and inter-op pools (set before TensorFlow initialises),
  ``torch.set_num_threads``, onnxruntime's ``intra_op_num_threads`` and LiteRT's
  ``num_threads``; LiteRT runs fp32 through its default XNNPACK delegate. The output
  records them, with the environment variables that change them. Outside the gpu phase,
  TensorFlow is kept off any GPU.
- Every contender computes the same function: the Keras weights are ported into the
  reference, and each contender's logits are compared with the Keras model's on the same
  images (fp32 must agree within 1e-4). int8 is judged by its top-1 agreement with fp32
  on real ImageNet images and the cosine similarity of its logits: random weights give
  small class margins, so top-1 agreement understates int8.
- A contender that fails to load or to run is reported as failed, with its error; the
  others go on.

How to read the output (``benchmark.{json,md,png}``, or ``benchmark_quick.*``, in the
output folder; worker logs in ``*_logs/``): img/s is the median over rounds of
``batch * calls / seconds`` of one measurement (back-to-back calls for at least the
mode's seconds, after one untimed call), with the slowest and fastest round beside it.
Run it on an otherwise idle machine: other load shows up as a wide min..max, and hits
runtimes whose idle threads spin (torch's OpenMP, onnxruntime) far harder than the
others. On a machine you must share, ``--no-spin`` makes those threads sleep instead.

The machinery is the package ``benchmarks/metaformer_bench``; a new contender is one
loader function with a ``@contender(group, label)`` line in its ``contenders.py``.
"""

import argparse
import dataclasses
import datetime
import json
import os
import tempfile
import time
import traceback
from pathlib import Path

from metaformer_bench import phases
from metaformer_bench.prepare import prepare
from metaformer_bench.report import machine, markdown, plot
from metaformer_bench.runner import call_in_process, last_line
from metaformer_bench.settings import (
    DEFAULT_IMAGES,
    DEFAULT_OUTPUT,
    FULL,
    PHASES,
    QUICK,
    Settings,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few-minute smoke run")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results folder")
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="threads for every runtime (default: every usable core)",
    )
    parser.add_argument(
        "--inter-op-threads",
        type=int,
        default=1,
        help="inter-op threads for TensorFlow, torch and onnxruntime (default: 1)",
    )
    parser.add_argument(
        "--no-spin",
        action="store_true",
        help="idle torch and onnxruntime threads sleep instead of spinning (shared machines)",
    )
    parser.add_argument(
        "--phases", nargs="+", choices=PHASES, default=list(PHASES), help="what to run"
    )
    parser.add_argument(
        "--weights",
        help="S12 weights: imagenet, a .weights.h5 or a PyTorch checkpoint; imagenet (any "
        "value but a file) applies to the families too (default: seeded random weights; "
        "speed does not depend on them)",
    )
    parser.add_argument(
        "--images",
        type=Path,
        default=DEFAULT_IMAGES,
        help="imagenet-val-1300 folder for the checks and int8 calibration (random if absent)",
    )
    parser.add_argument(
        "--gpu-phase-on-cpu",
        action="store_true",
        help="run the gpu phase's contenders on the CPU (bfloat16), to check its code "
        "on a machine without a GPU",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    mode = QUICK if args.quick else FULL
    stem = "benchmark_quick" if args.quick else "benchmark"
    args.output.mkdir(parents=True, exist_ok=True)
    log_dir = args.output / f"{stem}_logs"
    log_dir.mkdir(exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.perf_counter()

    def log(message):
        print(f"[{time.perf_counter() - start:6.0f} s] {message}", flush=True)

    with tempfile.TemporaryDirectory(prefix="poolformer_benchmark_") as workdir:
        settings = Settings(args.threads, args.inter_op_threads, workdir, not args.no_spin)
        results = {
            "mode": mode.name,
            "mode_settings": dataclasses.asdict(mode),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": machine(settings),
        }
        load = os.getloadavg()[0]
        if load > 0.5:
            log(
                f"WARNING: the machine is busy (load average {load:.1f}): timings will be "
                "distorted, spinning thread pools (torch, onnxruntime) most; see --no-spin"
            )
        log(f"{mode.name} mode, {args.threads} threads; exporting the shared S12")
        prepared = call_in_process(
            log_dir / "prepare.log", prepare, mode, settings, args.images, args.weights
        )
        results["artifacts"] = prepared
        real = prepared["images"].startswith("real")
        family_weights = args.weights if args.weights and not os.path.isfile(args.weights) else None

        def gpu():
            if args.gpu_phase_on_cpu:
                return phases.gpu_phase(mode, settings, real, log_dir, log, device="cpu")
            found = call_in_process(log_dir / "gpu_found.log", phases.gpu_found)
            if not found["found"]:
                log(f"no GPU found ({found['reason']}): skipping the gpu phase")
                return {"skipped": f"no GPU found ({found['reason']})"}
            return phases.gpu_phase(
                mode, settings, real, log_dir, log, device="gpu", device_name=found["name"]
            )

        run = {
            "inference": lambda: phases.inference_phase(mode, settings, prepared, log_dir, log),
            "training": lambda: phases.training_phase(mode, settings, log_dir, log),
            "scaling": lambda: phases.scaling_phase(mode, settings, prepared, log_dir, log),
            "families": lambda: phases.families_phase(
                mode, settings, args.images, family_weights, log_dir, log
            ),
            "gpu": gpu,
        }
        for phase in PHASES:
            if phase not in args.phases:
                continue
            log(phase)
            try:
                results[phase] = run[phase]()
            except Exception:
                traceback.print_exc()
                results[phase] = {"error": last_line(traceback.format_exc())}
                log(f"the {phase} phase failed: {results[phase]['error']}")
    results["machine"]["load_average_after"] = os.getloadavg()
    results["duration_s"] = round(time.perf_counter() - start, 1)

    (args.output / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    report = markdown(results)
    (args.output / f"{stem}.md").write_text(report)
    plot(results, args.output / f"{stem}.png")
    print()
    print(report)
    print(f"Wrote {args.output / stem}.{{json,md,png}}")


if __name__ == "__main__":
    main()
