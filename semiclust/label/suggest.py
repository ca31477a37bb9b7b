"""`semiclust label suggest`: which images of a folder to label, and in what order.

The story: check the outputs (before any work) -> without a checkpoint, a self-supervised run (SwAV or DINO) on the
images, its recipe written by `recipe init`'s logic inside the budget, kept for the warm start -> one pass of the
run's network over every image -> the picks (label/select.py: typical images of the least-labeled clusters after a
self-supervised run; the classifier's most hesitant typical images after a Suave / Daino run) -> the list to label
(CSV), and the contact sheet to label from (HTML and PNG).
"""
from __future__ import annotations

import json
import math
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from rich.console import Console

from semiclust.data.datasets import Dataset, ImageSplit, build_dataset
from semiclust.data.decode import UnreadableImage, decode_rgb, printable
from semiclust.data.pool import POOL
from semiclust.engine import dist
from semiclust.engine.device import resolve_device
from semiclust.engine.trainer import train
from semiclust.errors import SemiclustError
from semiclust.label.features import (Advance, Features, RunImages, already_labeled, data_places, image_features,
                                      listed_rows, open_run, refuse_other_data)
from semiclust.label.lists import Provenance, relative_path, render_list
from semiclust.label.select import Picks, typical_picks, uncertain_picks
from semiclust.label.sheet import SheetItem, write_sheet
from semiclust.config.loader import apply_overrides, resolve
from semiclust.config.init import fitted_recipe
from semiclust.config.schema import Recipe
from semiclust.storage.atomic import check_writable, write_text

CLUSTERS = 30  # the suggestion run's prototypes (data.options.clusters; --set changes it)
METHODS = ("swav", "dino")
RULES = {"typical": "the most typical image (highest density among its neighbours) of each of the least-labeled "
                    "k-means clusters of the self-supervised features (TypiClust)",
         "uncertain": "in each of the least-labeled k-means clusters, the image with the smallest margin between its "
                      "two most probable classes, among the cluster's more typical half"}


@dataclass
class Outputs:
    """The files a suggestion writes: the list, and the contact sheet as HTML and PNG beside it."""

    csv: Path
    html: Path
    png: Path

    @classmethod
    def of(cls, out: Path) -> "Outputs":
        """The list at `out` and the sheet beside it (the same name, .html and .png)."""
        if out.suffix.lower() in (".html", ".png"):
            raise SemiclustError(f"--out '{out}' names the contact sheet; give the CSV to write (e.g. to_label.csv): "
                                 "the sheet is written beside it as .html and .png.")
        return cls(out, out.with_suffix(".html"), out.with_suffix(".png"))

    def check(self, force: bool) -> None:
        """Refuse, before any work, outputs that exist (without `force`) or cannot be written."""
        existing = [str(p) for p in (self.csv, self.html, self.png) if p.is_symlink() or p.exists()]
        if existing and not force:
            raise SemiclustError(f"{', '.join(existing)} already exist(s), and `semiclust label suggest` does not replace "
                                 "files unasked: give another path with --out, or add --force to replace them.")
        for path in (self.csv, self.html, self.png):
            check_writable(path, "--out", "Give --out a path in a folder you can write to.")


@dataclass
class Suggestion:
    """What `suggest` did: the picks in order (training indices), the written files, the rule, the run, timings."""

    indices: list[int]
    shown: list[str]
    clusters: list[int]
    scores: list[float]
    outputs: Outputs
    rule: str
    checkpoint: Path
    pool_size: int
    labeled_before: int
    unreadable: int
    seconds: dict[str, float] = field(default_factory=dict)
    trained: bool = False
    notes: list[str] = field(default_factory=list)
    indexed: bool = False  # the names are training indices (an in-memory dataset), not file paths


def pool_options(data: Path | None, registered: tuple[str, Path | None] | None) -> dict:
    """The `pool` dataset's options for a folder or a registered dataset (--data or --dataset with --root)."""
    if (data is None) == (registered is None):
        raise SemiclustError("give either --data FOLDER (your images, any layout) or --dataset NAME (a registered "
                             "dataset, with --root for its files), not both or neither; or --checkpoint RUN to choose "
                             "among the images of a run.")
    if data is not None:
        return {"root": os.path.realpath(Path(data).expanduser()), "clusters": CLUSTERS}
    name, root = registered
    inner = {"root": os.path.realpath(Path(root).expanduser())} if root is not None else {}
    return {"dataset": name, "options": inner, "clusters": CLUSTERS}


def refuse_small_pool(dataset: Dataset, n: int, where: str) -> None:
    """An empty folder, or fewer images than asked for, is one paragraph before any training."""
    if dataset.problems:
        raise SemiclustError(f"{dataset.problems[0]}.")
    if n > len(dataset.train):
        raise SemiclustError(f"--n {n} is more than the {len(dataset.train):,} images of {where}; ask for at most "
                             f"{len(dataset.train):,}.")


