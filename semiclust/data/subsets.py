"""Labeled subsets: k per class, a fraction per class, or a list file; seeded, class-balanced, hashed.

A list names training images by index (in-memory datasets) or by file name (image-file datasets,
e.g. the SimCLR ImageNet 1% / 10% lists, one `n01440764_10026.JPEG` per line). The list file's own
SHA-256 says whether it is one of the canonical SimCLR lists.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from semiclust.data.datasets import UNLABELED, FileSplit, Split
from semiclust.data.decode import file_problem, predicate, printable
from semiclust.data.names import CHUNK, encode
from semiclust.errors import SemiclustError, examples
from semiclust.config.schema import Labels, Validation
from semiclust.storage.atomic import write_text

CANONICAL_LISTS = {
    "71e82a48ba78252683ae334c4d019ebd5c6e855b9599c1389fbe83eb9549cf17": "SimCLR ImageNet 1% list (12,811 images)",
    "6d09de11e7bdaf5b1f3b1f249b6183695f97310cdd20f0c03e7235b6b9392091": "SimCLR ImageNet 10% list (128,116 images)",
}


@dataclass
class LabeledSubset:
    """Indices into the training split that keep their label, and how they were chosen."""

    indices: torch.Tensor
    description: str
    list_sha256: str | None = None  # of the list file, when the subset came from one
    canonical: str | None = None  # the canonical list it matches, if any
    passed_over: dict[int, str] = field(default_factory=dict)  # unreadable images the draw skipped, and why
    files_sha256: str | None = None  # of the labeled images' resolved paths (image-file datasets)

    @property
    def digest(self) -> str:
        return subset_digest(self.indices)

    @property
    def identity(self) -> str:
        """One line saying what this subset is, for the start-up message and `data check`; it changes when
        the indices change, and for image files when the images they name do."""
        files = f", images sha256 {self.files_sha256[:12]}" if self.files_sha256 else ""
        if self.list_sha256 is None:
            return f"{self.description}, sha256 {self.digest[:12]}{files}"
        kind = f"canonical {self.canonical}" if self.canonical else "custom list, not a canonical SimCLR list"
        return f"{self.description} ({kind}; file sha256 {self.list_sha256[:12]}), subset sha256 {self.digest[:12]}{files}"

    def naming(self, split: Split) -> "LabeledSubset":
        """This subset with the hash of the images it names (for image-file splits)."""
        if isinstance(split, FileSplit):
            names = split.files.raw_at(sorted(self.indices.tolist()))  # the names' bytes, as the file system has them
            self.files_sha256 = hashlib.sha256(b"\n".join(names)).hexdigest()
        return self


def subset_digest(indices: torch.Tensor) -> str:
    """SHA-256 of the sorted indices written as comma-separated decimal text."""
    text = ",".join(str(i) for i in sorted(indices.tolist()))
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


Unreadable = Callable[[list[int]], dict[int, str]]  # the reasons of the unreadable images among some indices


def draw_balanced(labels: torch.Tensor, counts: dict[int, int], seed: int,
                  unreadable: Unreadable | None = None) -> tuple[torch.Tensor, dict[int, str]]:
    """For each class c, the first `counts[c]` members of a seeded random order (generator seeded by
    `seed`) that `unreadable` does not reject; returns them and the members passed over, with why.

    Candidates are checked in batches across classes (the check decodes files in parallel)."""
    generator = torch.Generator().manual_seed(seed)
    by_class = torch.argsort(labels, stable=True)  # each class's members in rising index order, class after class
    sorted_labels = labels[by_class]
    orders = {}
    for cls in sorted(counts):
        first, last = (int(torch.searchsorted(sorted_labels, cls, right=right)) for right in (False, True))
        members = by_class[first:last]  # = torch.nonzero(labels == cls), without a pass over every label per class
        orders[cls] = members[torch.randperm(len(members), generator=generator)].tolist()
    chosen: dict[int, list[int]] = {cls: [] for cls in orders}
    cursor, passed = dict.fromkeys(orders, 0), {}
    while True:
        batch = {cls: orders[cls][cursor[cls] : cursor[cls] + counts[cls] - len(chosen[cls])] for cls in orders}
        candidates = [i for members in batch.values() for i in members]
        if not candidates:
            break
        bad = unreadable(candidates) if unreadable is not None else {}
        for cls, members in batch.items():
            cursor[cls] += len(members)
            chosen[cls] += [i for i in members if i not in bad]
        passed.update(bad)
    return torch.tensor(sorted(i for members in chosen.values() for i in members), dtype=torch.long), passed


@dataclass
class ListMatch:
    """A list file resolved against a training split: what matched and what did not."""

    path: Path
    indices: torch.Tensor
    sha256: str
    missing: list[str] = field(default_factory=list)  # entries naming no training image
    unlabeled: list[str] = field(default_factory=list)  # entries naming an image that has no label

    @property
    def canonical(self) -> str | None:
        return CANONICAL_LISTS.get(self.sha256)

    def problems(self) -> list[str]:
        """The entries that name nothing usable, one phrase per kind of fault (training refuses to
        start with the first; `semiclust data check` lists them all)."""
        groups = ((self.missing, "name no training image (a missing file, or an index out of range)"),
                  (self.unlabeled, "name training images that have no label"))
        total = len(self.indices) + len(self.missing) + len(self.unlabeled)
        return [f"labeled list '{self.path}': {len(bad)} of its {total} entries {why}: {examples(bad)}"
                for bad, why in groups if bad]

    def subset(self, split: Split) -> LabeledSubset:
        return LabeledSubset(self.indices, f"list {self.path}", self.sha256, self.canonical).naming(split)


def _list_entries(path: Path) -> list[str]:
    problem = file_problem(path, "a text file")
    if problem:
        raise SemiclustError(f"labeled list '{printable(path)}' {predicate(problem)}; data.labels.list must name a "
                             "text file with one index or file name per line.")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte order mark is not part of the first entry
    except UnicodeDecodeError as err:
        raise SemiclustError(f"labeled list '{printable(path)}' is not UTF-8 text ({err.reason} at byte {err.start}); "
                             "save it as UTF-8, one index or file name per line.") from None
    entries = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    entries = [e for e in entries if e]
    if not entries:
        raise SemiclustError(f"labeled list '{path}' is empty; put one training image (index or file name) per line.")
    return entries


def _base(name: bytes) -> bytes:
    return name.rsplit(b"/", 1)[-1]


def _file_indices(entries: list[str], split: FileSplit) -> dict[str, int]:
    """The training index each entry names: a file's relative path, or a base name (-1 when files share it).

    One pass over the split's names that keeps only the keys an entry can look up (the entries and their base
    names), not a second index of every file: each key takes the value a dict of every file's path and base name
    would give it (a path sets its index; then its base name the same index, or -1 once another file has it)."""
    keys = {encode(entry) for entry in entries}
    keys |= {_base(key) for key in keys}
    paths = any(b"/" in key for key in keys)  # else no name with a "/" can be a key, only its base name
    names: dict[bytes, int] = {}
    data, files = split.files.data, split.files
    bases = (base for first in range(0, len(files), CHUNK) for base in files.base_starts(first, first + CHUNK).tolist())
    for i, ((start, end), base_start) in enumerate(zip(files.bounds(), bases)):
        base = data[base_start:end]
        if paths and start != base_start and data[start:end] in keys:
            names[data[start:end]] = i
        if base in keys:  # (a name without "/" is its own base name: its path sets i, then its base keeps it)
            names[base] = -1 if start != base_start and names.get(base, i) != i else i
    found = {}
    for entry in entries:
        key = encode(entry)
        index = names[key] if key in names else names.get(_base(key))
        if index is not None:
            found[entry] = index
    return found


def match_list(path: Path, split: Split) -> ListMatch:
    """Resolve a list file: integer lines are indices; other lines are file names (relative path or base
    name) of a file-based training split."""
    entries = _list_entries(path)
    names = _file_indices([e for e in entries if not e.isdigit()], split) if isinstance(split, FileSplit) else {}
    named, size = [int(entry) if entry.isdigit() else names.get(entry) for entry in entries], len(split)
    valid = [index for index in named if index is not None and 0 <= index < size]
    label_of = dict(zip(valid, split.labels[torch.tensor(valid, dtype=torch.long)].tolist()))
    found, missing, unlabeled = [], [], []
    for entry, index in zip(entries, named):
        if index is None or not 0 <= index < size:
            missing.append(entry)
        elif label_of[index] < 0:
            unlabeled.append(entry)
        else:
            found.append(index)
    indices = torch.tensor(sorted(set(found)), dtype=torch.long)
    return ListMatch(path, indices, file_sha256(path), missing, unlabeled)


def _listed_subset(path: Path, split: Split, unreadable: Unreadable | None = None) -> LabeledSubset:
    match = match_list(path, split)
    for problem in match.problems():
        raise SemiclustError(f"{problem}. Check that the list belongs to this dataset and that the files are in place "
                             "(`semiclust data check RECIPE` lists every problem).")
    bad = unreadable(match.indices.tolist()) if unreadable is not None else {}
    if bad:
        shown = [f"{printable(split.files[i])} ({reason})" for i, reason in sorted(bad.items())]
        raise SemiclustError(f"labeled list '{path}' names {len(bad)} unreadable image(s): {examples(shown)}. Replace "
                             "those files or remove them from the list.")
    return match.subset(split)


def _short_classes(counts: dict[int, int], wanted: int, names: list[str]) -> str:
    """"'bee' has 2 and 'cow' has 1" for the classes with fewer than `wanted` images."""
    short = [f"'{names[c]}' has {n}" for c, n in sorted(counts.items()) if n < wanted]
    return ", ".join(short[:-1]) + (" and " if len(short) > 1 else "") + short[-1]


def choose_labeled(split: Split, spec: Labels | Validation, seed: int, num_classes: int,
                   class_names: list[str] | None = None, unreadable: Unreadable | None = None,
                   key: str = "data.labels") -> LabeledSubset:
    """Apply the recipe's `data.labels` to the training split (images with label -1 are never chosen).

    With `unreadable` (image files), drawn images that cannot be read are passed over for the next ones
    of their class, and a list naming one is refused, so the subset is made of readable images only."""
    labels = split.labels
    names = class_names or [str(c) for c in range(num_classes)]
    seed = spec.seed if spec.seed is not None else seed
    known = labels[(labels >= 0) & (labels < num_classes)]
    present = dict(enumerate(torch.bincount(known, minlength=num_classes).tolist()))  # one pass, not one per class
    if spec.list is not None:
        return _listed_subset(Path(spec.list), split, unreadable)
    if spec.per_class is not None:
        counts = {c: spec.per_class for c in present}
        what = f"{spec.per_class} per class, seed {seed}"
    else:
        counts = {c: max(1, round(spec.fraction * n)) for c, n in present.items() if n > 0}
        what = "every labeled image" if spec.fraction == 1 else f"fraction {spec.fraction} per class, seed {seed}"
    if spec.per_class is not None and min(present.values()) < spec.per_class:
        raise SemiclustError(f"{key}.per_class is {spec.per_class} but {_short_classes(present, spec.per_class, names)} "
                             "labeled training image(s); lower per_class or use a fraction.")
    indices, passed = draw_balanced(labels, counts, seed, unreadable)
    drawn = {c: int((labels[indices] == c).sum()) for c in counts}
    if spec.per_class is not None and min(drawn.values()) < spec.per_class:
        raise SemiclustError(f"{key}.per_class is {spec.per_class} but only {_short_classes(drawn, spec.per_class, names)} "
                             f"readable labeled image(s) ({len(passed)} unreadable passed over); replace the unreadable "
                             "files (`semiclust data check RECIPE --all` lists them) or lower per_class.")
    return LabeledSubset(indices, what, passed_over=passed).naming(split)


def choose_validation(split: Split, spec: Validation, seed: int, num_classes: int, labeled: LabeledSubset,
                      class_names: list[str] | None = None, unreadable: Unreadable | None = None) -> LabeledSubset:
    """`data.validation` drawn from the labeled training images outside the labeled subset (seed: the recipe's
    + 1 unless given), so that the labeled subset is the same with and without a validation split."""
    masked = split.labels.clone()
    masked[labeled.indices] = UNLABELED
    if spec.list is not None:
        overlap = sorted(set(match_list(Path(spec.list), split).indices.tolist()) & set(labeled.indices.tolist()))
        if overlap:
            raise SemiclustError(f"validation list '{spec.list}' names {len(overlap)} image(s) of the labeled subset "
                                 f"(e.g. training index {overlap[0]}); a validation image is never trained on: remove "
                                 "them from the list or from data.labels.")
    chosen = choose_labeled(dataclasses.replace(split, labels=masked), spec, seed + 1 if spec.seed is None else spec.seed,
                            num_classes, class_names, unreadable, key="data.validation")
    chosen.description = f"validation: {chosen.description}"
    return chosen.naming(split)


def class_counts(labels: torch.Tensor, indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """How many of the images at `indices` each class has (K,)."""
    return torch.bincount(labels[indices], minlength=num_classes)


def save_subset(subset: LabeledSubset, split: Split, path: Path) -> None:
    """The exact subset, with file names for file-based splits, so a run records what it trained on."""
    record = {"description": subset.description, "sha256": subset.digest, "count": len(subset.indices),
              "list_sha256": subset.list_sha256, "canonical": subset.canonical, "train_size": len(split),
              "files_sha256": subset.files_sha256, "indices": subset.indices.tolist()}
    if isinstance(split, FileSplit):  # printable: the record is valid UTF-8 JSON whatever the names' bytes
        record["files"] = [printable(split.files[i]) for i in subset.indices.tolist()]
    write_text(path, json.dumps(record, indent=1))


def load_subset(path: Path, split: Split | None = None) -> LabeledSubset:
    """The saved subset; given the training split, also checks that the data still lists the same files
    (indices into a changed listing would silently name other images, and resume would not be exact)."""
    data = json.loads(path.read_text())
    subset = LabeledSubset(torch.tensor(data["indices"], dtype=torch.long), data["description"],
                           data.get("list_sha256"), data.get("canonical"))
    if subset.digest != data["sha256"]:
        raise SemiclustError(
            f"'{path}' was edited: its indices no longer match its recorded SHA-256. Restore it or start a new run."
        )
    if split is not None:
        _check_same_listing(path, data, subset, split)
        subset.naming(split)
    return subset


def _check_same_listing(path: Path, data: dict, subset: LabeledSubset, split: Split) -> None:
    changed = listing_change(subset.indices, split, data.get("files"), data.get("train_size"))
    if changed:
        raise SemiclustError(
            f"the data changed since this run started ({changed}; recorded in '{path}'). Resuming would train on "
            "other images; restore the dataset as it was, or start a new run."
        )


def listing_change(indices: torch.Tensor, split: Split, recorded_files: list[str] | None = None,
                   recorded_size: int | None = None) -> str | None:
    """How the training split no longer matches a subset recorded earlier (its size, or the files at the
    subset's indices), or None when it still does: indices into a changed listing name other images."""
    if recorded_size is not None and recorded_size != len(split):
        return f"the training split had {recorded_size} images and now has {len(split)}"
    if len(indices) and int(indices.max()) >= len(split):
        return f"the training split now has only {len(split)} images"
    if isinstance(split, FileSplit) and recorded_files:
        now = [printable(split.files[i]) for i in indices.tolist()]  # as save_subset records them
        recorded = map(printable, recorded_files)  # a checkpoint's record holds the names as the file system does
        differ = next((pair for pair in zip(recorded, now) if pair[0] != pair[1]), None)
        if differ:
            return f"labeled image '{differ[0]}' is now '{differ[1]}' at the same index"
    return None
