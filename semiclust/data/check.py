"""`semiclust data check`: load the data as a recipe describes and list everything wrong with it.

Counts per class (labeled / unlabeled / eval), the labeled subset's identity, image sizes on a
sample, and problems: missing files, unreadable images, empty classes, labels outside the class
set, overlap between the labeled and evaluation sets. Pure reporting: nothing is written.
"""
from __future__ import annotations

import hashlib
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from semiclust.data.datasets import Dataset, FileSplit, ImageSplit, Split, build_dataset
from semiclust.data.decode import UnreadableImage, image_size, printable
from semiclust.data.loader import find_unreadable
from semiclust.data.readable import remember_readable
from semiclust.data.streams import Stream
from semiclust.data.subsets import LabeledSubset, match_list
from semiclust.engine.setup import draw_subset
from semiclust.errors import SemiclustError, examples
from semiclust.methods import METHODS
from semiclust.config.schema import Recipe


@dataclass
class ClassCounts:
    name: str
    labeled: int
    unlabeled: int
    eval: int


@dataclass
class DataReport:
    dataset: Dataset
    rows: list[ClassCounts]
    unlabeled_only: int  # training images without any label (unlabeled folders, STL-10's unlabeled split)
    subset: LabeledSubset | None
    sizes: str
    decoded: str  # how many files were test-decoded
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _subset_and_problems(dataset: Dataset, recipe: Recipe) -> tuple[LabeledSubset | None, list[str]]:
    """The labeled subset `train` draws (unreadable images passed over, as training does, so that the identity
    printed here is the run's); for a list file, every entry that names nothing is a problem, not an error."""
    spec = recipe.data.labels
    if spec.list is not None:
        match = match_list(spec.list, dataset.train)
        return (match.subset(dataset.train) if len(match.indices) else None), match.problems()
    try:
        return draw_subset(dataset, recipe), []
    except SemiclustError as err:
        return None, [str(err)]


def _label_problems(split: Split | None, what: str, num_classes: int) -> list[str]:
    if split is None:
        return []
    outside = split.labels[(split.labels < -1) | (split.labels >= num_classes)]
    if len(outside) == 0:
        return []
    return [f"{len(outside)} {what} image(s) carry labels outside the class set 0..{num_classes - 1} "
            f"(e.g. {int(outside[0])})"]


def _overlap(dataset: Dataset, subset: LabeledSubset | None) -> list[str]:
    """Labeled images that are also evaluation images: same file (resolved path), or same pixels."""
    if subset is None or dataset.test is None:
        return []
    train, test, indices = dataset.train, dataset.test, subset.indices.tolist()
    if isinstance(train, FileSplit) and isinstance(test, FileSplit):
        labeled = {os.path.realpath(train.path(i)): printable(train.files[i]) for i in indices}
        shared = [labeled[p] for p in map(os.path.realpath, map(test.path, range(len(test)))) if p in labeled]
    elif isinstance(train, ImageSplit) and isinstance(test, ImageSplit):
        def digest(images: torch.Tensor) -> list[str]:
            return [hashlib.sha256(image.contiguous().numpy().tobytes()).hexdigest() for image in images]
        labeled = dict(zip(digest(train.images[torch.tensor(indices)]), map(str, indices)))
        shared = [labeled[d] for start in range(0, len(test), 4096)
                  for d in digest(test.images[start : start + 4096]) if d in labeled]
    else:
        return []
    if not shared:
        return []
    return [f"{len(shared)} labeled training image(s) also appear in the evaluation set (e.g. {shared[0]}): "
            "evaluation would be optimistic; remove them from one of the two"]


def _counts(dataset: Dataset, subset: LabeledSubset | None) -> tuple[list[ClassCounts], int]:
    k = dataset.num_classes
    train_labels = dataset.train.labels
    known = train_labels[(train_labels >= 0) & (train_labels < k)]
    per_class = torch.bincount(known, minlength=k)
    labeled = torch.zeros(k, dtype=torch.long)
    if subset is not None:
        chosen = train_labels[subset.indices]
        labeled = torch.bincount(chosen[(chosen >= 0) & (chosen < k)], minlength=k)
    evaluation = torch.zeros(k, dtype=torch.long)
    if dataset.test is not None:
        test_labels = dataset.test.labels
        evaluation = torch.bincount(test_labels[(test_labels >= 0) & (test_labels < k)], minlength=k)
    rows = [ClassCounts(name, int(labeled[c]), int(per_class[c] - labeled[c]), int(evaluation[c]))
            for c, name in enumerate(dataset.classes)]
    return rows, int((train_labels == -1).sum())


