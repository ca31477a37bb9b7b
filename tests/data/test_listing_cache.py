"""Folder listings and readable verdicts remembered between runs (data/listing.py, data/readable.py): used while
nothing changed, listed or decoded again when a file is added, removed, renamed or replaced, and never a reason
for a run to train on other images than it would without them."""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import pytest

from semiclust.data import cache_dir, listing, readable
from semiclust.data.datasets import build_dataset
from semiclust.data.subsets import choose_labeled, match_list
from semiclust.engine.setup import draw_subset
from semiclust.config.schema import Labels
from tests.data.files import corrupt, image_tree, save, stripes
from tests.helpers import TINY_RECIPE, make_recipe

CLASSES = ["ant", "bee", "cow", "dog"]
DAY_NS = 86_400 * 10**9


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A cache folder of this test's own, and folders trusted however recently they changed (the trees here are
    seconds old; `age` sets their times back, so that any change below gives a new modification time)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("SEMICLUST_CACHE_DIR", str(folder))
    monkeypatch.setattr(cache_dir, "RACY_NS", -DAY_NS)
    return folder


@pytest.fixture
def walks(monkeypatch) -> list:
    """The folders listed afresh (not taken from the cache)."""
    listed, walk = [], listing.walk
    monkeypatch.setattr(listing, "walk", lambda folder: listed.append(Path(folder).name) or walk(folder))
    return listed


def age(root: Path) -> None:
    """Every folder and file under root a day old."""
    then = time.time_ns() - DAY_NS
    for folder, _, files in os.walk(root):
        for path in [folder, *(os.path.join(folder, f) for f in files)]:
            os.utime(path, ns=(then, then), follow_symlinks=False)


def tree(root: Path) -> Path:
    image_tree(root / "train", CLASSES, per_class=6)
    image_tree(root / "val", CLASSES, per_class=2, start_seed=70)
    save(root / "train" / "bee" / "deeper" / "bee_0.png", stripes(1, 500))  # a base name two files share
    save(root / "train" / "cow" / os.fsdecode(b"caf\xe9.png"), stripes(2, 501))  # not UTF-8
    (root / "list.txt").write_text("ant_1.png\ncow/cow_4.png\nelsewhere/dog_5.png\nbee/deeper/bee_0.png\n3\n")
    age(root)
    return root


def load(root: Path):
    return build_dataset("imagefolder", {"root": str(root)})


