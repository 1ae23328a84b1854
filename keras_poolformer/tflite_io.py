"""Running a TFLite file from :func:`keras_poolformer.export.export_tflite` on float pixels.

This module imports numpy alone, so that a LiteRT process can load it by path
(``benchmarks/benchmark.py`` does) without importing TensorFlow through the package.
"""

import numpy as np


def invoke_tflite(interpreter, batch):
    """Float32 outputs of an allocated LiteRT ``interpreter`` on a float32 ``batch``
    (0..255) shaped like its input; quantized inputs and outputs are handled."""
    (source,) = interpreter.get_input_details()
    (target,) = interpreter.get_output_details()
    x = batch
    if source["dtype"] != np.float32:
        scale, zero = source["quantization"]
        x = np.clip(np.round(x / scale + zero), 0, 255).astype(source["dtype"])
    interpreter.set_tensor(source["index"], x)
    interpreter.invoke()
    y = interpreter.get_tensor(target["index"]).astype(np.float32)
    if target["dtype"] != np.float32:
        scale, zero = target["quantization"]
        y = (y - zero) * scale
    return y