def _sample(count: int, limit: int | None) -> list[int]:
    """Evenly spread indices: all of them, or `limit` of them."""
    if limit is None or count <= limit:
        return list(range(count))
    return sorted({round(i * (count - 1) / max(limit - 1, 1)) for i in range(limit)})


def _sizes(dataset: Dataset, limit: int) -> tuple[str, list[str]]:
    if isinstance(dataset.train, ImageSplit):
        c, h, w = dataset.train.images.shape[1:]
        return f"every image {w} x {h} px, {c} channel(s)", []
    widths, heights, problems = [], [], []
    for split in (dataset.train, dataset.test):
        if not isinstance(split, FileSplit):
            continue
        for i in _sample(len(split), limit // 2):
            try:
                width, height = image_size(split.path(i))
            except UnreadableImage:
                continue  # reported by the decoding pass
            widths.append(width)
            heights.append(height)
    if not widths:
        return "no readable image", problems
    return (f"on {len(widths)} files: width {min(widths)}..{max(widths)} (median {statistics.median(widths):g}), "
            f"height {min(heights)}..{max(heights)} (median {statistics.median(heights):g}) px"), problems


def _unreadable(dataset: Dataset, subset: LabeledSubset | None, recipe: Recipe, limit: int | None,
                advance: Callable[[int, int], None]) -> tuple[str, list[str]]:
    """Decode every labeled image (and those the draw passed over) and a sample (or, with limit None, all) of the
    rest in loader workers."""
    if not isinstance(dataset.train, FileSplit):
        return "in-memory dataset: nothing to decode", []
    labeled = set(subset.indices.tolist()) | set(subset.passed_over) if subset is not None else set()
    splits = [dataset.train, dataset.test]
    jobs = [(0, dataset.train, i) for i in sorted(labeled)]
    jobs += [(0, dataset.train, i) for i in _sample(len(dataset.train), limit) if i not in labeled]
    if isinstance(dataset.test, FileSplit):
        jobs += [(1, dataset.test, i) for i in _sample(len(dataset.test), limit)]
    total = len(dataset.train) + (len(dataset.test) if dataset.test is not None else 0)
    started = time.time_ns()
    bad = find_unreadable(jobs, recipe.data.loader, recipe.data.max_image_pixels, advance)
    remember_readable(dataset.train, [i for n, _, i in jobs if n == 0], {i for n, i, _ in bad if n == 0},
                      recipe.data.max_image_pixels, started)  # so that the next start need not decode them again
    what = "every file"
    if len(jobs) < total:
        what = f"{len(jobs):,} of {total:,} files (all labeled + a sample; --all for every file)"
    return f"decoded {what}", [f"unreadable image '{printable(splits[n].path(i))}': {reason}" for n, i, reason in bad]


def data_report(recipe: Recipe, sample: int | None = 1000,
               advance: Callable[[int, int], None] = lambda done, total: None) -> DataReport:
    """Everything `semiclust data check` prints; `sample` None decodes every file."""
    dataset = build_dataset(recipe.data.dataset, recipe.data.options)
    problems = list(dataset.problems)
    uses_labels = Stream.LABELED in METHODS.get(recipe.method.name).streams  # swav, dino: no labeled subset at all
    subset, subset_problems = _subset_and_problems(dataset, recipe) if uses_labels else (None, [])
    problems += subset_problems
    problems += _label_problems(dataset.train, "training", dataset.num_classes)
    problems += _label_problems(dataset.test, "evaluation", dataset.num_classes)
    rows, unlabeled_only = _counts(dataset, subset)
    if subset is not None:
        empty = [r.name for r in rows if r.labeled == 0]
        if empty:
            problems.append(f"{len(empty)} class(es) have no labeled image in the subset: {examples(empty)}")
    problems += _overlap(dataset, subset)
    sizes, size_problems = _sizes(dataset, sample or 1000)
    decoded, unreadable = _unreadable(dataset, subset, recipe, sample, advance)
    return DataReport(dataset, rows, unlabeled_only, subset, sizes, decoded, problems + size_problems + unreadable)
