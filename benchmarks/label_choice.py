"""Which 100 images to label: `semiclust label suggest` against random picks, on Fashion-MNIST.

    apt-get install dataset-fashion-mnist                  # the idx files, in /usr/share/datasets/fashion-mnist
    python benchmarks/label_choice.py                      # seeds 0-2, suggest 10m + training 30m: about 13 hours
    python benchmarks/label_choice.py --seeds 0            # seed 0 of every entry first (~4.3 h)
    python benchmarks/label_choice.py --budget 2m --suggest-budget 1m --seeds 0   # a smoke pass (~20 min)
    python benchmarks/label_choice.py --table-only         # print the tables of what is recorded
    python benchmarks/label_choice.py --probe              # the rule's quick check on the digits (~5 min)

The labeler is simulated: the true labels of the chosen images. Per seed, one selection: `semiclust label suggest
--dataset fashion_mnist --n 100 --budget SUGGEST_BUDGET --seed S` (a SwAV run on the 60,000 training images without
their labels, with the shipped Fashion-MNIST recipes' network so that they can start from it, then the TypiClust
picks; its wall time is reported apart). Then each entry trains `recipes/fashion_mnist_{suave,daino}.yaml` with the
same --budget and seed, on 100 labels:
- suggest: the 100 suggested images, starting from the suggestion run's weights (Suave: backbone + head, SwAV's
  head; Daino: the backbone), as `recipe init --labels` writes it for a folder;
- random_warm: 100 images drawn uniformly at random (not class-balanced), from the same weights: what the choice
  itself is worth, with the self-supervised minutes spent alike;
- random: the same 100 random images, from random weights (a user who labels a random sample);
- balanced: 10 per class drawn at random (today's protocol: it needs the labels a user does not have), from random
  weights.
In-memory datasets name the suggested images by their training index: the list becomes `data.labels.list`.

Every finished selection and run is appended to --results (JSON lines) and skipped when asked again. The tables give
the selection's time and class histogram per seed, then per entry, method and budget the FINAL test top-1 (mean and
min over the seeds recorded), the chosen labels' class histogram (the fewest and most labels of a class) and wall
time; --markdown prints the training table as Markdown (docs/benchmarks.md).

--probe measures the choice alone, without a training run per choice: on scikit-learn's digits, a suggestion run
per seed (`digits_swav`'s network, crops and batch, --probe-epochs epochs rather than a budget, so that a busy
machine changes its time and not its result), then for 10, 20 and 50 labels the suggested, the random and the
class-balanced random images' labels train a logistic regression on the run's head embeddings; its test top-1
(mean / min over the seeds) says how much each choice of labels is worth to the same features (docs/labeling.md).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from small_images import FMNIST, ROOT, eval_curve, recorded

ENTRIES = ("suggest", "random_warm", "random", "balanced")
METHODS = ("suave", "daino")
LABELS = 100
WARM = {"suggest", "random_warm"}


def shipped_backbone() -> str:
    """The shipped Fashion-MNIST recipes' backbone as a --set value: the suggestion run uses it, so that both
    methods' recipes can start from the run's weights."""
    import yaml

    recipe = yaml.safe_load((ROOT / "recipes" / "fashion_mnist_suave.yaml").read_text())
    return "model.backbone=" + json.dumps(recipe["model"]["backbone"])


@functools.lru_cache(maxsize=1)
def true_labels():
    """The simulated labeler: the true classes of the 60,000 training images."""
    from semiclust.data.arrays import fashion_mnist

    return fashion_mnist(str(FMNIST)).train.labels.numpy()


def histogram(indices: list[int], labels) -> list[int]:
    """How many of the chosen images each of the 10 classes has."""
    counts = [0] * 10
    for index in indices:
        counts[int(labels[index])] += 1
    return counts


def select(seed: int, suggest_budget: str, folder: Path) -> dict:
    """`semiclust label suggest` for the seed (through the API, in this process): the 100 picks (training indices),
    their true classes' histogram and the time of each part."""
    from semiclust import api

    out, run = folder / f"suggest_{suggest_budget}_s{seed}.csv", folder / f"suggest_{suggest_budget}_s{seed}_run"
    final = run / "checkpoints" / "final.pt"
    where = {"checkpoint": final} if final.is_file() else {"registered": ("fashion_mnist", FMNIST), "run_dir": run}
    started = time.time()
    suggestion = api.suggest_labels(LABELS, out, budget=suggest_budget, seed=seed, force=True, started=started,
                                    overrides=[shipped_backbone(), "runtime.progress=none"], **where)
    wall = time.time() - started
    print(f"selection seed {seed}: {wall:.0f} s ({suggestion.seconds}), rule {suggestion.rule}", flush=True)
    return {"kind": "selection", "seed": seed, "suggest_budget": suggest_budget, "wall_s": wall,
            "seconds": suggestion.seconds, "indices": suggestion.indices,
            "histogram": histogram(suggestion.indices, true_labels()), "checkpoint": str(final),
            "retrained": suggestion.trained}


