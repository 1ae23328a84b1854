"""What decoding JPEGs and resizing them as Pillow does costs the evaluation input pipeline.

    python benchmarks/input_pipeline.py                  # 1,300 ImageNet JPEGs, 5 rounds
    python benchmarks/input_pipeline.py --images DIR --rounds 3 --output DIR

Contenders, each a ``tf.data`` pipeline over the same JPEG files that reads, decodes,
resizes the shorter side to 248 and crops the centre 224 (the evaluation transform at
crop 0.9), in batches of 32, with ``num_parallel_calls=AUTOTUNE`` as the library's data
pipelines run it:

- ``tf-default``: TensorFlow's defaults, ``tf.io.decode_image`` (libjpeg's fast DCT) and
  one two-axis antialiased bicubic ``tf.image.resize`` in float32; the floor.
- ``before``: what the library did before issue 13: the same, after the header check
  against the image limits (``keras_poolformer.imagenet.image_problem``) that ``decode_image``
  has made since issue 12.
- ``pillow-pixels``: the library now, ``keras_poolformer.decode_image`` (the header
  check, then the accurate integer DCT) and ``keras_poolformer.eval_transform`` (Pillow's
  integer bicubic, width pass then height pass, only the crop computed).
- ``pillow-python``: Pillow itself (``Image.open().convert("RGB").resize().crop()``) in
  a plain Python loop, one image at a time, for scale.

The rounds alternate: round r runs every contender once, starting at a place rotated by
r, so that load from elsewhere on the machine hits all of them alike. The figure is the
median of the rounds' images/s, with the slowest and fastest beside it.

A second table times each stage alone, one image at a time in a ``tf.function`` (the
fastest of the rounds, in ms per image): the fast and the accurate JPEG decode, the
header check, Pillow's integer resize and crop, and the float32 ``tf.image.resize``.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_IMAGES = HERE.parents[1] / "shared/data/imagenet-val-1300/images"
SIZE, SCALE = 224, 248


def tf_default(tf):
    def transform(path, read=True):
        data = tf.io.read_file(path) if read else path
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        shape = tf.shape(image)
        height, width = shape[0], shape[1]
        short = tf.minimum(height, width)
        new_h = tf.where(height <= width, SCALE, SCALE * height // short)
        new_w = tf.where(height <= width, SCALE * width // short, SCALE)
        resized = tf.image.resize(image, tf.stack([new_h, new_w]), "bicubic", antialias=True)
        top, left = (new_h - SIZE) // 2, (new_w - SIZE) // 2
        return tf.clip_by_value(resized[top : top + SIZE, left : left + SIZE], 0.0, 255.0)

    return transform


def before(tf):
    import keras_poolformer as kp

    resize_and_crop = tf_default(tf)

    def transform(path):
        data = tf.io.read_file(path)
        problem = kp.imagenet.image_problem(data)
        with tf.control_dependencies([tf.debugging.Assert(tf.equal(problem, ""), [problem])]):
            return resize_and_crop(tf.identity(data), read=False)

    return transform


def pillow_pixels(tf):
    import keras_poolformer as kp

    def transform(path):
        return kp.eval_transform(kp.decode_image(tf.io.read_file(path)), SIZE, SIZE / SCALE)

    return transform


def run_pipeline(tf, transform, files):
    dataset = tf.data.Dataset.from_tensor_slices(files)
    dataset = dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    start = time.perf_counter()
    count = sum(int(batch.shape[0]) for batch in dataset.batch(32).prefetch(2))
    return count / (time.perf_counter() - start)


def run_pillow(files):
    import numpy as np
    from PIL import Image

    start = time.perf_counter()
    for path in files:
        with Image.open(path) as image:
            image = image.convert("RGB")
            w, h = image.size
            new_w, new_h = (SCALE, SCALE * h // w) if w <= h else (SCALE * w // h, SCALE)
            image = image.resize((new_w, new_h), Image.BICUBIC)
            left, top = round((new_w - SIZE) / 2), round((new_h - SIZE) / 2)
            np.asarray(image.crop((left, top, left + SIZE, top + SIZE)), np.float32)
    return len(files) / (time.perf_counter() - start)


def time_stages(tf, files, rounds, count=200):
    """Milliseconds per image of each stage alone, fastest of ``rounds`` alternating."""
    import keras_poolformer as kp

    datas = [tf.constant(Path(f).read_bytes()) for f in files[:count]]
    accurate = tf.function(lambda d: tf.io.decode_jpeg(d, 3, dct_method="INTEGER_ACCURATE"))
    images = [accurate(d) for d in datas]
    stages = {
        "decode, fast DCT": (tf.function(lambda d: tf.io.decode_jpeg(d, 3)), datas),
        "decode, accurate DCT": (accurate, datas),
        "header check": (tf.function(kp.imagenet.image_problem), datas),
        "resize + crop, Pillow's integers": (
            tf.function(lambda x: kp.eval_transform(x, SIZE, SIZE / SCALE)),
            images,
        ),
        "resize + crop, float32 tf.image.resize": (
            tf.function(lambda x: kp.eval_transform(tf.cast(x, tf.float32), SIZE, SIZE / SCALE)),
            images,
        ),
    }
    for function, inputs in stages.values():  # tracing
        for x in inputs[:10]:
            function(x)
    times = {name: [] for name in stages}
    for r in range(rounds):
        names = list(stages)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            function, inputs = stages[name]
            start = time.perf_counter()
            for x in inputs:
                function(x)
            times[name].append((time.perf_counter() - start) / len(inputs) * 1e3)
    return {name: min(values) for name, values in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="a folder of JPEGs")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    files = sorted(str(p) for p in args.images.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
    if not files:
        sys.exit(f"no JPEG files in {args.images}")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    contenders = {
        "tf-default": lambda: run_pipeline(tf, tf_default(tf), files),
        "before": lambda: run_pipeline(tf, before(tf), files),
        "pillow-pixels": lambda: run_pipeline(tf, pillow_pixels(tf), files),
        "pillow-python": lambda: run_pillow(files),
    }
    names = list(contenders)
    for name in names:  # one untimed pass each: tracing, the page cache
        contenders[name]()
    speeds = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            speeds[name].append(contenders[name]())
            print(f"round {r + 1}/{args.rounds} {name}: {speeds[name][-1]:.1f} img/s", flush=True)

    stages = time_stages(tf, files, args.rounds)
    base = statistics.median(speeds["tf-default"])
    rows = {
        name: {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "vs_tf_default": statistics.median(values) / base,
            "vs_before": statistics.median(values) / statistics.median(speeds["before"]),
        }
        for name, values in speeds.items()
    }
    lines = [
        "# Evaluation input pipeline: Pillow's pixels against TensorFlow's defaults",
        "",
        f"{len(files)} JPEGs from `{'/'.join(args.images.parts[-2:])}`, decode + resize to "
        f"{SCALE} + centre crop {SIZE}, batches of 32, `tf.data` AUTOTUNE, {os.cpu_count()} cores, "
        f"{args.rounds} alternating rounds (`python benchmarks/input_pipeline.py`).",
        "",
        "| contender | img/s (median) | slowest..fastest | vs tf-default | vs before |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {r['median']:.1f} | {r['min']:.1f}..{r['max']:.1f} "
            f"| {r['vs_tf_default']:.2f}x | {r['vs_before']:.2f}x |"
            for name, r in rows.items()
        ),
        "",
        f"Each stage alone, one image at a time in a `tf.function`, {min(200, len(files))} "
        "images (ms per image, fastest of the rounds):",
        "",
        "| stage | ms/image |",
        "|---|---|",
        *(f"| {name} | {ms:.2f} |" for name, ms in stages.items()),
        "",
    ]
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "input_pipeline.md").write_text("\n".join(lines), encoding="utf-8")
    (args.output / "input_pipeline.json").write_text(
        json.dumps(
            {
                "files": len(files),
                "rounds": args.rounds,
                "speeds": speeds,
                "stages_ms": stages,
                **rows,
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