def suggestion_recipe(options: dict, budget: str, method: str, seed: int, overrides: Sequence[str],
                      name: str) -> Recipe:
    """The self-supervised run's recipe: `recipe init`'s choices for the pool (crops, width timed to the budget,
    the method's defaults), the seed, then the --set overrides."""
    if method not in METHODS:
        raise SemiclustError(f"--method must be swav or dino for the self-supervised run, not '{method}'.")
    fitted = fitted_recipe(POOL, options, budget, method, name=name, seed=seed, where="the pool")
    if not overrides:
        return fitted.recipe
    return resolve(apply_overrides(fitted.recipe.model_dump(mode="json"), list(overrides)), "the suggestion run's "
                   "recipe with --set")


def self_supervised_run(options: dict, n: int, budget: str, method: str, seed: int, overrides: Sequence[str],
                        run_dir: Path | None, console: Console | None, started: float | None) -> Path:
    """Train the suggestion run (its folder kept: the warm start reads it) and return its final checkpoint."""
    dataset = build_dataset(POOL, options)
    refuse_small_pool(dataset, n, f"'{printable(options['root'])}'" if "root" in options else options["dataset"])
    slug = Path(options["root"]).name if "root" in options else options["dataset"]
    name = f"suggest_{slug}_{method}"
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / name
    if (run_dir / "checkpoints" / "final.pt").is_file():
        raise SemiclustError(f"'{run_dir}' already holds a finished run; choose from it without training with "
                             f"--checkpoint {shlex.quote(str(run_dir))}, or give another --run folder.")
    recipe = suggestion_recipe(options, budget, method, seed, overrides, name)
    hint = shlex.join(["semiclust", "train", str(run_dir / "recipe.yaml"), "--out", str(run_dir), "--resume"])
    try:
        summary = train(recipe, run_dir, console, resume_hint=hint, started=started)
    except BaseException:
        dist.shutdown(together=False)  # as api.train: a failed run does not wait for other processes
        raise
    dist.shutdown()
    return summary.checkpoint


def excluded_rows(run: RunImages, exclude: Path | None) -> tuple[np.ndarray, list[str]]:
    """Training images that must not be picked: labeled in the run, or named in the --exclude list; and a note on
    the list's entries that are none of the run's images."""
    labeled = already_labeled(run)
    notes = []
    if exclude is not None:
        rows, unknown = listed_rows(run.dataset.train, Path(exclude))
        labeled[rows] = True
        if unknown:
            notes.append(f"{len(unknown)} entr{'y' if len(unknown) == 1 else 'ies'} of '{exclude}' name no image of "
                         f"this run (e.g. '{unknown[0]}'); they were ignored")
    return labeled, notes


UNLEARNED = 0.95  # a self-supervised loss still above this share of ln K has not left its uniform start


def unlearned_note(run: RunImages) -> str | None:
    """A note when a self-supervised run's last training loss is still near ln K, the loss of uniform predictions
    over its K prototypes: its features are then close to the random start's, and so are the picks."""
    if run.recipe.method.name != "swav":  # DINO's sharpened targets put its start elsewhere
        return None
    metrics = run.checkpoint.parent.parent / "metrics.jsonl"
    losses = []
    for line in metrics.read_text(errors="replace").splitlines() if metrics.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("type") == "train" and isinstance(record.get("loss"), (int, float)):
            losses.append(float(record["loss"]))
    prototypes = run.state.classifier.num_classes
    uniform = math.log(prototypes)
    if not losses or losses[-1] < UNLEARNED * uniform:
        return None
    return (f"the self-supervised run's last loss is {losses[-1]:.2f}, still near {uniform:.2f} (ln of its "
            f"{prototypes} prototypes: uniform predictions), so it has hardly started to "
            "learn and the picks are little better than random ones; give it a longer --budget (or --set "
            "data.batch.unlabeled=128 for more steps)")


def pick(run: RunImages, found: Features, labeled: np.ndarray, n: int, seed: int) -> tuple[str, Picks]:
    """The rule that fits the run (classes: the uncertain rule; clusters: the typical one), applied."""
    excluded = labeled[found.rows]
    available = int((~excluded).sum())
    if n > available:
        raise SemiclustError(f"--n {n} is more than the {available:,} readable images of the run's {len(found.rows):,} "
                             f"that are not labeled or excluded yet; ask for at most {available:,}.")
    if run.trained_with_labels:
        return "uncertain", uncertain_picks(found.features, found.probabilities, n, seed, excluded)
    return "typical", typical_picks(found.features, n, seed, excluded)


def shown_names(run: RunImages, indices: list[int], folder: Path) -> list[str]:
    """Each pick as the list names it: its path relative to the list's folder (bytes that are not UTF-8 as \\xNN
    escapes, as everywhere semiclust shows a name), or its training index (in memory)."""
    split = run.dataset.train
    if isinstance(split, ImageSplit):
        return [str(i) for i in indices]
    return [printable(relative_path(split.path(i), folder)) for i in indices]


