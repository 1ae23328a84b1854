"""keras_poolformer: PoolFormer (MetaFormer) for TensorFlow / Keras 3."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "keras_poolformer" / "__init__.py").read_text(), re.M
)[1]

# Deployment: TF Serving warm-up protos, the LiteRT interpreter, ONNX export and runtime.
EXPORT_REQUIRES = ["tensorflow-serving-api", "ai-edge-litert", "tf2onnx", "onnxruntime"]

TEST_REQUIRES = [
    *EXPORT_REQUIRES,
    "pytest>=7",
    "torch>=2.1,<2.14",
    "transformers>=4.30",
    "ruff>=0.5",
    "matplotlib",  # the training curve in the README
    "pillow",  # the reference decode and resize in the pixel tests
    # timm (installed by .ci/setup test without its dependencies) imports these:
    "pyyaml",
    "huggingface_hub",
    "safetensors",
]

setup(
    name="keras-poolformer",
    version=VERSION,
    description="PoolFormer (MetaFormer is Actually What You Need for Vision) in Keras 3, "
    "exact to the original PyTorch model.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The repository's convert/ and training/ folders install as keras_poolformer.convert
    # and keras_poolformer.training, so that no generic top-level name lands in site-packages.
    packages=[
        *find_packages(include=["keras_poolformer", "keras_poolformer.*"]),
        "keras_poolformer.convert",
        "keras_poolformer.training",
    ],
    package_dir={"keras_poolformer.convert": "convert", "keras_poolformer.training": "training"},
    package_data={"keras_poolformer": ["data/*.tsv"]},
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.0",
        "numpy",
        "h5py",
        "ml_dtypes",  # bfloat16 tensors in checkpoints (TensorFlow brings it too)
        "safetensors>=0.4",  # timm / Hugging Face checkpoints, read through numpy
        "tensorflow-datasets",  # --data tfds:NAME
        "tensorboard",  # training logs
        # Our backbones in KerasHub's and keras-cv's detectors and segmenters, and presets
        "keras-hub>=0.20",
        "keras-cv>=0.9",
        "pycocotools",  # COCO mAP of the detection runs
        "pillow",  # segmentation masks (palette PNGs) and the prediction drawings
    ],
    extras_require={
        # The PyTorch reference for parity tests, and the linter. torch stays on the
        # 2.13 line: an open range would pull a CUDA build of several GB.
        "export": EXPORT_REQUIRES,
        "test": TEST_REQUIRES,
        "dev": TEST_REQUIRES,
    },
    entry_points={"console_scripts": ["keras-poolformer=keras_poolformer.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: Keras",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
