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


def convert(args):
    """Converts a PyTorch checkpoint to Keras, optionally verifying it."""
    import numpy as np

    import keras_poolformer as kp
    from keras_poolformer.convert import convert_checkpoint, describe, load_official

    model, info = convert_checkpoint(args.checkpoint, args.output, variant=args.model)
    arch = info["architecture"]
    tensors = len(info["report"].loaded)
    print(
        f"{args.checkpoint}: {info['layout']} layout, {describe(arch)}, {tensors} tensors "
        f"-> {args.output} ({model.count_params():,} parameters)"
    )
    if not args.verify:
        return 0

    from keras_poolformer.convert.verify import TOLERANCE, compare

    crop_pct = kp.MODEL_CONFIGS.get(arch["variant"] or "", {}).get("crop_pct", 0.9)
    if args.images:
        images = np.stack([kp.load_image(path, crop_pct=crop_pct) for path in args.images])
        source = f"{len(images)} image(s)"
    else:
        images = np.random.default_rng(0).uniform(0, 255, (4, 224, 224, 3)).astype("float32")
        source = "4 random-noise images (pass --images for real ones)"
    state, _ = load_official(args.checkpoint)
    result = compare(model, state, images)
    print(f"verified against transformers' PoolFormer on {source}:")
    print(f"  max |logit difference|: {result['max_abs_diff']:.3g} (tolerance {TOLERANCE:g})")
    print(f"  top-1 agreement: {result['top1_agreement']:.0%}")
    print(f"  top-5 agreement (same classes, same order): {result['top5_agreement']:.0%}")
    if result["max_abs_diff"] > TOLERANCE:
        print("keras-poolformer: error: the converted model does not match", file=sys.stderr)
        return 1
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
    p.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (default), a .weights.h5 file or a PyTorch checkpoint of that variant",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(run=predict)

    p = commands.add_parser(
        "convert",
        help="convert a PyTorch checkpoint (official, timm or transformers layout) to Keras",
    )
    p.add_argument("checkpoint", help=".pth/.pth.tar/.bin/.safetensors/.npz or a HF model folder")
    p.add_argument("--output", required=True, help="a .weights.h5 or .keras file")
    p.add_argument("--model", choices=variants, help="expected variant (inferred otherwise)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="compare with transformers' PyTorch PoolFormer (needs the [test] extra)",
    )
    p.add_argument("--images", nargs="+", metavar="IMAGE", help="images for --verify")
    p.set_defaults(run=convert)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    import tensorflow as tf

    # Each model traces its own predict function once; TF's retracing notice is noise here.
    tf.get_logger().setLevel("ERROR")
    try:
        return args.run(args)
    except (ValueError, OSError, RuntimeError) as error:
        print(f"keras-poolformer: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
