"""Labeled subsets: k per class, a fraction per class, or a list file; seeded, class-balanced, hashed.

A list names training images by index (in-memory datasets) or by file name (image-file datasets,
e.g. the SimCLR ImageNet 1% / 10% lists, one `n01440764_10026.JPEG` per line). The list file's own
SHA-256 says whether it is one of the canonical SimCLR lists.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from semiclust.data.datasets import FileSplit, Split
from semiclust.errors import SemiclustError, examples
from semiclust.schema import Labels

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

    @property
    def digest(self) -> str:
        return subset_digest(self.indices)

    @property
    def identity(self) -> str:
        """One line saying what this subset is, for the start-up message and `data check`."""
        if self.list_sha256 is None:
            return f"{self.description}, sha256 {self.digest[:12]}"
        kind = f"canonical {self.canonical}" if self.canonical else "custom list, not a canonical SimCLR list"
        return f"{self.description} ({kind}; file sha256 {self.list_sha256[:12]}), subset sha256 {self.digest[:12]}"


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


def draw_balanced(labels: torch.Tensor, counts: dict[int, int], seed: int) -> torch.Tensor:
    """For each class c, `counts[c]` members chosen uniformly with a generator seeded by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in sorted(counts):
        members = torch.nonzero(labels == cls).flatten()
        order = torch.randperm(len(members), generator=generator)
        chosen.append(members[order[: counts[cls]]])
    return torch.cat(chosen).sort().values


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

    def subset(self) -> LabeledSubset:
        return LabeledSubset(self.indices, f"list {self.path}", self.sha256, self.canonical)


def _list_entries(path: Path) -> list[str]:
    if not path.is_file():
        raise SemiclustError(f"labeled list '{path}' does not exist; data.labels.list must name a readable file.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SemiclustError(f"labeled list '{path}' is not UTF-8 text ({err.reason} at byte {err.start}); "
                             "save it as UTF-8, one index or file name per line.") from None
    entries = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    entries = [e for e in entries if e]
    if not entries:
        raise SemiclustError(f"labeled list '{path}' is empty; put one training image (index or file name) per line.")
    return entries


def _name_index(split: FileSplit) -> dict[str, int]:
    """File name -> index, under the relative path and the base name (ambiguous base names map to -1)."""
    names: dict[str, int] = {}
    for i, file in enumerate(split.files):
        names[file] = i
        base = file.rsplit("/", 1)[-1]
        names[base] = -1 if base in names and names[base] != i else i
    return names


def match_list(path: Path, split: Split) -> ListMatch:
    """Resolve a list file: integer lines are indices; other lines are file names (relative path or base
    name) of a file-based training split."""
    entries = _list_entries(path)
    names = _name_index(split) if isinstance(split, FileSplit) else {}
    found, missing, unlabeled = [], [], []
    for entry in entries:
        index = int(entry) if entry.isdigit() else names.get(entry, names.get(entry.rsplit("/", 1)[-1]))
        if index is None or not 0 <= index < len(split):
            missing.append(entry)
        elif int(split.labels[index]) < 0:
            unlabeled.append(entry)
        else:
            found.append(index)
    indices = torch.tensor(sorted(set(found)), dtype=torch.long)
    return ListMatch(path, indices, file_sha256(path), missing, unlabeled)


def _listed_subset(path: Path, split: Split) -> LabeledSubset:
    match = match_list(path, split)
    for problem in match.problems():
        raise SemiclustError(f"{problem}. Check that the list belongs to this dataset and that the files are in place "
                             "(`semiclust data check RECIPE` lists every problem).")
    return match.subset()


def choose_labeled(split: Split, spec: Labels, seed: int, num_classes: int) -> LabeledSubset:
    """Apply the recipe's `data.labels` to the training split (images with label -1 are never chosen)."""
    labels = split.labels
    seed = spec.seed if spec.seed is not None else seed
    present = {c: int((labels == c).sum()) for c in range(num_classes)}
    if spec.per_class is not None:
        short = {c: n for c, n in present.items() if n < spec.per_class}
        if short:
            raise SemiclustError(
                f"data.labels.per_class is {spec.per_class} but class(es) {sorted(short)} have only "
                f"{min(short.values())} labeled training image(s); lower per_class or use a fraction."
            )
        indices = draw_balanced(labels, {c: spec.per_class for c in present}, seed)
        return LabeledSubset(indices, f"{spec.per_class} per class, seed {seed}")
    if spec.fraction is not None:
        counts = {c: max(1, round(spec.fraction * n)) for c, n in present.items() if n > 0}
        indices = draw_balanced(labels, counts, seed)
        what = "every labeled image" if spec.fraction == 1 else f"fraction {spec.fraction} per class, seed {seed}"
        return LabeledSubset(indices, what)
    return _listed_subset(Path(spec.list), split)


def save_subset(subset: LabeledSubset, split: Split, path: Path) -> None:
    """The exact subset, with file names for file-based splits, so a run records what it trained on."""
    record = {"description": subset.description, "sha256": subset.digest, "count": len(subset.indices),
              "list_sha256": subset.list_sha256, "canonical": subset.canonical, "train_size": len(split),
              "indices": subset.indices.tolist()}
    if isinstance(split, FileSplit):
        record["files"] = [split.files[i] for i in subset.indices.tolist()]
    path.write_text(json.dumps(record, indent=1))


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
        now = [split.files[i] for i in indices.tolist()]
        differ = next((pair for pair in zip(recorded_files, now) if pair[0] != pair[1]), None)
        if differ:
            return f"labeled image '{differ[0]}' is now '{differ[1]}' at the same index"
    return None
