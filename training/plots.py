"""The training curve of a run as a PNG: loss and the validation metrics per epoch.

python -m keras_poolformer.training.plots RUN_DIR/log.csv curve.png
"""

import csv
import sys

_LABELS = {
    "val_top1": "val top-1",
    "val_top5": "val top-5",
    "val_map50": "val mAP@0.5",
    "val_map": "val mAP@0.5:0.95",
    "val_miou": "val mean IoU",
    "val_pixel_acc": "val pixel accuracy",
}


def plot_log(log_csv, png, title=None):
    """Draws ``log.csv`` of a run (train loss; its validation columns in percent: top-1
    and top-5, mAP, mean IoU...) into ``png``. Needs matplotlib; returns False without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from keras_poolformer import files

    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) for r in rows]
    figure, loss_axis = plt.subplots(figsize=(7, 4), dpi=110)
    loss_axis.plot(
        epochs, [float(r["train_loss"]) for r in rows], color="tab:gray", label="train loss"
    )
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("train loss")
    accuracy_axis = loss_axis.twinx()
    metrics = [key for key in (rows[0] if rows else {}) if key.startswith("val_")]
    headline = metrics[0] if metrics else None
    evaluated = [r for r in rows if headline and r.get(headline)]
    colours = ("tab:blue", "tab:green", "tab:orange", "tab:red")
    for key, colour in zip(metrics, colours, strict=False):
        accuracy_axis.plot(
            [int(r["epoch"]) for r in evaluated],
            [100 * float(r[key]) for r in evaluated],
            marker="o",
            markersize=3,
            color=colour,
            label=_LABELS.get(key, key.replace("_", " ")),
        )
    accuracy_axis.set_ylabel("validation (%)")
    accuracy_axis.set_ylim(0, 100)
    if evaluated:
        best = max(evaluated, key=lambda r: float(r[headline]))
        accuracy_axis.annotate(
            f"{100 * float(best[headline]):.1f}%",
            (int(best["epoch"]), 100 * float(best[headline])),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
        )
    lines = loss_axis.get_legend_handles_labels()
    more = accuracy_axis.get_legend_handles_labels()
    loss_axis.legend(
        lines[0] + more[0],
        lines[1] + more[1],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=3,
        frameon=False,
    )
    loss_axis.set_title(title or log_csv)
    loss_axis.grid(alpha=0.3)
    figure.tight_layout()
    with files.atomic_path(png) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return True


if __name__ == "__main__":
    plot_log(*sys.argv[1:3], *(sys.argv[3:4] or []))
