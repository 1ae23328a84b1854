"""What a benchmark run is: its mode (how long and how wide), the settings every worker
gets (threads, spinning, where the artifacts are), and the constants of the comparison.

Every parity-critical or recipe number is written here once, with its reason.
"""

import dataclasses
import os
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent
REPO = BENCHMARKS.parent
DEFAULT_OUTPUT = BENCHMARKS / "results"
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "imagenet-val-1300"

SIZE = 224
SEED = 0
TOLERANCE = 1e-4  # fp32 contenders must match the Keras logits this closely
CROP_PCT = 0.9  # S12's evaluation crop, for the real images (the families': 1.0)
LEARNING_RATE, WEIGHT_DECAY = 1e-4, 0.05  # the optimizer step, same for both frameworks
SETTLE_SECONDS = 0.1  # lets the previous worker's spinning threads go to sleep
S12 = "s12"  # the model of the inference, training and gpu phases

PHASES = ("inference", "training", "scaling", "families", "gpu")


@dataclasses.dataclass(frozen=True)
class Mode:
    """How long and how wide a run is."""

    name: str
    rounds: int  # inference rounds
    seconds: float  # least time of back-to-back calls in one measurement
    batches: tuple
    train_batch: int
    train_rounds: int
    train_seconds: float
    scaling_variants: tuple
    scaling_sizes: tuple
    scaling_batch: int
    scaling_rounds: int
    check_images: int  # images every contender's logits are compared on
    calibration_images: int  # int8 calibration set, disjoint from the check images
    families: tuple = ("caformer_s18", "convformer_s18", "poolformerv2_s12")


FULL = Mode(
    name="full",
    rounds=7,
    seconds=3.0,
    batches=(1, 32),
    train_batch=32,
    train_rounds=5,
    train_seconds=10.0,
    scaling_variants=("s12", "s24", "s36", "m36", "m48"),
    scaling_sizes=(160, 192, 224, 256, 320, 384),
    scaling_batch=8,
    scaling_rounds=3,
    check_images=128,
    calibration_images=128,
)
QUICK = Mode(
    name="quick",
    rounds=2,
    seconds=0.5,
    batches=(1, 4),
    train_batch=4,
    train_rounds=2,
    train_seconds=0.0,
    scaling_variants=("s12", "s24"),
    scaling_sizes=(160, 224),
    scaling_batch=1,
    scaling_rounds=2,
    check_images=8,
    calibration_images=8,
)


# The files ``prepare`` writes into the work folder, per model ("s12", "caformer_s18").
ARTIFACTS = {
    "weights": "{model}.weights.h5",
    "saved_model": "{model}_saved_model/1",
    "tflite_fp32": "{model}_fp32.tflite",
    "tflite_int8": "{model}_int8.tflite",
    "onnx": "{model}.onnx",
    "reference": "{model}_reference",  # transformers' save_pretrained folder (PoolFormer)
    "timm_state": "{model}_timm.pt",  # the Keras weights in timm's layout (baselines)
    "reference_onnx": "{model}_reference.onnx",
    "normalisation": "{model}_normalisation.json",
    "check": "{model}_check.npy",  # the images every contender's logits are compared on
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every worker is told: its thread counts and where the artifacts are.

    ``spin=False`` makes idle torch (OpenMP) and onnxruntime threads sleep instead of
    spin-waiting: on a machine that other work shares, spinning threads that lose their
    core stall each other (torch S12 at batch 1 fell from 26 to 0.7 img/s here).
    """

    threads: int
    inter_op_threads: int
    workdir: str
    spin: bool = True

    def artifact(self, name, model=S12):
        return os.path.join(self.workdir, ARTIFACTS[name].format(model=model))
