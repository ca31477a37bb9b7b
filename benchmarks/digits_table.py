"""Reproduce the README's results table: each digits recipe for seeds 0, 1, 2 (about 15 minutes on 2 cores).

    python benchmarks/digits_table.py [--seeds 0 1 2] [--recipes digits_suave digits_daino digits_supervised]

Prints a Markdown table of top-1 (mean, min, per seed) and training seconds per run, measured on
this machine. Runs go to a temporary folder.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from semiclust.engine.trainer import train
from semiclust.config.loader import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=["digits_suave", "digits_daino", "digits_supervised"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.recipes:
            scores, seconds = [], []
            for seed in args.seeds:
                recipe = load_recipe(name, [f"seed={seed}", "runtime.progress=none", "eval.every_epochs=0"])
                summary = train(recipe, Path(folder) / f"{name}-{seed}")
                scores.append(summary.result.top1)
                seconds.append(summary.seconds)
                print(f"{name} seed {seed}: top-1 {summary.result.top1:.2f}% in {summary.seconds:.0f}s", flush=True)
            rows.append((name, recipe.method.name, scores, seconds))
    machine = platform.processor() or platform.machine()
    print(f"\nmachine: {machine}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| recipe | method | top-1 mean | top-1 min | per seed (" + ", ".join(map(str, args.seeds)) + ") | train s / run |")
    print("|---|---|---|---|---|---|")
    for name, method, scores, seconds in rows:
        per_seed = " / ".join(f"{s:.1f}" for s in scores)
        mean, low, secs = statistics.mean(scores), min(scores), statistics.mean(seconds)
        print(f"| {name} | {method} | {mean:.1f} | {low:.1f} | {per_seed} | {secs:.0f} |")


if __name__ == "__main__":
    main()
