"""PNG figures: a run's training curves (loss parts, lr, throughput, top-1), a confusion matrix, and several
runs' curves overlaid (`semiclust compare`); each written atomically."""
from __future__ import annotations

import io
from pathlib import Path

from semiclust.engine.metrics import read_metrics
from semiclust.errors import SemiclustError
from semiclust.storage.atomic import write_bytes

LOSS_KEYS = ("loss", "loss_labeled", "loss_unlabeled")


def save_png(figure, out: Path) -> Path:
    """Render a matplotlib figure as a PNG in memory, close it, and write it atomically (a full disk leaves no
    half image)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return write_bytes(out, buffer.getvalue())


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """Write the curves of `run_dir` to `out` (default <run_dir>/curves.png) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_file = Path(run_dir) / "metrics.jsonl"
    if not metrics_file.is_file():
        raise SemiclustError(f"'{run_dir}' has no metrics.jsonl; pass the run directory that `semiclust train --out` wrote.")
    rows = read_metrics(metrics_file)
    train_rows = [r for r in rows if r.get("type") == "train"]
    eval_rows = [r for r in rows if r.get("type") == "eval"]
    if not train_rows:
        raise SemiclustError(f"'{metrics_file}' holds no training records yet; plot again after the first log interval.")
    steps = [r["step"] for r in train_rows]
    figure, axes = plt.subplots(1, 4, figsize=(18, 4), constrained_layout=True)
    for key in LOSS_KEYS:
        values = [r.get(key) for r in train_rows]
        if any(v is not None for v in values):
            axes[0].plot(steps, values, label=key.replace("_", " "))
    axes[0].set(title="loss", xlabel="step")
    axes[0].legend()
    axes[1].plot(steps, [r["lr"] for r in train_rows], color="tab:purple")
    axes[1].set(title="learning rate", xlabel="step")
    axes[2].plot(steps, [r.get("img_per_s") for r in train_rows], color="tab:gray")
    axes[2].set(title="images / s", xlabel="step")
    if eval_rows:
        axes[3].plot([r["step"] for r in eval_rows], [r["top1"] for r in eval_rows], marker="o", label="top-1")
        axes[3].plot([r["step"] for r in eval_rows], [r["top5"] for r in eval_rows], marker=".", label="top-5")
        axes[3].legend()
        last = eval_rows[-1]
        axes[3].set(title=f"{last['split']} accuracy (last top-1 {last['top1']:.2f}%)", xlabel="step", ylabel="%")
    else:
        axes[3].set(title="accuracy (no evaluation yet)")
    for axis in axes:
        axis.grid(alpha=0.3)
    figure.suptitle(Path(run_dir).resolve().name)
    return save_png(figure, Path(out) if out else Path(run_dir) / "curves.png")


MAX_LABELLED_CLASSES = 30  # above this, class names would overlap: the axes show indices


def plot_confusion(confusion, classes: list[str], out: Path, title: str) -> Path:
    """A row-normalised confusion matrix (true class by row) as a PNG; counts written in the cells of small ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = confusion.double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    k = len(classes)
    side = min(4 + 0.35 * k, 40)
    figure, axis = plt.subplots(figsize=(side, side * 0.9), constrained_layout=True)
    image = axis.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    figure.colorbar(image, ax=axis, fraction=0.046, label="fraction of the true class")
    if k <= MAX_LABELLED_CLASSES:
        axis.set_xticks(range(k), classes, rotation=90)
        axis.set_yticks(range(k), classes)
        for row in range(k):
            for col in range(k):
                if counts[row, col] > 0:
                    axis.text(col, row, int(counts[row, col]), ha="center", va="center", fontsize=7,
                              color="white" if rates[row, col] > 0.5 else "black")
    axis.set(xlabel="predicted class", ylabel="true class", title=title)
    return save_png(figure, out)


def plot_comparison(runs: list[tuple[str, list[dict], list[dict]]], out: Path) -> Path:
    """The curves of several runs overlaid, one colour per run: training loss, evaluation top-1 and learning
    rate by step; `runs` holds (label, training records, evaluation records) of each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(18, 5), constrained_layout=True)
    colours = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    for index, (label, train, evals) in enumerate(runs):
        # earlier runs drawn wider, so that identical curves (the same lr schedule) show as nested lines
        style = {"color": colours(index % colours.N), "linewidth": 1.2 + 2.4 * (len(runs) - 1 - index) / max(len(runs) - 1, 1)}
        axes[0].plot([r["step"] for r in train], [r.get("loss") for r in train], label=label, **style)
        if evals:
            axes[1].plot([r["step"] for r in evals], [r["top1"] for r in evals], marker="o", markersize=4,
                         label=f"{label} (final {evals[-1]['top1']:.2f}%)", **style)
        axes[2].plot([r["step"] for r in train], [r.get("lr") for r in train], label=label, **style)
    split = next((evals[-1]["split"] for _, _, evals in runs if evals), "evaluation")
    for axis, title, unit in zip(axes, ("training loss", f"{split} top-1", "learning rate"), ("", "%", "")):
        axis.set(title=title, xlabel="step", ylabel=unit)
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=8)
    figure.suptitle(f"{len(runs)} runs compared")
    return save_png(figure, out)
