"""The training curve of a run as a PNG: loss and validation accuracy per epoch.

python -m keras_poolformer.training.plots RUN_DIR/log.csv curve.png
"""

import csv
import sys


def plot_log(log_csv, png, title=None):
    """Draws ``log.csv`` of a run (train loss; val top-1 and top-5) into ``png``.
    Needs matplotlib; returns False without it."""
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
    evaluated = [r for r in rows if r.get("val_top1")]
    for key, colour in (("val_top1", "tab:blue"), ("val_top5", "tab:green")):
        accuracy_axis.plot(
            [int(r["epoch"]) for r in evaluated],
            [100 * float(r[key]) for r in evaluated],
            marker="o",
            markersize=3,
            color=colour,
            label=key.replace("val_top", "val top-"),
        )
    accuracy_axis.set_ylabel("validation accuracy (%)")
    accuracy_axis.set_ylim(0, 100)
    if evaluated:
        best = max(evaluated, key=lambda r: float(r["val_top1"]))
        accuracy_axis.annotate(
            f"{100 * float(best['val_top1']):.1f}%",
            (int(best["epoch"]), 100 * float(best["val_top1"])),
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