def random_picks(seed: int) -> list[int]:
    """100 training images drawn uniformly at random for the seed (not class-balanced)."""
    import numpy as np

    return sorted(np.random.default_rng(seed).choice(60_000, LABELS, replace=False).tolist())


def train_entry(entry: str, method: str, seed: int, budget: str, selection: dict | None, folder: Path,
                sets: list[str]) -> dict:
    """One training run of an entry: its labels as a list file (or the per-class draw), its start, the result."""
    out = folder / f"{entry}_{method}_{budget}_s{seed}"
    extra = []
    if entry == "balanced":
        indices = None
        extra += ["--set", f"data.labels={{per_class: {LABELS // 10}}}"]
    else:
        indices = selection["indices"] if entry == "suggest" else random_picks(seed)
        listed = folder / f"labels_{entry}_s{seed}.txt"
        listed.write_text("".join(f"{i}\n" for i in indices))
        extra += ["--set", f"data.labels={{list: {listed}}}"]
    if entry in WARM:
        what = "backbone_head" if method == "suave" else "backbone"  # the suggestion run is SwAV: Suave shares its head
        extra += ["--set", f"model.init={{path: {selection['checkpoint']}, format: semiclust, what: {what}}}"]
    args = [sys.executable, "-m", "semiclust", "train", f"fashion_mnist_{method}", "--out", str(out), "--overwrite",
            "--budget", budget, "--set", f"seed={seed}", "--set", "runtime.progress=none", *extra]
    for item in sets:
        args += ["--set", item]
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{entry} {method} seed {seed} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    import torch

    final = torch.load(out / "checkpoints" / "final.pt", weights_only=True, map_location="cpu")
    chosen = indices if indices is not None else json.loads((out / "labeled_subset.json").read_text())["indices"]
    curve, speed = eval_curve(out)
    return {"kind": "train", "final": final["eval"]["top1"], "best": max([t for _, t in curve] + [final["eval"]["top1"]]),
            "wall_s": wall, "img_s": speed, "steps": final["step"], "histogram": histogram(chosen, true_labels())}


