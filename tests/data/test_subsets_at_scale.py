"""The labeled draw and the list matching without a pass per class or a second index of every file: the same
subsets as the code they replace (kept here as the reference), on labels and names built to find differences."""
from __future__ import annotations

import random

import pytest
import torch

from semiclust.data import names, subsets
from semiclust.data.datasets import FileSplit
from semiclust.data.subsets import draw_balanced, match_list


def reference_draw(labels: torch.Tensor, counts: dict[int, int], seed: int, unreadable=None):
    """draw_balanced as it was: one `labels == cls` pass per class."""
    generator = torch.Generator().manual_seed(seed)
    orders = {}
    for cls in sorted(counts):
        members = torch.nonzero(labels == cls).flatten()
        orders[cls] = members[torch.randperm(len(members), generator=generator)].tolist()
    chosen = {cls: [] for cls in orders}
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


def test_the_balanced_draw_is_the_one_of_a_pass_per_class():
    rng = random.Random(0)
    for trial in range(20):
        classes = rng.randint(1, 30)
        labels = torch.tensor([rng.randint(-1, classes - 1) for _ in range(rng.randint(1, 2000))])  # -1: no label
        counts = {c: rng.randint(1, 40) for c in range(classes) if rng.random() < 0.9}
        bad = set(rng.sample(range(len(labels)), k=min(len(labels), 50)))

        def unreadable(indices):
            return {i: "damaged" for i in indices if i in bad}

        for check in (None, unreadable):
            got, passed = draw_balanced(labels, counts, trial, check)
            want, want_passed = reference_draw(labels, counts, trial, check)
            assert got.tolist() == want.tolist() and passed == want_passed


def reference_match(entries: list[str], files: list[str]) -> dict[str, int]:
    """The entry -> index lookup as it was: a dict of every file's relative path and base name."""
    names: dict[str, int] = {}
    for i, file in enumerate(files):
        names[file] = i
        base = file.rsplit("/", 1)[-1]
        names[base] = -1 if base in names and names[base] != i else i
    return {e: names.get(e, names.get(e.rsplit("/", 1)[-1])) for e in entries}


@pytest.mark.parametrize("chunk", [3, 65_536])  # names read a few at a time, or all in one chunk
def test_list_entries_name_the_files_a_dict_of_every_name_would(tmp_path, monkeypatch, chunk):
    """Relative paths, base names, base names two files share (-1: missing), names without a folder that are
    another file's base name, paths whose folder is wrong, a name beside one that is not UTF-8, indices."""
    files = ["a/x.png", "x.png", "b/x.png", "b/y.png", "c/d/y.png", "c/z.png", "z.png", "d/caf\udce9.png",
             "d/caf\u00e9.png", "e/w.png", "w.png", "e/f/v.png"]
    entries = ["a/x.png", "x.png", "b/y.png", "y.png", "c/z.png", "z.png", "q/z.png", "c/d/y.png", "caf\u00e9.png",
               "w.png", "e/w.png", "v.png", "elsewhere/v.png", "missing.png", "3", "e/f/v.png"]
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0, -1, 1, 0])
    monkeypatch.setattr(subsets, "CHUNK", chunk)
    monkeypatch.setattr(names, "CHUNK", chunk)
    split = FileSplit(tmp_path, files, labels)
    want = reference_match(entries, files)
    listing = tmp_path / "list.txt"
    for order in range(6):
        chosen = random.Random(order).sample(entries, k=len(entries) - order)
        listing.write_text("\n".join(chosen), encoding="utf-8")
        match = match_list(listing, split)
        expected = {want[e] if not e.isdigit() else int(e) for e in chosen}
        found = {i for i in expected if i is not None and 0 <= i < len(files) and int(labels[i]) >= 0}
        assert match.indices.tolist() == sorted(found)
        assert sorted(match.missing) == sorted(e for e in chosen if not e.isdigit() and (want[e] is None or want[e] < 0))
        assert sorted(match.unlabeled) == sorted(e for e in chosen if not e.isdigit() and want[e] is not None
                                                 and want[e] >= 0 and int(labels[want[e]]) < 0)
