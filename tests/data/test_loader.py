"""Loader workers: crops are exact, decoded once, independent of worker and process counts; bad files skipped."""
import pytest
import torch

from semiclust.data.datasets import build_dataset
from semiclust.data.decode import decode_rgb
from semiclust.data.eval_views import EvalViews
from semiclust.data.loader import EvalFiles, TrainFiles, cut_crops, make_loader, read_with_substitutes
from semiclust.data.datasets import ImageSplit
from semiclust.data.transforms import center_view
from semiclust.data.streams import labeled_stream, unlabeled_stream
from semiclust.config.schema import CropGroup, EvalView, Loader
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


def test_center_view_matches_slicing_when_no_resize_is_needed():
    image = torch.randint(0, 256, (1, 3, 12, 20), dtype=torch.uint8)
    assert torch.equal(center_view(image, EvalView(size=8, resize=12)), image[..., 2:10, 6:14].float() / 255)
    assert center_view(image, EvalView(size=8, resize=9)).shape == (1, 3, 8, 8)


@pytest.mark.parametrize("view", [EvalView(size=8, resize=10), EvalView(size=6), EvalView(size=16, interpolation="bicubic")])
def test_file_and_in_memory_evaluation_views_agree(folder, view):
    """The one evaluation view: the same images as files (cut by loader workers, handed over as uint8)
    and as an in-memory split give the same normalised views, to within uint8 rounding."""
    files = folder.test
    pixels = torch.stack([decode_rgb(files.path(i)) for i in range(len(files))])
    memory = ImageSplit(pixels, files.labels)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    from_files = torch.cat([x for x, _ in EvalViews(files, view, mean, std, 3, torch.device("cpu"), Loader(workers=0))])
    from_memory = torch.cat([x for x, _ in EvalViews(memory, view, mean, std, 3, torch.device("cpu"))])
    rounding = 0.5 / 255 / min(std)
    assert from_files.shape == from_memory.shape == (len(files), 3, view.size, view.size)
    assert (from_files - from_memory).abs().max() <= rounding * (1 + 1e-5)


def _items(dataset, rank, world, batch_u=8, batch_l=4, position=3):
    subset = torch.arange(0, 24, 2)
    files = TrainFiles(dataset.train, unlabeled_stream(len(dataset.train), batch_u // world, 0, rank, world),
                       labeled_stream(subset, batch_l // world, 0, rank, world), GROUPS, LABELED, 0, rank, world)
    return files[position]


def test_crops_do_not_depend_on_the_number_of_processes(folder):
    single = _items(folder, 0, 1)
    shares = [_items(folder, r, 2) for r in range(2)]
    assert [t.shape for t in single["unlabeled"]] == [(16, 3, 8, 8), (24, 3, 4, 4)]  # copy-major per group
    for group, whole in zip(GROUPS, single["unlabeled"]):
        index = 0 if group is GROUPS[0] else 1
        for k in range(group.count):
            for j in range(8):  # global row j lives on process j % 2 at position j // 2
                assert torch.equal(shares[j % 2]["unlabeled"][index][k * 4 + j // 2], whole[k * 8 + j])
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
        assert len(a["unlabeled"]) == len(b["unlabeled"]) == 2
        assert all(torch.equal(x, y) for x, y in zip(a["unlabeled"], b["unlabeled"]))


def test_a_substituted_labeled_image_carries_its_own_label(tmp_path):
    image_tree(tmp_path / "train", ["a", "b"], per_class=2)
    dataset = build_dataset("imagefolder", {"root": str(tmp_path), "eval_dir": None})
    corrupt(dataset.train.path(1))  # a/a_1.png: its substitute is b/b_0.png, of the other class
    files = TrainFiles(dataset.train, None, labeled_stream(torch.arange(4), 4, 0), GROUPS, LABELED, 0, 0, 1)
    item = files[0]
    order = labeled_stream(torch.arange(4), 4, 0).indices(0).tolist()
    expected = [1 if i == 1 else int(dataset.train.labels[i]) for i in order]
    assert item["labels"].tolist() == expected and len(item["corrupt"]) == 1


def test_a_batch_that_cannot_be_made_returns_its_error_instead_of_raising_in_the_worker(folder):
    for i in range(len(folder.train)):
        corrupt(folder.train.path(i))
    files = TrainFiles(folder.train, unlabeled_stream(len(folder.train), 8, 0), None, GROUPS, LABELED, 0, 0, 1)
    item = next(iter(make_loader(files, range(1), Loader(workers=1), torch.device("cpu"))))
    assert "16 images in a row could not be read" in item["error"] and "Traceback" not in item["error"]


def test_an_unreadable_image_is_replaced_by_the_next_readable_one_and_reported(folder):
    bad = corrupt(folder.train.path(5))
    pool = torch.arange(len(folder.train))
    read = read_with_substitutes(folder.train, 5, pool)
    assert [c.path for c in read.corrupt] == [str(bad)] and read.corrupt[0].reason
    assert torch.equal(read.image, read_with_substitutes(folder.train, 6, pool).image)
    files = TrainFiles(folder.train, unlabeled_stream(len(folder.train), 24, 0), None, GROUPS, LABELED, 0, 0, 1)
    item = files[0]  # the whole training set in one batch: the bad file is met, the batch stays full
    assert item["unlabeled"][0].shape[0] == 2 * 24 and [c.path for c in item["corrupt"]] == [str(bad)]


def test_eval_files_leave_unreadable_images_out(folder):
    corrupt(folder.test.path(1))
    items = EvalFiles(folder.test, EvalView(size=8, resize=10), batch_size=3)
    batches = [items[b] for b in range(len(items))]
    assert [len(b["labels"]) for b in batches] == [2, 3, 2] and len(batches[0]["corrupt"]) == 1
    assert torch.cat([b["labels"] for b in batches]).tolist() == [0, 1, 1, 2, 2, 3, 3]
