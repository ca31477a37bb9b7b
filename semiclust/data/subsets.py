"""Labeled subsets: k per class, a fraction per class, or a list file; seeded, class-balanced, hashed."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from semiclust.errors import SemiclustError
from semiclust.recipe import Labels


@dataclass
class LabeledSubset:
    """Indices into the training split that keep their labels, and how they were chosen."""

    indices: torch.Tensor
    description: str

    @property
    def digest(self) -> str:
        return subset_digest(self.indices)


def subset_digest(indices: torch.Tensor) -> str:
    """SHA-256 of the sorted indices written as comma-separated decimal text."""
    text = ",".join(str(i) for i in sorted(indices.tolist()))
    return hashlib.sha256(text.encode()).hexdigest()


def draw_balanced(labels: torch.Tensor, counts: dict[int, int], seed: int) -> torch.Tensor:
    """For each class c, `counts[c]` members chosen uniformly with a generator seeded by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in sorted(counts):
        members = torch.nonzero(labels == cls).flatten()
        order = torch.randperm(len(members), generator=generator)
        chosen.append(members[order[: counts[cls]]])
    return torch.cat(chosen).sort().values


def choose_labeled(labels: torch.Tensor, spec: Labels, seed: int, num_classes: int) -> LabeledSubset:
    """Apply the recipe's `data.labels` to the training labels."""
    seed = spec.seed if spec.seed is not None else seed
    present = {c: int((labels == c).sum()) for c in range(num_classes)}
    if spec.per_class is not None:
        short = {c: n for c, n in present.items() if n < spec.per_class}
        if short:
            raise SemiclustError(
                f"data.labels.per_class is {spec.per_class} but class(es) {sorted(short)} have only "
                f"{min(short.values())} training image(s); lower per_class or use a fraction."
            )
        indices = draw_balanced(labels, {c: spec.per_class for c in present}, seed)
        return LabeledSubset(indices, f"{spec.per_class} per class, seed {seed}")
    if spec.fraction is not None:
        counts = {c: max(1, round(spec.fraction * n)) for c, n in present.items() if n > 0}
        indices = draw_balanced(labels, counts, seed)
        return LabeledSubset(indices, f"fraction {spec.fraction} per class, seed {seed}")
    return LabeledSubset(read_index_list(Path(spec.list), len(labels)), f"list {spec.list}")


def read_index_list(path: Path, size: int) -> torch.Tensor:
    """A text file with one training-set index per line (blank lines and # comments ignored)."""
    if not path.is_file():
        raise SemiclustError(f"labeled list '{path}' does not exist; data.labels.list must name a readable file.")
    values = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if not text.isdigit() or int(text) >= size:
            raise SemiclustError(
                f"labeled list '{path}' line {number}: '{text}' is not an index between 0 and {size - 1} "
                "of the training split; this dataset's lists hold one integer index per line."
            )
        values.append(int(text))
    if not values:
        raise SemiclustError(f"labeled list '{path}' holds no indices; put one training-set index per line.")
    return torch.tensor(sorted(set(values)), dtype=torch.long)


def save_subset(subset: LabeledSubset, path: Path) -> None:
    path.write_text(
        json.dumps(
            {"description": subset.description, "sha256": subset.digest, "count": len(subset.indices),
             "indices": subset.indices.tolist()},
            indent=1,
        )
    )


def load_subset(path: Path) -> LabeledSubset:
    data = json.loads(path.read_text())
    subset = LabeledSubset(torch.tensor(data["indices"], dtype=torch.long), data["description"])
    if subset.digest != data["sha256"]:
        raise SemiclustError(
            f"'{path}' was edited: its indices no longer match its recorded SHA-256. Restore it or start a new run."
        )
    return subset
