"""PNG figures: a run's training curves (loss parts, lr, throughput, top-1), a confusion matrix, and several
runs' curves overlaid (`semiclust compare`); each written atomically."""
from __future__ import annotations

import io
from pathlib import Path

from semiclust.engine.metrics import read_metrics_file
from semiclust.errors import SemiclustError
from semiclust.storage.atomic import write_bytes

LOSS_KEYS = ("loss", "loss_labeled", "loss_unlabeled")


def literal(text: str) -> str:
    """Text drawn as it is: matplotlib reads a `$` as the start of mathematical notation (and an odd number of them
    fails the whole figure), so a class or run name holding one is escaped."""
    return str(text).replace("$", r"\$")


def save_png(figure, out: Path) -> Path:
    """Render a matplotlib figure as a PNG in memory, close it, and write it atomically (a full disk leaves no
    half image)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return write_bytes(out, buffer.getvalue())


def plot_run(run_dir: Path, out: Path | None = None, notes: list[str] | None = None) -> Path:
    """Write the curves of `run_dir` to `out` (default <run_dir>/curves.png) and return its path; damaged lines of
    metrics.jsonl are left out, and the warning naming them is added to `notes`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_file = Path(run_dir) / "metrics.jsonl"
    if not metrics_file.is_file():
        raise SemiclustError(f"'{run_dir}' has no metrics.jsonl; pass the run directory that `semiclust train --out` wrote.")
    metrics = read_metrics_file(metrics_file)
    rows = metrics.records
    if metrics.warning() and notes is not None:
        notes.append(metrics.warning())
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
    axes[1].plot(steps, [r.get("lr") for r in train_rows], color="tab:purple")
    axes[1].set(title="learning rate", xlabel="step")
    axes[2].plot(steps, [r.get("img_per_s") for r in train_rows], color="tab:gray")
    axes[2].set(title="images / s", xlabel="step")
    if eval_rows:
        axes[3].plot([r["step"] for r in eval_rows], [r["top1"] for r in eval_rows], marker="o", label="top-1")
        axes[3].plot([r["step"] for r in eval_rows], [r["top5"] for r in eval_rows], marker=".", label="top-5")
        axes[3].legend()
        last = eval_rows[-1]
        axes[3].set(title=literal(f"{last['split']} accuracy (last top-1 {last['top1']:.2f}%)"), xlabel="step", ylabel="%")
    else:
        axes[3].set(title="accuracy (no evaluation yet)")
    for axis in axes:
        axis.grid(alpha=0.3)
    figure.suptitle(literal(Path(run_dir).resolve().name))
    return save_png(figure, Path(out) if out else Path(run_dir) / "curves.png")


MAX_LABELLED_CLASSES = 30  # above this, class names would overlap: the axes show indices
MAX_DRAWN_CLASSES = 200  # above this, the figure shows the MAX_LABELLED_CLASSES most-confused classes


def confusion_shown(confusion) -> tuple[object | None, str | None]:
    """Which classes a confusion figure shows: all (None, None), or above MAX_DRAWN_CLASSES the indices of the
    MAX_LABELLED_CLASSES classes in the most errors (as the true or the predicted class), in class order, and
    the words that say so. Row and column sums only: no K x K temporary."""
    k = confusion.shape[0]
    if k <= MAX_DRAWN_CLASSES:
        return None, None
    correct = confusion.diagonal()
    errors = (confusion.sum(dim=1) - correct) + (confusion.sum(dim=0) - correct)
    rows = errors.topk(MAX_LABELLED_CLASSES).indices.sort().values
    return rows, f"the {MAX_LABELLED_CLASSES} most-confused of {k:,} classes"


def plot_confusion(confusion, classes: list[str], out: Path, title: str) -> Path:
    """A row-normalised confusion matrix (true class by row) as a PNG; counts written in the cells of small ones.
    Above MAX_DRAWN_CLASSES classes only the most-confused ones are drawn (named in the title), their rows still
    fractions of every image of the true class, so the figure stays readable and small in memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown, note = confusion_shown(confusion)
    totals = confusion.sum(dim=1, keepdim=True).double().clamp(min=1)
    if shown is not None:
        confusion, totals = confusion.index_select(0, shown).index_select(1, shown), totals.index_select(0, shown)
        classes = [classes[i] for i in shown.tolist()]
        title = f"{title}\n{note}"
    counts = confusion.double()
    rates = counts / totals
    k = len(classes)
    side = min(4 + 0.35 * k, 40)
    figure, axis = plt.subplots(figsize=(side, side * 0.9), constrained_layout=True)
    image = axis.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    figure.colorbar(image, ax=axis, fraction=0.046, label="fraction of the true class")
    if k <= MAX_LABELLED_CLASSES:
        axis.set_xticks(range(k), [literal(c) for c in classes], rotation=90)
        axis.set_yticks(range(k), [literal(c) for c in classes])
        for row in range(k):
            for col in range(k):
                if counts[row, col] > 0:
                    axis.text(col, row, int(counts[row, col]), ha="center", va="center", fontsize=7,
                              color="white" if rates[row, col] > 0.5 else "black")
    axis.set(xlabel="predicted class", ylabel="true class", title=literal(title))
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
        axes[0].plot([r["step"] for r in train], [r.get("loss") for r in train], label=literal(label), **style)
        if evals:
            axes[1].plot([r["step"] for r in evals], [r["top1"] for r in evals], marker="o", markersize=4,
                         label=literal(f"{label} (final {evals[-1]['top1']:.2f}%)"), **style)
        axes[2].plot([r["step"] for r in train], [r.get("lr") for r in train], label=literal(label), **style)
    split = next((evals[-1]["split"] for _, _, evals in runs if evals), "evaluation")
    for axis, title, unit in zip(axes, ("training loss", f"{split} top-1", "learning rate"), ("", "%", "")):
        axis.set(title=literal(title), xlabel="step", ylabel=unit)
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=8)
    figure.suptitle(f"{len(runs)} runs compared")
    return save_png(figure, out)