def pixels_of(run: RunImages, index: int) -> np.ndarray | None:
    """A pick's pixels for the contact sheet (H x W x 3), None when its file cannot be read."""
    split = run.dataset.train
    if isinstance(split, ImageSplit):
        image = split.images[index]
    else:
        try:
            image = decode_rgb(split.path(index))
        except UnreadableImage:
            return None
    image = image.expand(3, -1, -1) if image.shape[0] == 1 else image
    return image.permute(1, 2, 0).contiguous().numpy()


def write_outputs(run: RunImages, suggestion: Suggestion, picks: Picks, provenance: Provenance) -> None:
    """The CSV in the order to label, then the contact sheet grouped by cluster."""
    outputs = suggestion.outputs
    rule = f"{suggestion.rule}: {RULES[suggestion.rule]}"
    write_text(outputs.csv, render_list(suggestion.shown, provenance, rule))
    split, folder = run.dataset.train, outputs.html.resolve().parent
    in_memory = isinstance(split, ImageSplit)
    items = [SheetItem(rank, cluster, shown, None if in_memory else relative_path(split.path(index), folder), score,
                       pixels_of(run, index))
             for rank, (index, shown, cluster, score) in enumerate(zip(suggestion.indices, suggestion.shown,
                                                                       suggestion.clusters, suggestion.scores), 1)]
    sizes = dict(zip(*np.unique(picks.clusters, return_counts=True)))
    lines = [f"{len(items)} of {suggestion.pool_size:,} images to label, in the order of the numbers (#1 first): "
             f"the rows of {outputs.csv.name}.", f"Rule: {rule}.",
             *(["In-memory dataset: each name is the image's index in the training split."] if in_memory else [])]
    title = f"Images to label: {outputs.csv.name}"
    write_sheet(items, outputs.html, outputs.png, title, lines, {int(k): int(v) for k, v in sizes.items()},
                "typicality" if suggestion.rule == "typical" else "margin")


def suggest(n: int, out: Path, data: Path | None = None, registered: tuple[str, Path | None] | None = None,
            checkpoint: Path | None = None, exclude: Path | None = None, budget: str = "10m", method: str = "swav",
            run_dir: Path | None = None, seed: int = 0, overrides: Sequence[str] = (), force: bool = False,
            device: str = "auto", console: Console | None = None, advance: Advance = lambda done, total: None,
            started: float | None = None) -> Suggestion:
    """n images to label from a folder (a self-supervised run first) or from a run's images (--checkpoint); see the
    module docstring. Every output is checked before any work; the run is kept."""
    if n < 1:
        raise SemiclustError(f"--n must be at least 1, not {n}.")
    outputs = Outputs.of(Path(out))
    outputs.check(force)
    begun = started or time.time()
    trained = checkpoint is None
    if trained:
        checkpoint = self_supervised_run(pool_options(data, registered), n, budget, method, seed, overrides, run_dir,
                                         console, begun)
    seconds = {"self_supervised_s": time.time() - begun} if trained else {}
    run = open_run(checkpoint)
    if not trained:
        refuse_other_data(run, data, registered[0] if registered else None)
    labeled, notes = excluded_rows(run, exclude)
    notes += [note for note in [unlearned_note(run)] if note]
    clock = time.time()
    found = image_features(run, resolve_device(device), advance)
    seconds["features_s"], clock = time.time() - clock, time.time()
    rule, picks = pick(run, found, labeled, n, seed)
    seconds["selection_s"] = time.time() - clock
    indices = found.rows[picks.indices].tolist()
    suggestion = Suggestion(indices, shown_names(run, indices, outputs.csv.resolve().parent), picks.cluster.tolist(),
                            [float(s) for s in picks.score], outputs, rule, run.checkpoint, len(run.dataset.train),
                            int(labeled.sum()), found.unreadable, seconds, trained, notes,
                            isinstance(run.dataset.train, ImageSplit))
    outputs.check(force)  # again: the run took a while, and a file may have appeared meanwhile
    write_outputs(run, suggestion, picks, provenance_of(run, data))
    return suggestion


def provenance_of(run: RunImages, data: Path | None) -> Provenance:
    """What the list records of where it came from: the run, its checkpoint, and the images (the folder, or the
    registered dataset and its root)."""
    origin = Provenance(run.checkpoint.parent.parent.resolve(), run.checkpoint.resolve())
    folders, registered = data_places(run.recipe)
    if isinstance(run.dataset.train, ImageSplit):
        options = run.recipe.data.options
        inner = (options.get("options") or {}) if run.recipe.data.dataset == POOL else options
        origin.dataset, origin.root = registered, Path(inner["root"]) if inner.get("root") else None
    elif data is not None or len(folders) == 1:
        origin.images = Path(os.path.realpath(Path(data).expanduser())) if data is not None else Path(folders[0])
    return origin
