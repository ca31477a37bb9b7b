"""The file index as two arrays (data/names.py): every name round-trips, loader workers read the main process's
paths, and reading them copies nothing into a forked worker."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from semiclust.data.datasets import FileSplit, build_dataset, split_rows
from semiclust.data.loader import make_loader
from semiclust.data.names import FileNames
from semiclust.config.schema import Loader
from tests.data.files import image_tree, save, stripes

NAMES = ["a/x.png", os.fsdecode(b"caf\xe9/caf\xe9.png"), "b/\u00e9t\u00e9 \U0001f600.JPEG", "c/d/e.jpg", "plain.png",
         os.fsdecode(b"z/\xff\xfe.png"), "a/x.png"]


def test_every_name_round_trips_as_str_and_as_the_file_systems_bytes():
    names = FileNames.of(NAMES)
    assert len(names) == len(NAMES) and list(names) == NAMES and names == NAMES and names != NAMES[:-1]
    assert [names[i] for i in range(len(NAMES))] == NAMES and names[-2] == NAMES[-2] and names[1:3] == NAMES[1:3]
    assert [names.raw(i) for i in range(len(NAMES))] == [os.fsencode(n) for n in NAMES]  # the original bytes
    assert names[torch.tensor(2)] == NAMES[2] and names[np.int64(3)] == NAMES[3]  # index tensors, as subsets give
    assert names.names_at([5, 0, 5]) == [NAMES[5], NAMES[0], NAMES[5]]
    assert names.take([6, 1]) == [NAMES[6], NAMES[1]] and names.slice(2, 4) == NAMES[2:4]
    assert names.index(NAMES[1]) == 1 and names.index("a/x.png") == 0
    assert FileNames.join([names.slice(0, 3), FileNames.of([]), names.slice(3, 7)]) == names
    assert names.prefixed("/root dir/") == ["/root dir/" + n for n in NAMES]
    assert pickle.loads(pickle.dumps(names)) == names
    with pytest.raises(IndexError):
        names[len(NAMES)]
    with pytest.raises(ValueError):
        names.index("missing.png")


def test_base_starts_point_after_each_names_last_slash_in_any_run_of_names():
    names = FileNames.of(["a/b/c.png", "top.png", "/abs/x.jpg", "d/", "e/f"])
    starts = names.base_starts().tolist()
    assert [names.data[s:e].decode() for s, e in zip(starts, names.offsets[1:].tolist())] == ["c.png", "top.png",
                                                                                               "x.jpg", "", "f"]
    assert all(names.base_starts(a, b).tolist() == starts[a:b] for a in range(6) for b in range(a, 7))
    assert list(names.bounds(chunk=2)) == list(names.bounds()) == list(zip(names.offsets[:-1].tolist(),
                                                                           names.offsets[1:].tolist()))


def test_a_file_split_holds_its_names_as_file_names_and_paths_join_them_to_its_root(tmp_path):
    split = FileSplit(tmp_path, NAMES, torch.arange(len(NAMES)))
    assert isinstance(split.files, FileNames) and split.files == NAMES
    assert [split.path(i) for i in range(len(NAMES))] == [tmp_path / n for n in NAMES]
    assert [split.location(i) for i in range(len(NAMES))] == [str(tmp_path / n) for n in NAMES]
    assert split.locations([4, 1]) == [str(tmp_path / NAMES[4]), str(tmp_path / NAMES[1])]
    rows = split_rows(split, torch.tensor([5, 1]))
    assert rows.files == [NAMES[5], NAMES[1]] and rows.labels.tolist() == [5, 1]


class Paths(torch.utils.data.Dataset):
    """Item w: every path of the split as a loader worker makes it, and the worker's pid."""

    def __init__(self, split: FileSplit):
        self.split = split

    def __len__(self) -> int:
        return 2

    def __getitem__(self, item: int):
        return os.getpid(), [self.split.location(i) for i in range(len(self.split))], \
            [str(self.split.path(i)) for i in range(len(self.split))]


def test_loader_workers_see_the_paths_of_the_main_process(tmp_path):
    image_tree(tmp_path / "train", ["ant", "bee"], per_class=3)
    save(tmp_path / "train" / "bee" / os.fsdecode(b"caf\xe9.png"), stripes(1, 99))  # a name that is not UTF-8
    split = build_dataset("imagefolder", {"root": str(tmp_path), "eval_dir": None}).train
    main = [str(split.path(i)) for i in range(len(split))]
    seen = list(make_loader(Paths(split), range(2), Loader(workers=2, persistent_workers=False), torch.device("cpu")))
    assert len({pid for pid, _, _ in seen} | {os.getpid()}) == 3  # two workers, neither the main process
    assert all(locations == main and paths == main for _, locations, paths in seen)
    assert any(os.fsencode(p).endswith(b"caf\xe9.png") for p in main) and all(Path(p).is_file() for p in main)


def private_mb() -> float:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:])
    return sum(int(fields[key].split()[0]) for key in ("Private_Clean", "Private_Dirty")) / 1024


class ReadAll(torch.utils.data.Dataset):
    """The worker's private memory before and after reading every name of the split."""

    def __init__(self, split: FileSplit):
        self.split = split

    def __len__(self) -> int:
        return 1

    def __getitem__(self, item: int) -> float:
        before = private_mb()
        for i in range(len(self.split)):
            self.split.files[i]
        return private_mb() - before


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="reads Linux's /proc/self/smaps_rollup")
def test_a_worker_reads_every_name_without_copying_the_index(tmp_path):
    """A list of str is copied page by page into each worker that reads it (reference counts are writes): 300,000
    names are ~25 MB. The names as two arrays stay shared with the main process."""
    names = [f"n{k % 1000:08d}/n{k % 1000:08d}_{k}.JPEG" for k in range(300_000)]
    split = FileSplit(tmp_path, names, torch.zeros(len(names), dtype=torch.long))
    del names
    (grown,) = make_loader(ReadAll(split), range(1), Loader(workers=1, persistent_workers=False), torch.device("cpu"))
    assert grown < 3.0, f"the worker copied {grown:.1f} MB while reading the index"