def uncached(root: Path, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setenv("SEMICLUST_CACHE_DIR", "off")
        return load(root)


def same(a, b) -> bool:
    return (a.classes == b.classes and a.problems == b.problems and a.train.files == b.train.files
            and a.train.labels.tolist() == b.train.labels.tolist() and a.test.files == b.test.files
            and a.test.labels.tolist() == b.test.labels.tolist())


def subsets(dataset, root: Path, listed: bool = True) -> list[tuple[str, str | None]]:
    """(indices' and names' SHA-256) of a fraction, a per-class and (`listed`) a list subset of the dataset."""
    specs = [Labels(fraction=0.5, seed=3), Labels(per_class=2, seed=1)] + [Labels(list=str(root / "list.txt"))] * listed
    drawn = [choose_labeled(dataset.train, spec, 0, len(CLASSES), CLASSES) for spec in specs]
    return [(s.digest, s.files_sha256) for s in drawn]


# the subsets semiclust drew from tree() before the index and the caches (commit 0e3c316, by the same code as here)
TODAY = [("497f01627def82dfb78e5ff188f1a4c3fc23c5c8ff621fb7a240e15071878197",
          "b93a8c53ccf4a6edbbd085efec94f1c53c8b6f2838d991dc77b1d65eed04c81f"),
         ("2c75ea330c5f526a7fabc5336c3de457db6071e4d1a8e1d6dabd122770c1712a",
          "3d03df64be9930ae2611cbcbf4f1ff5cc99e897e523a8098b7b4a5dd88cb5e52"),
         ("8d53311adc756e492b86d920055bebfedb2140149f5faebd7a4ac0f173633d35",
          "21415465745f1f8cd161c39a1cace0a88bd5ab784d6cb4c61b209a1f288a6e7c")]


def test_a_listing_is_taken_from_the_cache_while_nothing_changed(tmp_path, cache, walks, monkeypatch):
    root = tree(tmp_path / "data")
    first = load(root)
    assert sorted(walks) == sorted(CLASSES * 2) and len(list(cache.glob("listing-*.bin"))) == 2  # train/, val/
    walks.clear()
    second = load(root)
    assert walks == [] and same(first, second) and same(second, uncached(root, monkeypatch))
    assert subsets(first, root) == subsets(second, root) == TODAY  # the subsets of semiclust before the cache
    assert second.train.files[13] == "cow/" + os.fsdecode(b"caf\xe9.png")


def add(root: Path) -> None:
    save(root / "train" / "bee" / "bee_50.png", stripes(1, 50))


def remove(root: Path) -> None:
    (root / "train" / "ant" / "ant_1.png").unlink()


def rename(root: Path) -> None:
    (root / "train" / "dog" / "dog_5.png").rename(root / "train" / "dog" / "dog_00.png")  # sorted second


def nested(root: Path) -> None:  # a new file two folders down: only that folder's times change
    save(root / "train" / "bee" / "deeper" / "bee_7.png", stripes(1, 70))


def to_fifo(root: Path) -> None:  # a file replaced by a FIFO of the same name: never listed
    path = root / "train" / "cow" / "cow_2.png"
    path.unlink()
    os.mkfifo(path)


@pytest.mark.parametrize("change", [add, remove, rename, nested, to_fifo])
def test_an_added_removed_or_renamed_file_is_listed_again_and_the_subset_follows(tmp_path, cache, walks, monkeypatch,
                                                                                   change):
    root = tree(tmp_path / "data")
    before = load(root)
    change(root)
    walks.clear()
    after = load(root)
    assert walks == [{add: "bee", remove: "ant", rename: "dog", nested: "bee", to_fifo: "cow"}[change]]  # that folder
    fresh = uncached(root, monkeypatch)
    assert same(after, fresh) and after.train.files != before.train.files
    assert subsets(after, root, False) == subsets(fresh, root, False) != subsets(before, root, False)
    assert match_list(root / "list.txt", after.train).indices.tolist() == \
        match_list(root / "list.txt", fresh.train).indices.tolist()


def test_a_folder_changed_a_moment_ago_is_listed_again_at_the_next_start(tmp_path, monkeypatch, walks):
    """With the usual margin (cache_dir.RACY_NS), folders whose times are as recent as the listing are not
    remembered: a change in the same clock tick could leave their times unchanged ("racy git")."""
    monkeypatch.setenv("SEMICLUST_CACHE_DIR", str(tmp_path / "cache"))
    image_tree(tmp_path / "train", CLASSES, per_class=2)
    build_dataset("imagefolder", {"root": str(tmp_path), "eval_dir": None})
    build_dataset("imagefolder", {"root": str(tmp_path), "eval_dir": None})
    assert sorted(walks) == sorted(CLASSES * 2) and not list((tmp_path / "cache").glob("listing-*"))


def test_a_folder_holding_a_symbolic_link_is_listed_at_every_start(tmp_path, cache, walks, monkeypatch):
    """Whether a link is listed, and as what, depends on its target, which changes without its folder changing."""
    root = tree(tmp_path / "data")
    target = save(tmp_path / "elsewhere" / "target.png", stripes(0, 9))
    (root / "train" / "ant" / "link.png").symlink_to(target)
    age(root)
    load(root)
    walks.clear()
    assert "ant/link.png" in load(root).train.files and walks == ["ant"]
    target.unlink()  # the link's target becomes a folder of images: the link is listed as a folder
    save(target / "inner.png", stripes(0, 10))
    walks.clear()
    now = load(root)
    assert walks == ["ant"] and "ant/link.png/inner.png" in now.train.files and same(now, uncached(root, monkeypatch))


def test_a_damaged_cache_file_is_ignored_and_written_again(tmp_path, cache, walks, monkeypatch):
    root = tree(tmp_path / "data")
    first = load(root)
    for number, path in enumerate(sorted(cache.glob("listing-*.bin"))):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if number == 0 else b"\x00" * 64 + data[64:])
    walks.clear()
    assert same(load(root), first) and sorted(walks) == sorted(CLASSES * 2)
    walks.clear()
    assert same(load(root), first) and walks == []  # rewritten whole


