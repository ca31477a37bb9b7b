"""Learning quality on real small images: Fashion-MNIST, 10 labels per class, a wall-time budget per run.

    apt-get install dataset-fashion-mnist                       # the idx files, in /usr/share/datasets/fashion-mnist
    python benchmarks/small_images.py                           # 30 minutes per run, seeds 0-2: about 7.5 hours
    python benchmarks/small_images.py --seeds 0                 # seed 0 of every entry first (~2.5 h)
    python benchmarks/small_images.py --budget 5m --entries suave daino   # a quick comparison of levers
    python benchmarks/small_images.py --table-only              # print the table and PNG of what is recorded

Entries, each on the same labels (the class-balanced draw of `data.labels.per_class: 10` for the seed) and
the same budget, run one at a time (two jobs on 2 cores would halve both):
- suave, daino: `semiclust train recipes/fashion_mnist_{suave,daino}.yaml --budget B` (the time budget
  fixes the number of steps after a calibration; the run ends inside B including its final evaluation);
- supervised: the Suave recipe with `method.name: supervised` (the labeled images only, same network);
- logreg: scikit-learn's logistic regression on the raw pixels of the same 100 labeled images;
- suave_folder, daino_folder: the same recipes on the same images written as a PNG ImageFolder (--folder, written
  once: class folders named so that they sort in the idx files' class order and files in the idx order, so the seed
  draws the same 100 labeled images), the path a user's own images take (decoded once into memory, data.cache auto);
- usb: USB's FixMatch run by its own library (`../shared/peers/usb`, read its README; needs its venv and
  `prep_data.py` once), with the same budget. Skipped with a reason when the peer is not set up.

Every finished run is appended to --results (JSON lines) and skipped when asked again, so the table can be
completed over several sittings. The table gives, per entry and budget, the FINAL test top-1 (mean and min
over the seeds recorded), the best test top-1 seen during training (labelled as such: chosen by the test
split, for comparison with peers that report it; never used to pick anything), wall time and images/s;
--png draws test top-1 against wall time for every run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT.parent / "shared" / "peers" / "usb"
PEER_PYTHON = Path(os.environ.get("USB_VENV", Path.home() / ".cache" / "peers-usb" / "venv")) / "bin" / "python"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
ENTRIES = ("suave", "daino", "supervised", "logreg", "usb", "suave_folder", "daino_folder")
RECIPE_OF = {"suave": ("fashion_mnist_suave", []), "daino": ("fashion_mnist_daino", []),
             "supervised": ("fashion_mnist_suave", ["method={name: supervised}"]),
             "suave_folder": ("fashion_mnist_suave", ["data.dataset=imagefolder"]),
             "daino_folder": ("fashion_mnist_daino", ["data.dataset=imagefolder"])}


def write_folder(folder: Path) -> Path:
    """The idx images as ROOT/train/<class>/<index>.png and ROOT/val/<class>/<index>.png (grey PNGs), once:
    `NN_name` class folders sort in the idx class order and zero-padded indices in the idx order."""
    if (folder / "complete").is_file():
        return folder
    from PIL import Image

    from semiclust.data.arrays import fashion_mnist

    data = fashion_mnist(str(FMNIST))
    slug = lambda name: "".join(c if c.isalnum() else "_" for c in name.lower())  # noqa: E731
    for split, images, labels in (("train", data.train.images, data.train.labels),
                                  ("val", data.test.images, data.test.labels)):
        for index, (image, label) in enumerate(zip(images, labels.tolist())):
            target = folder / split / f"{label:02d}_{slug(data.classes[label])}" / f"{index:05d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0].numpy()).save(target)
    (folder / "complete").write_text("written from the idx files by benchmarks/small_images.py\n")
    return folder


def seconds_of(budget: str) -> float:
    from semiclust.config.schema import duration_seconds

    return duration_seconds(budget)


def eval_curve(run: Path) -> tuple[list[tuple[float, float]], float | None]:
    """(wall seconds, test top-1) of every evaluation, times read from the training records' elapsed_s, and
    the median images/s."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trains = [r for r in records if r["type"] == "train"]
    curve = []
    for record in (r for r in records if r["type"] == "eval"):
        at = [t["elapsed_s"] for t in trains if t["step"] <= record["step"]]
        curve.append((at[-1] if at else 0.0, record["top1"]))
    speeds = sorted(t["img_per_s"] for t in trains)
    return curve, speeds[len(speeds) // 2] if speeds else None


def run_semiclust(entry: str, seed: int, budget: str, out: Path, sets: list[str], folder: Path) -> dict:
    recipe, extra = RECIPE_OF[entry]
    if entry.endswith("_folder"):
        extra = extra + [f"data.options={{root: {write_folder(folder)}, channels: 1}}"]  # as recipe init writes it
    args = [sys.executable, "-m", "semiclust", "train", recipe, "--out", str(out), "--overwrite", "--budget", budget,
            "--set", f"seed={seed}", "--set", "runtime.progress=none"]
    for item in extra + sets:
        args += ["--set", item]
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{entry} seed {seed} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    import torch

    final = torch.load(out / "checkpoints" / "final.pt", weights_only=True, map_location="cpu")
    curve, speed = eval_curve(out)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if any(r["type"] == "eval" and r["step"] == final["step"] for r in records):
        curve.pop()  # the final evaluation, drawn at the run's whole wall time below
    curve.append((wall, final["eval"]["top1"]))
    return {"final": final["eval"]["top1"], "best": max(top1 for _, top1 in curve), "wall_s": wall,
            "img_s": speed, "steps": final["step"], "curve": curve}


def run_logreg(seed: int) -> dict:
    """Raw-pixel logistic regression on the labeled subset semiclust draws for the seed."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from semiclust.engine.setup import draw_subset, load_dataset
    from semiclust.config.loader import load_recipe

    started = time.perf_counter()
    recipe = load_recipe("fashion_mnist_suave", [f"seed={seed}"])
    data = load_dataset(recipe)
    chosen = draw_subset(data, recipe).indices
    flat = lambda images: images.reshape(len(images), -1).float().numpy() / 255.0  # noqa: E731
    model = LogisticRegression(max_iter=2000).fit(flat(data.train.images[chosen]), data.train.labels[chosen].numpy())
    top1 = 100.0 * float(np.mean(model.predict(flat(data.test.images)) == data.test.labels.numpy()))
    wall = time.perf_counter() - started
    return {"final": top1, "best": top1, "wall_s": wall, "img_s": None, "steps": None, "curve": [(wall, top1)]}


def run_usb(seed: int, budget: str, out: Path) -> dict | str:
    """USB's FixMatch through the peer harness, or why it cannot run here."""
    if not PEER_PYTHON.exists() or not (PEER / "train_usb.py").exists():
        return f"the USB peer is not set up ({PEER_PYTHON} missing): bash {PEER / 'setup.sh'}, then prep_data.py"
    data = Path(os.environ.get("USB_WORK", Path.home() / ".cache" / "peers-usb")) / "fmnist.npz"
    if not data.exists():
        return f"the USB peer's data is not prepared ({data} missing): {PEER_PYTHON} {PEER / 'prep_data.py'}"
    name = f"bench_{budget}_s{seed}"
    args = [str(PEER_PYTHON), "train_usb.py", "--alg", "fixmatch", "--net", "small_cnn_d32", "--budget",
            str(int(seconds_of(budget))), "--seed", str(seed), "--name", name]
    started = time.perf_counter()
    done = subprocess.run(args, cwd=PEER, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return f"USB exited {done.returncode}: {done.stderr[-500:]}"
    runs = [p for p in (PEER / "runs" / name, Path.home() / ".cache" / "peers-usb" / "runs" / name) if p.exists()]
    lines = [json.loads(line) for line in (runs[0] / "curve.jsonl").read_text().splitlines()]
    curve = [(r["t_s"], 100.0 * r["raw_top1"]) for r in lines]  # USB records fractions; the table is in percent
    summary = json.loads((runs[0] / "summary.json").read_text()) if (runs[0] / "summary.json").exists() else {}
    return {"final": curve[-1][1], "best": max(t for _, t in curve), "wall_s": wall,
            "img_s": summary.get("train_images_per_s"), "steps": lines[-1].get("step"), "curve": curve}


def recorded(results: Path) -> list[dict]:
    return [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Fashion-MNIST, 10 labels per class, 10,000 test images: FINAL test top-1 (mean / min over "
                        "seeds); 'best seen' is the highest test top-1 during training (chosen by the test split)")
    for column in ("entry", "budget", "seeds", "final mean", "final min", "best seen (test)", "wall s", "img/s"):
        table.add_column(column, no_wrap=column in ("entry", "budget", "seeds"))
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["entry"], row["budget"]), []).append(row)
    for (entry, budget), runs in groups.items():
        finals = [r["final"] for r in runs]
        speeds = [r["img_s"] for r in runs if r.get("img_s")]
        table.add_row(entry, budget, ",".join(str(r["seed"]) for r in runs), f"{statistics.mean(finals):.2f}",
                      f"{min(finals):.2f}", f"{statistics.mean(r['best'] for r in runs):.2f}",
                      f"{statistics.mean(r['wall_s'] for r in runs):.0f}",
                      f"{statistics.mean(speeds):.0f}" if speeds else "-")
    Console(width=None if sys.stdout.isatty() else 132).print(table)  # a log file gets whole entry names


def draw(rows: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for row in rows:
        times, accuracies = zip(*row["curve"])
        axes.plot([t / 60 for t in times], accuracies, marker="o", label=f"{row['entry']} s{row['seed']} {row['budget']}")
    axes.set_xlabel("wall time (minutes)")
    axes.set_ylabel("test top-1 (%)")
    axes.set_title("Fashion-MNIST, 10 labels per class")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", default="30m")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--entries", nargs="+", default=list(ENTRIES), choices=ENTRIES)
    parser.add_argument("--results", type=Path, default=ROOT / "runs" / "small_images" / "results.jsonl")
    parser.add_argument("--png", type=Path, default=ROOT / "runs" / "small_images" / "accuracy_vs_time.png")
    parser.add_argument("--folder", type=Path, default=ROOT / "runs" / "small_images" / "fashion_mnist_png",
                        help="where the *_folder entries' PNG ImageFolder is written (once, about 60 MB)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="recipe override for semiclust runs")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if not args.table_only and not (FMNIST.is_dir() or any("data.options" in s for s in args.sets)):
        raise SystemExit(f"Fashion-MNIST is not at {FMNIST}: apt-get install dataset-fashion-mnist, or pass "
                         "--set data.options.root=DIR")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    label = args.budget + ("" if not args.sets else " " + " ".join(args.sets))
    for seed in ([] if args.table_only else args.seeds):
        for entry in args.entries:
            if any(r["entry"] == entry and r["seed"] == seed and r["budget"] == label for r in recorded(args.results)):
                continue
            out = args.results.parent / f"{entry}_{args.budget}_s{seed}"
            if entry == "logreg":
                row = run_logreg(seed)
            elif entry == "usb":
                row = run_usb(seed, args.budget, out)
            else:
                row = run_semiclust(entry, seed, args.budget, out, args.sets, args.folder)
            if isinstance(row, str):
                print(f"usb skipped: {row}", flush=True)
                continue
            row.update(entry=entry, seed=seed, budget=label)
            with args.results.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(f"{entry} seed {seed} {label}: final {row['final']:.2f}%, {row['wall_s']:.0f} s", flush=True)
    rows = recorded(args.results)
    print_table(rows)
    if rows:
        draw(rows, args.png)
        print(f"accuracy against wall time: {args.png}")


if __name__ == "__main__":
    main()