def print_tables(rows: list[dict], markdown: bool) -> None:
    """The selections (time, histogram) and the training runs (final top-1 mean / min per entry, method, budget)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    selections = Table(title="Selections (`semiclust label suggest`, 100 images): time apart from training, and the "
                             "true classes of the chosen images")
    for column in ("seed", "suggest budget", "self-supervised s", "features s", "selection s", "command wall s",
                   "class histogram"):
        selections.add_column(column)
    for row in (r for r in rows if r["kind"] == "selection"):
        s = row["seconds"]
        selections.add_row(str(row["seed"]), row["suggest_budget"], f"{s.get('self_supervised_s', 0):.0f}",
                           f"{s.get('features_s', 0):.1f}", f"{s.get('selection_s', 0):.1f}", f"{row['wall_s']:.0f}",
                           " ".join(map(str, row["histogram"])))
    console.print(selections)
    groups: dict[tuple, list[dict]] = {}
    for row in (r for r in rows if r["kind"] == "train"):
        groups.setdefault((row["entry"], row["method"], row["budget"]), []).append(row)
    header = ("entry", "method", "budget", "seeds", "final mean", "final min", "labels per class (min-max)", "wall s")
    lines = []
    for (entry, method, budget), runs in groups.items():
        finals = [r["final"] for r in runs]
        spread = f"{min(min(r['histogram']) for r in runs)}-{max(max(r['histogram']) for r in runs)}"
        lines.append((entry, method, budget, ",".join(str(r["seed"]) for r in runs), f"{statistics.mean(finals):.2f}",
                      f"{min(finals):.2f}", spread, f"{statistics.mean(r['wall_s'] for r in runs):.0f}"))
    table = Table(title="Fashion-MNIST, 100 labels, 10,000 test images: FINAL test top-1 (mean / min over seeds)")
    for column in header:
        table.add_column(column, no_wrap=True)
    for line in lines:
        table.add_row(*line)
    console.print(table)
    if markdown:
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for line in lines:
            print("| " + " | ".join(line) + " |")


def embeddings(checkpoint: Path, split) -> "np.ndarray":
    """The unit-length head embeddings of a split's centre views through a checkpoint's network."""
    import numpy as np
    import torch

    from semiclust.data.eval_views import EvalViews
    from semiclust.engine.checkpoint import classifier_network, load_checkpoint

    state = load_checkpoint(checkpoint)
    network, recipe = classifier_network(state)
    network.eval()
    views = EvalViews(split, recipe.data.eval, state.mean, state.std, 512, torch.device("cpu"))
    with torch.no_grad():
        rows = [torch.nn.functional.normalize(network.head(network.backbone(images)), dim=1) for images, _ in views]
    return np.concatenate([r.numpy() for r in rows])


def probe_sets(epochs: int) -> list[str]:
    """The digits suggestion runs' overrides: `digits_swav`'s crops, batch, network and warm-up, a fixed number of
    epochs (with the batch of 256 that `recipe init` gives the digits, 60 epochs are 300 steps, and SwAV had not left
    its uniform start: loss ln 30 = 3.40 throughout)."""
    import yaml

    recipe = yaml.safe_load((ROOT / "recipes" / "digits_swav.yaml").read_text())
    data, model = recipe["data"], recipe["model"]
    return ["schedule.budget=null", f"schedule.epochs={epochs}", "runtime.progress=none",
            f"schedule.warmup_epochs={recipe['schedule']['warmup_epochs']}", "data.batch=" + json.dumps(data["batch"]),
            "data.unlabeled=" + json.dumps(data["unlabeled"]), "data.labeled=" + json.dumps(data["labeled"]),
            "data.eval=" + json.dumps(data["eval"]), "model.backbone=" + json.dumps(model["backbone"]),
            "model.head=" + json.dumps(model["head"])]


def probe(seeds: list[int], epochs: int, folder: Path) -> None:
    """The choice's worth on the digits, by a logistic regression on fixed features (module docstring)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from semiclust import api
    from semiclust.data.datasets import digits

    data = digits()
    train_y, test_y = data.train.labels.numpy(), data.test.labels.numpy()
    scores: dict[tuple[int, str], list[float]] = {}
    for seed in seeds:
        run = folder / f"probe_digits_{epochs}ep_s{seed}"
        final = run / "checkpoints" / "final.pt"
        if not final.is_file():
            api.suggest_labels(10, folder / "probe.csv", registered=("digits", None), seed=seed, run_dir=run,
                               force=True, overrides=probe_sets(epochs))
        train_x, test_x = embeddings(final, data.train), embeddings(final, data.test)
        rng = np.random.default_rng(seed)
        for n in (10, 20, 50):
            chosen = {"suggest": api.suggest_labels(n, folder / "probe.csv", checkpoint=final, seed=seed,
                                                    force=True).indices,
                      "random, class-balanced": np.concatenate([rng.choice(np.flatnonzero(train_y == c), n // 10,
                                                                           replace=False) for c in range(10)]),
                      "random": rng.choice(len(train_y), n, replace=False)}
            for entry, rows in chosen.items():
                rows = np.asarray(rows)
                model = LogisticRegression(max_iter=3000, C=10).fit(train_x[rows], train_y[rows])
                scores.setdefault((n, entry), []).append(100 * float((model.predict(test_x) == test_y).mean()))
    print("| labels | entry | top-1 mean | top-1 min | seeds " + " / ".join(map(str, seeds)) + " |\n|---|---|---|---|---|")
    for (n, entry), values in scores.items():
        print(f"| {n} | {entry} | {statistics.mean(values):.1f} | {min(values):.1f} | "
              + " / ".join(f"{v:.1f}" for v in values) + " |")
    for seed in seeds:  # whether each run left SwAV's uniform start (ln 30 = 3.40): if not, its features are random
        lines = (folder / f"probe_digits_{epochs}ep_s{seed}" / "metrics.jsonl").read_text().splitlines()
        last = [json.loads(line) for line in lines if '"train"' in line][-1]
        print(f"seed {seed}: the suggestion run's last loss {last['loss']:.2f} at step {last['step']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", default="30m", help="each training run's budget")
    parser.add_argument("--suggest-budget", default="10m", help="the suggestion run's budget")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--entries", nargs="+", default=list(ENTRIES), choices=ENTRIES)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--results", type=Path, default=ROOT / "runs" / "label_choice" / "results.jsonl")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="recipe override for the training runs")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="also print the training table as Markdown")
    parser.add_argument("--probe", action="store_true", help="only the quick check of the rule on the digits")
    parser.add_argument("--probe-epochs", type=int, default=60, help="the digits suggestion runs' epochs (--probe)")
    args = parser.parse_args()
    if args.probe:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        return probe(args.seeds, args.probe_epochs, args.results.parent)
    if not args.table_only and not FMNIST.is_dir():
        raise SystemExit(f"Fashion-MNIST is not at {FMNIST}: apt-get install dataset-fashion-mnist")
    folder = args.results.parent
    folder.mkdir(parents=True, exist_ok=True)
    label = args.budget + ("" if not args.sets else " " + " ".join(args.sets))
    for seed in ([] if args.table_only else args.seeds):
        selection = None
        if any(entry in ("suggest", "random_warm") for entry in args.entries):
            selection = next((r for r in recorded(args.results) if r["kind"] == "selection" and r["seed"] == seed
                              and r["suggest_budget"] == args.suggest_budget), None)
            if selection is None:
                selection = select(seed, args.suggest_budget, folder)
                with args.results.open("a") as handle:
                    handle.write(json.dumps(selection) + "\n")
        for entry in args.entries:
            for method in args.methods:
                budget = label + (f" after suggest {args.suggest_budget}" if entry in WARM else "")
                if any(r["kind"] == "train" and r["entry"] == entry and r["method"] == method and r["seed"] == seed
                       and r["budget"] == budget for r in recorded(args.results)):
                    continue
                row = train_entry(entry, method, seed, args.budget, selection, folder, args.sets)
                row.update(entry=entry, method=method, seed=seed, budget=budget)
                with args.results.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(f"{entry} {method} seed {seed} {budget}: final {row['final']:.2f}%, {row['wall_s']:.0f} s, "
                      f"histogram {row['histogram']}", flush=True)
    print_tables(recorded(args.results), args.markdown)


if __name__ == "__main__":
    main()
