"""Long-tailed training sets: uniform vs prior-aware assignment, for Suave and Daino, over seeds.

    python benchmarks/long_tailed.py                                   # digits, ratios 1 10 100, 3 seeds
    python benchmarks/long_tailed.py --seeds 0 --ratios 10 --methods suave
    python benchmarks/long_tailed.py --dataset fashion_mnist --option root=/usr/share/datasets/fashion-mnist \\
        --recipe suave=my_fmnist_suave.yaml --recipe daino=my_fmnist_daino.yaml

Sinkhorn's equipartition and DINO's centering push the unlabeled targets towards uniform classes; real
data sets are imbalanced. For each imbalance ratio r the training split keeps, of class k (classes in
index order, k = 0..K-1), round(n_max * r^(-k / (K-1))) images (a fixed draw, the same for every run and
seed), so class 0 has r times the images of class K-1; the labeled subset is drawn in proportion
(`data.labels.fraction`, at least one image per class); the test split is balanced (each class cut to
the smallest class's count). Ratio 1 is the balanced case (every image).

Each run trains the method's recipe (digits: recipes/digits_suave.yaml, digits_daino.yaml) for a fixed
number of optimiser steps (--steps; the epochs follow from the smaller training set) with
`method.assignment.prior` uniform (the release), labeled (the labeled subset's class frequencies) and
estimated (online, from the model's own predictions). Printed per method, ratio and prior: the FINAL
test top-1 (mean and min over seeds; on a balanced test set top-1 is the mean per-class recall), the
mean recall of the rarer half of the classes and of the rarest class. Runs go to a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from machine import cpu_model  # benchmarks/machine.py (scripts run from their folder)
from semiclust import api
from semiclust.data.datasets import Dataset, split_rows
from semiclust.engine.trainer import train
from semiclust.config.loader import load_recipe
from semiclust.registry import DATASETS

PRIORS = ("uniform", "labeled", "estimated")
DIGITS_RECIPES = {"suave": "digits_suave", "daino": "digits_daino"}


def tail_counts(counts: list[int], ratio: float) -> list[int]:
    """Images kept per class: n_max * ratio^(-k / (K-1)), never more than the class has, at least 1."""
    largest, last = max(counts), len(counts) - 1
    return [max(1, min(c, round(largest * ratio ** (-k / last)))) for k, c in enumerate(counts)]


def keep_per_class(labels: torch.Tensor, keep: list[int], seed: int) -> torch.Tensor:
    """Sorted indices of `keep[k]` images of each class k, drawn by a generator of `seed`."""
    generator, chosen = torch.Generator().manual_seed(seed), []
    for k, n in enumerate(keep):
        members = (labels == k).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:n]])
    return torch.cat(chosen).sort().values


@DATASETS.register("long_tailed")
def long_tailed(base: str = "digits", ratio: float = 10.0, base_options: dict | None = None) -> Dataset:
    """`base` with a long-tailed training split of imbalance `ratio` and a balanced test split."""
    data = DATASETS.get(base)(**(base_options or {}))
    labels = data.train.labels
    counts = torch.bincount(labels[labels >= 0], minlength=data.num_classes).tolist()
    train_rows = keep_per_class(labels, tail_counts(counts, ratio), seed=1234)
    test_counts = torch.bincount(data.test.labels, minlength=data.num_classes).tolist()
    test_rows = keep_per_class(data.test.labels, [min(test_counts)] * data.num_classes, seed=4321)
    return Dataset(f"{data.name} long-tailed x{ratio:g}", split_rows(data.train, train_rows),
                   split_rows(data.test, test_rows), data.classes, data.mean, data.std)


@dataclass
class Outcome:
    top1: float
    tail_recall: float  # mean recall of the rarer half of the classes
    rarest_recall: float
    seconds: float


def overrides_for(dataset: str, options: dict, ratio: float, seed: int, prior: str, steps: int,
                  train_images: int, batch: int, fraction: float) -> list[str]:
    epochs = max(1, math.ceil(steps / max(1, train_images // batch)))
    return ["data.dataset=long_tailed", "data.options=" + json.dumps({"base": dataset, "ratio": ratio,
                                                                         "base_options": options}),
            f"data.labels={json.dumps({'fraction': fraction})}", f"seed={seed}", f"schedule.epochs={epochs}",
            f"method.assignment.prior={prior}", "eval.every_epochs=0", "checkpoint.every_epochs=0",
            "runtime.progress=none"]


def fit_labeled_batch(recipe_name: str, sets: list[str], dataset: Dataset, fraction: float) -> list[str]:
    """Cut the labeled batch to the labeled subset when the long tail leaves fewer labeled images than it."""
    per_class = torch.bincount(dataset.train.labels, minlength=dataset.num_classes).tolist()
    labeled = sum(max(1, math.floor(fraction * c)) for c in per_class)
    batch = load_recipe(recipe_name, sets).data.batch.labeled
    return sets + ([f"data.batch.labeled={labeled}"] if batch > labeled else [])


def one_run(recipe_name: str, sets: list[str], out: Path) -> Outcome:
    started = time.perf_counter()
    summary = train(load_recipe(recipe_name, sets), out, console=Console(quiet=True))
    seconds = time.perf_counter() - started
    report = api.evaluate(summary.checkpoint, write_confusion=False, knn=0).report
    recall = report.per_class.tolist()
    rare = recall[len(recall) // 2:]
    return Outcome(summary.result.top1, statistics.mean(rare), recall[-1], seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--option", action="append", default=[], help="KEY=VALUE of data.options of the base set")
    parser.add_argument("--recipe", action="append", default=[], help="METHOD=RECIPE (digits recipes by default)")
    parser.add_argument("--methods", nargs="+", default=["suave", "daino"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[1, 10, 100])
    parser.add_argument("--priors", nargs="+", default=list(PRIORS), choices=PRIORS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400, help="optimiser steps per run")
    parser.add_argument("--fraction", type=float, default=0.05, help="labeled fraction of each class")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="recipe override for every run")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    options = dict(o.split("=", 1) for o in args.option)
    recipes = {**DIGITS_RECIPES, **dict(r.split("=", 1) for r in args.recipe)}
    console = Console()
    console.print(f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
                  f"{args.dataset}, {args.steps} steps per run, labeled fraction {args.fraction}")
    results: dict[tuple, list[Outcome]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for method in args.methods:
            for ratio in args.ratios:
                data = long_tailed(args.dataset, ratio, options)
                sizes = torch.bincount(data.train.labels, minlength=data.num_classes).tolist()
                console.print(f"{method} ratio {ratio:g}: {len(data.train)} training images per class {sizes}, "
                              f"{len(data.test)} test")
                for prior in args.priors:
                    for seed in args.seeds:
                        batch = load_recipe(recipes[method], args.sets).data.batch.unlabeled
                        sets = args.sets + overrides_for(args.dataset, options, ratio, seed, prior, args.steps,
                                                         len(data.train), batch, args.fraction)
                        sets = fit_labeled_batch(recipes[method], sets, data, args.fraction)
                        run = Path(scratch) / f"{method}_{ratio:g}_{prior}_{seed}"
                        outcome = one_run(recipes[method], sets, run)
                        results.setdefault((method, ratio, prior), []).append(outcome)
                        console.print(f"  {prior:9s} seed {seed}: top-1 {outcome.top1:.2f}%  rare-half recall "
                                      f"{outcome.tail_recall:.1f}%  rarest {outcome.rarest_recall:.1f}%  "
                                      f"({outcome.seconds:.0f} s)")
    console.print(table(results, len(args.seeds)))


def table(results: dict[tuple, list[Outcome]], seeds: int) -> Table:
    out = Table(title=f"final test top-1 (balanced test set), {seeds} seed(s): mean / min; recalls are means")
    for column in ("method", "ratio", "prior", "top-1 mean", "top-1 min", "rare-half recall", "rarest recall",
                   "vs uniform"):
        out.add_column(column, justify="right" if column not in ("method", "prior") else "left")
    for (method, ratio, prior), runs in results.items():
        mean = statistics.mean(r.top1 for r in runs)
        uniform = results.get((method, ratio, "uniform"))
        delta = "" if prior == "uniform" or not uniform else f"{mean - statistics.mean(r.top1 for r in uniform):+.2f}"
        out.add_row(method, f"{ratio:g}", prior, f"{mean:.2f}", f"{min(r.top1 for r in runs):.2f}",
                    f"{statistics.mean(r.tail_recall for r in runs):.1f}",
                    f"{statistics.mean(r.rarest_recall for r in runs):.1f}", delta)
    return out


if __name__ == "__main__":
    main()