def test_the_cache_folder_is_chosen_by_the_environment_and_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.delenv("SEMICLUST_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir.cache_folder() == tmp_path / "xdg" / "semiclust"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir.cache_folder() == tmp_path / "home" / ".cache" / "semiclust"
    monkeypatch.setenv("SEMICLUST_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir.cache_folder() == tmp_path / "mine"
    monkeypatch.setenv("SEMICLUST_CACHE_DIR", "off")
    assert cache_dir.cache_folder() is None and cache_dir.cache_file("listing", "x") is None
    monkeypatch.setattr(cache_dir, "RACY_NS", -DAY_NS)
    root = tree(tmp_path / "data")
    load(root)
    assert not (tmp_path / "mine").exists() and not (tmp_path / "home").exists()


def test_a_cache_folder_that_cannot_be_written_is_left_alone(tmp_path, cache, monkeypatch):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SEMICLUST_CACHE_DIR", str(blocker / "cache"))
    root = tree(tmp_path / "data")
    assert same(load(root), uncached(root, monkeypatch))


def test_an_unlabeled_folder_of_a_labeled_list_is_remembered_too(tmp_path, cache, walks, monkeypatch):
    from tests.data.files import labeled_list_dataset

    options = labeled_list_dataset(tmp_path / "birds")
    age(tmp_path / "birds")
    first = build_dataset("labeled_list", options)
    walks.clear()
    second = build_dataset("labeled_list", options)
    assert walks == []
    with monkeypatch.context() as patch:
        patch.setenv("SEMICLUST_CACHE_DIR", "off")
        fresh = build_dataset("labeled_list", options)
    assert second.train.files == first.train.files == fresh.train.files
    assert all(Path(f).is_absolute() and Path(f).is_file() for f in second.train.files)


# ---------------------------------------------------------------- readable verdicts
def file_recipe(root: Path, labels: dict):
    raw = copy.deepcopy(TINY_RECIPE)
    raw["data"].update({"dataset": "imagefolder", "options": {"root": str(root), "eval_dir": None}, "labels": labels,
                        "loader": {"workers": 0}})
    return make_recipe(raw)


@pytest.fixture
def decoded(monkeypatch) -> list:
    """The training indices decoded to check that they are readable."""
    jobs, find = [], readable.find_unreadable
    monkeypatch.setattr(readable, "find_unreadable",
                        lambda work, *args, **kwargs: jobs.extend(i for _, _, i in work) or find(work, *args, **kwargs))
    return jobs


def test_labeled_images_are_decoded_again_only_when_they_change(tmp_path, cache, decoded, monkeypatch):
    root = tree(tmp_path / "data")
    recipe = file_recipe(root, {"per_class": 2, "seed": 1})
    first = draw_subset(load(root), recipe)
    assert sorted(decoded) == first.indices.tolist() and len(decoded) == 8
    decoded.clear()
    second = draw_subset(load(root), recipe)
    assert decoded == [] and second.digest == first.digest == TODAY[1][0] and second.files_sha256 == TODAY[1][1]
    dataset = load(root)
    damaged = int(first.indices[2])
    corrupt(dataset.train.path(damaged))  # the same name, new bytes: its size and times change
    third = draw_subset(load(root), recipe)
    assert decoded == [damaged, *sorted(set(third.indices.tolist()) - set(first.indices.tolist()))]
    assert damaged in third.passed_over and damaged not in third.indices.tolist()
    with monkeypatch.context() as patch:
        patch.setenv("SEMICLUST_CACHE_DIR", "off")
        fresh = draw_subset(load(root), recipe)
    assert (third.digest, third.files_sha256, third.passed_over) == (fresh.digest, fresh.files_sha256, fresh.passed_over)


def test_a_file_changed_a_moment_before_the_check_is_not_remembered(tmp_path, monkeypatch, decoded):
    monkeypatch.setenv("SEMICLUST_CACHE_DIR", str(tmp_path / "cache"))
    image_tree(tmp_path / "train", CLASSES, per_class=2)
    recipe = file_recipe(tmp_path, {"per_class": 1})
    for _ in range(2):
        draw_subset(build_dataset("imagefolder", {"root": str(tmp_path), "eval_dir": None}), recipe)
    assert len(decoded) == 8  # decoded both times


def test_an_unreadable_labeled_image_is_named_at_every_start(tmp_path, cache, monkeypatch):
    from semiclust.errors import SemiclustError

    root = tree(tmp_path / "data")
    corrupt(root / "train" / "cow" / "cow_4.png")
    age(root)
    recipe = file_recipe(root, {"list": str(root / "list.txt")})
    for _ in range(2):
        with pytest.raises(SemiclustError, match="names 1 unreadable image.*cow_4.png"):
            draw_subset(load(root), recipe)


@pytest.mark.parametrize("collide", [False, True])
def test_remembered_identities_are_found_whole_even_when_their_keys_collide(tmp_path, cache, monkeypatch, collide):
    import numpy as np

    if collide:  # every identity given the same lookup key: rows must still be compared whole
        monkeypatch.setattr(readable, "_keys", lambda rows: np.zeros(len(rows), dtype=np.uint64))
    root = tree(tmp_path / "data")
    split = load(root).train
    verdicts = readable.Verdicts(split, None)
    rows = readable.identities(split, list(range(len(split))))
    verdicts.remember(rows[::2], time.time_ns())
    again = readable.Verdicts(split, None)  # read back from the file
    other = rows.copy()
    other[:, 2] += 1  # the same files one byte longer
    assert again.known(rows).tolist() == [i % 2 == 0 for i in range(len(rows))]
    assert not again.known(other).any() and not again.known(np.full((1, 5), -1, dtype=np.int64)).any()
