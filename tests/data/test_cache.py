"""The in-memory cache of image folders (`data.cache`, data/cache.py): the cached pixels are the decoded files,
cached runs crop them exactly as an in-memory dataset of those pixels and evaluate them exactly as the files are
evaluated; a split that does not fit `data.cache_gb`, or holds an unreadable or odd-sized image, is read from its
files with a note saying why, and then behaves exactly as with `data.cache: off`.

The cached path crops on the training device with the run's generator, the file path in loader workers with
per-image generators (data/batches.py), so their random draws differ by design; with crops that take the whole
image unchanged both give the same images in the same order."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from semiclust.data.cache import cache_in_memory, decode_split
from semiclust.data.datasets import Dataset, ImageSplit, build_dataset
from semiclust.data.decode import decode_pixels
from semiclust.engine import setup
from semiclust.engine.run_dir import RunFiles
from semiclust.engine.setup import build_run
from semiclust.config.loader import resolve
from tests.data.files import corrupt, decoded, image_tree, save, stripes
from tests.helpers import TINY_RECIPE

CLASSES = ["a", "b", "c", "d"]
WHOLE = {"scale": [1.0, 1.0], "ratio": [1.0, 1.0], "flip": 0.0}  # the crop is the whole image, unchanged at 12 px


@pytest.fixture
def folder(tmp_path) -> Path:
    """An ImageFolder of 12-px stripe PNGs: 4 classes, 6 training and 2 evaluation images each."""
    image_tree(tmp_path / "data" / "train", CLASSES, per_class=6)
    image_tree(tmp_path / "data" / "val", CLASSES, per_class=2, start_seed=50)
    return tmp_path / "data"


def recipe(root: Path, cache: str = "auto", cache_gb: float = 2.0, crops: dict | None = None, workers=0,
           channels: int = 3):
    raw = copy.deepcopy(TINY_RECIPE)
    raw["data"].update({"dataset": "imagefolder", "options": {"root": str(root), "channels": channels},
                        "cache": cache, "cache_gb": cache_gb,
                        "batch": {"unlabeled": 8, "labeled": 4}, "loader": {"workers": workers},
                        "eval": {"size": 8}})
    if crops is not None:
        raw["data"]["unlabeled"] = {"crops": [{"count": 2, "size": 12, **crops}, {"count": 2, "size": 6, **crops}]}
        raw["data"]["labeled"] = {"size": 12, **crops}
    return resolve(raw)


def build(tmp_path: Path, spec, name: str):
    return build_run(spec, RunFiles(tmp_path / name), torch.device("cpu"), resume=False)


def batches(run, positions=range(4)) -> list:
    return [run.batches(p) for p in positions]


def same_batches(a: list, b: list) -> bool:
    return all(len(x.unlabeled) == len(y.unlabeled)
               and all(torch.equal(u, v) for u, v in zip(x.unlabeled, y.unlabeled))
               and torch.equal(x.labeled, y.labeled) and torch.equal(x.labeled_targets, y.labeled_targets)
               for x, y in zip(a, b, strict=True))


def views(run) -> list:
    return list(run.eval_views)


def same_views(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


def test_cached_pixels_are_the_decoded_files_in_shared_memory(folder):
    """cache auto decodes each split once into shared uint8 pixels equal to a PIL decode of every file."""
    spec = recipe(folder, workers=1)
    dataset = build_dataset("imagefolder", {"root": str(folder)})
    notes = cache_in_memory(dataset, spec.data)
    assert notes == ["training images decoded into memory once (24 images, 0 MiB)",
                     "evaluation images decoded into memory once (8 images, 0 MiB)"]
    for split in (dataset.train, dataset.test):
        assert split.pixels.dtype == torch.uint8 and split.pixels.shape == (len(split), 3, 12, 12)
        assert split.pixels.is_shared()
        for index in range(len(split)):
            assert torch.equal(split.pixels[index], decoded(split.path(index))), split.files[index]
    untouched = build_dataset("imagefolder", {"root": str(folder)})
    assert cache_in_memory(untouched, recipe(folder, cache="off").data) == [] and untouched.train.pixels is None
    synthetic = build_dataset("synthetic", TINY_RECIPE["data"]["options"])
    assert cache_in_memory(synthetic, spec.data) == [] and synthetic.in_memory


def test_a_cached_run_crops_as_an_in_memory_dataset_and_evaluates_as_the_files(folder, tmp_path, monkeypatch):
    """Cached runs crop as in-memory data of those pixels and evaluate exactly as cache off reads the files."""
    cached = build(tmp_path, recipe(folder), "cached")
    assert any("decoded into memory once" in note for note in cached.notes)
    files = build(tmp_path, recipe(folder, cache="off"), "files")
    assert files.dataset.train.pixels is None and not any("memory" in note for note in files.notes)
    assert same_views(views(cached), views(files)) and len(views(cached)) > 0

    train, test = cached.dataset.train, cached.dataset.test
    arrays = Dataset("arrays", ImageSplit(train.pixels.clone(), train.labels.clone()),
                     ImageSplit(test.pixels.clone(), test.labels.clone()), list(cached.dataset.classes),
                     cached.dataset.mean, cached.dataset.std)
    monkeypatch.setattr(setup, "load_dataset", lambda spec: arrays)
    in_memory = build(tmp_path, recipe(folder), "arrays")
    assert in_memory.dataset.in_memory and torch.equal(in_memory.subset.indices, cached.subset.indices)
    assert same_batches(batches(cached), batches(in_memory))
    monkeypatch.undo()

    whole = [build(tmp_path, recipe(folder, cache=cache, crops=WHOLE), f"whole_{cache}") for cache in ("auto", "off")]
    for a, b in zip(*(batches(run) for run in whole)):
        labeled = len(a.labeled) // 2  # method.mixup appends a mixed copy, drawn from the (different) generator
        assert torch.allclose(a.unlabeled[0], b.unlabeled[0], atol=1e-5, rtol=0)
        assert torch.allclose(a.labeled[:labeled], b.labeled[:labeled], atol=1e-5, rtol=0)
        assert torch.equal(a.labeled_targets[:labeled], b.labeled_targets[:labeled])


def test_a_grey_folder_trains_on_one_channel_alike_from_memory_and_from_its_files(tmp_path):
    """channels 1: the cache holds N x 1 x H x W pixels (a third of the RGB bytes) equal to the files' grey decode;
    crops, labeled views and evaluation views have one channel, and cached and file runs see the same images."""
    grey = tmp_path / "grey"
    image_tree(grey / "train", CLASSES, per_class=6, grey=True)
    image_tree(grey / "val", CLASSES, per_class=2, start_seed=50, grey=True)
    cached = build(tmp_path, recipe(grey, channels=1, crops=WHOLE), "cached")
    assert cached.notes[0] == "training images decoded into memory once (24 images, 0 MiB)"
    train = cached.dataset.train
    first_conv = next(m for m in cached.method.student.modules() if isinstance(m, torch.nn.Conv2d))
    assert train.pixels.shape == (24, 1, 12, 12) and first_conv.in_channels == 1
    for index in range(len(train)):
        assert torch.equal(train.pixels[index], decode_pixels(train.path(index), channels=1))
    files = build(tmp_path, recipe(grey, cache="off", channels=1, crops=WHOLE), "files")
    assert files.dataset.train.pixels is None
    assert same_views(views(cached), views(files)) and views(files)[0][0].shape[1] == 1
    for a, b in zip(batches(cached), batches(files)):
        labeled = len(a.labeled) // 2
        assert a.unlabeled[0].shape[1] == b.unlabeled[0].shape[1] == a.labeled.shape[1] == 1
        assert torch.allclose(a.unlabeled[0], b.unlabeled[0], atol=1e-5, rtol=0)
        assert torch.allclose(a.labeled[:labeled], b.labeled[:labeled], atol=1e-5, rtol=0)


def test_a_cache_gb_too_small_reads_the_files_and_says_so(folder, tmp_path):
    """A split over cache_gb is read from its files with a note saying why, exactly as with cache off."""
    spec = recipe(folder, cache_gb=0)
    train_split = build_dataset("imagefolder", {"root": str(folder)}).train
    pixels, why = decode_split(train_split, spec.data, 0)
    assert pixels is None and why == "0.0 GiB decoded, more than data.cache_gb 0"
    small = build(tmp_path, spec, "small")
    assert small.notes[:2] == [
        "training images read from their files (not cached in memory: 0.0 GiB decoded, more than data.cache_gb 0)",
        "evaluation images read from their files (not cached in memory: 0.0 GiB decoded, more than data.cache_gb 0)"]
    assert small.dataset.train.pixels is None and small.dataset.test.pixels is None
    files = build(tmp_path, recipe(folder, cache="off"), "files")
    assert same_batches(batches(small), batches(files)) and same_views(views(small), views(files))

    training_bytes = 24 * 3 * 12 * 12
    partly = build(tmp_path, recipe(folder, cache_gb=(training_bytes + 100) / 2**30), "partly")
    assert partly.dataset.train.pixels is not None and partly.dataset.test.pixels is None
    assert partly.notes[0].startswith("training images decoded into memory once (24 images")
    assert partly.notes[1].startswith("evaluation images read from their files (not cached in memory: ")
    assert same_views(views(partly), views(files))


def test_an_unreadable_or_odd_sized_image_reads_the_split_from_its_files(folder, tmp_path):
    """An unreadable or odd-sized image makes its split read from files, so it is handled as with cache off."""
    corrupt(folder / "train" / "a" / "0_bad.png")  # sorted first
    corrupt(folder / "val" / "d" / "z_bad.png")  # sorted last
    spec = recipe(folder)
    run = build(tmp_path, spec, "cached")
    assert run.dataset.train.pixels is None and run.dataset.test.pixels is None
    assert "training images read from their files (not cached in memory: '" in run.notes[0]
    assert "0_bad.png' is unreadable (" in run.notes[0]
    assert "evaluation images read from their files" in run.notes[1] and "z_bad.png' is unreadable (" in run.notes[1]
    files = build(tmp_path, recipe(folder, cache="off"), "files")
    positions = range(2 * run.batches.unlabeled.batches_per_pass)  # two passes: the bad image is drawn at least once
    assert same_batches(batches(run, positions), batches(files, positions))
    assert run.batches.corrupt_images == files.batches.corrupt_images > 0
    cached_views, file_views = views(run), views(files)
    assert same_views(cached_views, file_views) and sum(len(labels) for _, labels in cached_views) == 8
    assert run.eval_views.unreadable == files.eval_views.unreadable == 1

    other = tmp_path / "other"
    image_tree(other / "train", CLASSES, per_class=3)
    save(other / "train" / "b" / "b_9.png", stripes(1, 9, size=16))
    split = build_dataset("imagefolder", {"root": str(other), "eval_dir": None}).train
    pixels, why = decode_split(split, recipe(other).data, 2**30)
    assert pixels is None and why == "'b/b_9.png' is 16 x 16 px, not 12 x 12"
