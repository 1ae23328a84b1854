"""The ``keras-poolformer`` command line (also ``python -m keras_poolformer``).

keras-poolformer summary [--variants s12 s24 ...] [--images IMAGE ...]
keras-poolformer predict IMAGE ... --model s12 --weights FILE.weights.h5
"""

import argparse
import sys
import time

FIELDS = ("variant", "params", "paper params", "MACs", "paper MACs", "MACs vs paper")


def _print_table(rows, header):
    widths = [max(len(str(v)) for v in col) for col in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print("  ".join(str(v).rjust(w) for v, w in zip(row, widths, strict=True)), flush=True)


def summary(args):
    """Builds each variant, counts it, and runs the given images through it."""
    import numpy as np

    import keras_poolformer as kp

    images = None
    if args.images:
        images = np.stack([kp.load_image(path) for path in args.images])
        print(f"{len(images)} image(s) loaded and transformed to 224x224.")
    header = list(FIELDS) + ([f"ms/image (batch {len(images)})"] if images is not None else [])
    rows = []
    for key in args.variants:
        config = kp.MODEL_CONFIGS[key]
        print(f"building PoolFormer-{key.upper()} ...", flush=True)
        model = kp.VARIANTS[key](weights=None)
        params = model.count_params()
        macs = kp.count_macs(model)
        row = [
            key.upper(),
            f"{params:,}",
            f"{config['params']:,}",
            f"{macs / 1e9:.3f}G",
            f"{config['macs'] / 1e9:.1f}G",
            f"{100 * (macs / config['macs'] - 1):+.1f}%",
        ]
        if images is not None:
            model.predict_on_batch(images)  # trace once, outside the timing
            start = time.perf_counter()
            probs = model.predict_on_batch(images)
            elapsed = time.perf_counter() - start
            if probs.shape != (len(images), 1000) or not np.all(np.isfinite(probs)):
                raise RuntimeError(f"PoolFormer-{key.upper()} gave bad outputs {probs.shape}")
            row.append(f"{1000 * elapsed / len(images):.0f}")
        rows.append(row)
    print()
    _print_table(rows, header)
    if images is not None:
        print("\n(The models above have random weights: this shows they run, not what they see.)")
    return 0


def predict(args):
    """Prints the top-5 ImageNet classes of each image."""
    import numpy as np

    import keras_poolformer as kp

    crop_pct = kp.MODEL_CONFIGS[args.model]["crop_pct"]
    model = kp.VARIANTS[args.model](weights=args.weights)
    images = np.stack([kp.load_image(path, crop_pct=crop_pct) for path in args.images])
    probs = model.predict(images, batch_size=args.batch_size, verbose=0)
    for path, top in zip(args.images, kp.decode_predictions(probs, top=5), strict=True):
        print(path)
        for wnid, name, score in top:
            print(f"  {score:7.2%}  {name} ({wnid})")
    return 0


def build_parser():
    from keras_poolformer.models import MODEL_CONFIGS

    variants = list(MODEL_CONFIGS)
    parser = argparse.ArgumentParser(
        prog="keras-poolformer", description="PoolFormer (MetaFormer) in Keras 3."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser(
        "summary",
        help="build each variant; print its parameters and MACs beside the paper's",
    )
    p.add_argument("--variants", nargs="+", choices=variants, default=variants)
    p.add_argument("--images", nargs="+", metavar="IMAGE", help="also run these images")
    p.set_defaults(run=summary)

    p = commands.add_parser("predict", help="top-5 ImageNet classes of images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", choices=variants, default="s12")
    p.add_argument("--weights", required=True, help="a Keras .weights.h5 file of that variant")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(run=predict)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    import tensorflow as tf

    # Each model traces its own predict function once; TF's retracing notice is noise here.
    tf.get_logger().setLevel("ERROR")
    try:
        return args.run(args)
    except ValueError as error:
        print(f"keras-poolformer: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
