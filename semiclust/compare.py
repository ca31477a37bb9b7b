"""`semiclust compare RUN_DIR...`: what a sweep did, side by side. For each run: the recipe keys whose values
differ between the runs, the final and the best top-1 of metrics.jsonl's evaluations, the training time and
the median throughput; and one PNG with the runs' curves overlaid (plot.py)."""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semiclust.engine.metrics import read_metrics_file
from semiclust.engine.run_dir import RunFiles, read_recipe_file
from semiclust.errors import SemiclustError
from semiclust.plot import plot_comparison
from semiclust.config.validation import flat_values


@dataclass
class RunRecord:
    """One run directory as compare sees it: its recipe, metrics.jsonl's records and the figures drawn from them."""

    label: str
    path: Path
    recipe: dict[str, Any] | None  # None: recipe.yaml is damaged (named in `notes`)
    train: list[dict] = field(repr=False)
    evals: list[dict] = field(repr=False)
    finished: bool  # checkpoints/final.pt exists
    notes: list[str] = field(default_factory=list)  # what was wrong with the run's files, and what was left out

    @property
    def final(self) -> dict | None:
        """The last evaluation record (at the end of a finished run: the final evaluation)."""
        return self.evals[-1] if self.evals else None

    @property
    def best(self) -> dict | None:
        """The evaluation with the highest top-1 during training (the earliest of equal ones)."""
        return max(self.evals, key=lambda r: (r["top1"], -r["step"])) if self.evals else None

    @property
    def seconds(self) -> float | None:
        return training_seconds(self.train)

    @property
    def images_per_second(self) -> float | None:
        speeds = [r["img_per_s"] for r in self.train if r.get("img_per_s") is not None]
        return statistics.median(speeds) if speeds else None


def training_seconds(train: list[dict]) -> float | None:
    """Seconds of training over every segment of the run: `elapsed_s` restarts at 0 when a run is resumed, so
    the last value of each segment is added up."""
    if not train:
        return None
    total, last = 0.0, 0.0
    for record in train:
        elapsed = record.get("elapsed_s") or 0.0
        if elapsed < last:
            total += last
        last = elapsed
    return total + last


def read_run(path: Path, label: str) -> RunRecord:
    """A run directory's recipe.yaml and metrics.jsonl, or an error naming what is missing. A damaged recipe.yaml
    leaves the run out of the recipe differences and damaged metrics lines are skipped, each with a note: the
    rest of the run is still worth comparing."""
    files = RunFiles(Path(path))
    if not files.recipe.is_file() or not files.metrics.is_file():
        missing = "recipe.yaml" if not files.recipe.is_file() else "metrics.jsonl"
        raise SemiclustError(f"'{path}' is not a run directory (no {missing}); pass folders that `semiclust train "
                             "--out` wrote.")
    try:
        metrics = read_metrics_file(files.metrics)
    except OSError as err:
        raise SemiclustError(f"run '{label}': '{files.metrics}' cannot be read ({err.strerror or err}); check its "
                             "permissions, or leave the run out.") from None
    recipe, damage = read_recipe_file(files.recipe)
    notes = [metrics.warning()] if metrics.warning() else []
    if recipe is None:
        notes.append(f"run '{label}': '{files.recipe}' {damage}; the run is left out of the recipe differences (its "
                     "metrics are compared)")
    records = metrics.records
    return RunRecord(label, files.root, recipe, [r for r in records if r.get("type") == "train"],
                     [r for r in records if r.get("type") == "eval"], files.final.is_file(), notes)


def recipe_differences(recipes: list[dict[str, Any] | None]) -> dict[str, list[Any]]:
    """The dotted recipe keys whose values are not the same in every recipe, with each recipe's value (None
    where a recipe lacks the key); the run's name is left out, it is the runs' label. An unreadable recipe (None)
    takes no part: its values are None."""
    flat = [None if recipe is None else flat_values({k: v for k, v in recipe.items() if k != "name"})
            for recipe in recipes]
    known = [values for values in flat if values is not None]
    keys = list(dict.fromkeys(key for values in known for key in values))
    return {key: [None if values is None else values.get(key) for values in flat] for key in keys
            if any(values.get(key) != known[0].get(key) for values in known)}


def run_labels(paths: list[Path]) -> list[str]:
    """Short unique names: each folder's name, with as many parent folders as it takes to tell them apart."""
    parts = [Path(os.path.abspath(p)).parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]  # the same folder given twice


@dataclass
class Comparison:
    """`compare_runs`'s result: the runs, the recipe keys that differ between them and the PNG written."""

    runs: list[RunRecord]
    differences: dict[str, list[Any]]
    png: Path
    notes: list[str] = field(default_factory=list)  # damaged run files, and what was left out because of them


def default_png(paths: list[Path]) -> Path:
    """compare.png in the folder that holds all the runs."""
    common = Path(os.path.commonpath([os.path.abspath(p) for p in paths]))
    return (common if len(paths) > 1 else common.parent) / "compare.png"


def compare_runs(paths: list[Path], out: Path | None = None) -> Comparison:
    """Read every run, find the recipe differences and write the PNG of the overlaid curves to `out`
    (default: compare.png beside the runs)."""
    if not paths:
        raise SemiclustError("semiclust compare needs at least one run directory.")
    runs = [read_run(Path(p), label) for p, label in zip(paths, run_labels([Path(p) for p in paths]))]
    png = plot_comparison([(r.label, r.train, r.evals) for r in runs], Path(out) if out else default_png(paths))
    return Comparison(runs, recipe_differences([r.recipe for r in runs]), png, [n for r in runs for n in r.notes])
