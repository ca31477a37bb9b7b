"""Loader workers: crops are exact, decoded once, independent of worker and process counts; bad files skipped."""
import pytest
import torch

from semiclust.data.datasets import build_dataset
from semiclust.data.loader import EvalFiles, TrainFiles, center_crop, cut_crops, make_loader, read_with_substitutes
from semiclust.data.streams import labeled_stream, unlabeled_stream
from semiclust.recipe import CropGroup, EvalView, Loader
from tests.data.files import corrupt, image_tree

GROUPS = [CropGroup(count=2, size=8, scale=(0.4, 1.0)), CropGroup(count=3, size=4, scale=(0.1, 0.4))]
LABELED = CropGroup(size=8, scale=(0.5, 1.0))


@pytest.fixture()
def folder(tmp_path):
    image_tree(tmp_path / "train", ["a", "b", "c", "d"], per_class=6)
    image_tree(tmp_path / "val", ["a", "b", "c", "d"], per_class=2, start_seed=500)
    return build_dataset("imagefolder", {"root": str(tmp_path)})


def test_whole_image_crop_is_the_image_and_flip_mirrors_it():
    image = torch.randint(0, 256, (3, 10, 10), dtype=torch.uint8)
    whole = CropGroup(count=1, size=10, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0)
    assert torch.equal(cut_crops(image, whole, torch.Generator().manual_seed(0))[0], image)
    mirrored = whole.model_copy(update={"flip": 1.0})
    assert torch.equal(cut_crops(image, mirrored, torch.Generator().manual_seed(0))[0], image.flip(-1))


def test_center_crop_matches_slicing_when_no_resize_is_needed():
    image = torch.randint(0, 256, (3, 12, 20), dtype=torch.uint8)
    assert torch.equal(center_crop(image, EvalView(size=8, resize=12)), image[:, 2:10, 6:14])
    assert center_crop(image, EvalView(size=8, resize=9)).shape == (3, 8, 8)


def _items(dataset, rank, world, batch_u=8, batch_l=4, position=3):
    subset = torch.arange(0, 24, 2)
    files = TrainFiles(dataset.train, unlabeled_stream(len(dataset.train), batch_u // world, 0, rank, world),
                       labeled_stream(subset, batch_l // world, 0, rank, world), GROUPS, LABELED, 0, rank, world)
    return files[position]


def test_crops_do_not_depend_on_the_number_of_processes(folder):
    single = _items(folder, 0, 1)
    shares = [_items(folder, r, 2) for r in range(2)]
    assert len(single["unlabeled"]) == 5 and single["unlabeled"][2].shape == (8, 3, 4, 4)
    for slot, whole in enumerate(single["unlabeled"]):
        interleaved = torch.stack([shares[j % 2]["unlabeled"][slot][j // 2] for j in range(8)])
        assert torch.equal(interleaved, whole)  # global row j lives on process j % 2 at position j // 2
    interleaved = torch.stack([shares[j % 2]["labeled"][j // 2] for j in range(4)])
    assert torch.equal(interleaved, single["labeled"])
    assert single["labels"].tolist() == [int(folder.train.labels[i]) for i in
                                         labeled_stream(torch.arange(0, 24, 2), 4, 0).indices(3)]


def test_crops_do_not_depend_on_the_number_of_workers(folder):
    files = TrainFiles(folder.train, unlabeled_stream(len(folder.train), 8, 0), None, GROUPS, LABELED, 0, 0, 1)
    direct = [files[p] for p in range(4)]
    loaded = list(make_loader(files, range(4), Loader(workers=2, prefetch=1), torch.device("cpu")))
    assert [item["position"] for item in loaded] == [0, 1, 2, 3]
    for a, b in zip(direct, loaded):
        assert all(torch.equal(x, y) for x, y in zip(a["unlabeled"], b["unlabeled"]))


def test_an_unreadable_image_is_replaced_by_the_next_readable_one_and_reported(folder):
    bad = corrupt(folder.train.path(5))
    pool = torch.arange(len(folder.train))
    read = read_with_substitutes(folder.train, 5, pool)
    assert [c.path for c in read.corrupt] == [str(bad)] and read.corrupt[0].reason
    assert torch.equal(read.image, read_with_substitutes(folder.train, 6, pool).image)
    files = TrainFiles(folder.train, unlabeled_stream(len(folder.train), 24, 0), None, GROUPS, LABELED, 0, 0, 1)
    item = files[0]  # the whole training set in one batch: the bad file is met, the batch stays full
    assert item["unlabeled"][0].shape[0] == 24 and [c.path for c in item["corrupt"]] == [str(bad)]


def test_eval_files_leave_unreadable_images_out(folder):
    corrupt(folder.test.path(1))
    items = EvalFiles(folder.test, EvalView(size=8, resize=10), batch_size=3)
    batches = [items[b] for b in range(len(items))]
    assert [len(b["labels"]) for b in batches] == [2, 3, 2] and len(batches[0]["corrupt"]) == 1
    assert torch.cat([b["labels"] for b in batches]).tolist() == [0, 1, 1, 2, 2, 3, 3]
