import pytest
import torch

from semiclust.data.datasets import ImageSplit
from semiclust.data.streams import labeled_stream, unlabeled_stream
from semiclust.data.subsets import choose_labeled, load_subset, save_subset
from semiclust.errors import SemiclustError
from semiclust.config.schema import Labels

LABELS = torch.arange(10).repeat_interleave(20)  # 10 classes x 20 images
SPLIT = ImageSplit(torch.zeros(len(LABELS), 1, 2, 2, dtype=torch.uint8), LABELS)


def test_per_class_is_balanced_seeded_and_saved(tmp_path):
    subset = choose_labeled(SPLIT, Labels(per_class=3), seed=0, num_classes=10)
    assert torch.equal(torch.bincount(LABELS[subset.indices], minlength=10), torch.full((10,), 3))
    again = choose_labeled(SPLIT, Labels(per_class=3), seed=0, num_classes=10)
    other = choose_labeled(SPLIT, Labels(per_class=3), seed=1, num_classes=10)
    assert torch.equal(subset.indices, again.indices) and not torch.equal(subset.indices, other.indices)
    fixed = choose_labeled(SPLIT, Labels(per_class=3, seed=7), seed=1, num_classes=10)
    assert torch.equal(fixed.indices, choose_labeled(SPLIT, Labels(per_class=3, seed=7), seed=2, num_classes=10).indices)
    save_subset(subset, SPLIT, tmp_path / "s.json")
    loaded = load_subset(tmp_path / "s.json")
    assert torch.equal(loaded.indices, subset.indices) and loaded.digest == subset.digest


def test_fraction_and_list(tmp_path):
    subset = choose_labeled(SPLIT, Labels(fraction=0.1), seed=0, num_classes=10)
    assert torch.equal(torch.bincount(LABELS[subset.indices], minlength=10), torch.full((10,), 2))
    listing = tmp_path / "list.txt"
    listing.write_text("# chosen by hand\n5\n17\n\n3\n")
    assert choose_labeled(SPLIT, Labels(list=listing), 0, 10).indices.tolist() == [3, 5, 17]


def test_subset_errors(tmp_path):
    with pytest.raises(SemiclustError, match="'0' has 20, '1' has 20, "):
        choose_labeled(SPLIT, Labels(per_class=21), 0, 10)
    bad = tmp_path / "bad.txt"
    bad.write_text("1\n9999\n")
    with pytest.raises(SemiclustError, match="'9999'"):
        choose_labeled(SPLIT, Labels(list=bad), 0, 10)
    with pytest.raises(SemiclustError, match="does not exist"):
        choose_labeled(SPLIT, Labels(list=tmp_path / "missing.txt"), 0, 10)


def test_tampered_subset_file_is_refused(tmp_path):
    subset = choose_labeled(SPLIT, Labels(per_class=1), seed=0, num_classes=10)
    save_subset(subset, SPLIT, tmp_path / "s.json")
    text = (tmp_path / "s.json").read_text().replace(f"{subset.indices[0].item()},", "199,", 1)
    (tmp_path / "s.json").write_text(text)
    with pytest.raises(SemiclustError, match="edited"):
        load_subset(tmp_path / "s.json")


def test_unlabeled_epoch_visits_each_image_once_and_reshuffles():
    stream = unlabeled_stream(100, 10, seed=0)
    assert stream.batches_per_pass == 10
    epoch0 = torch.cat([stream.indices(s) for s in range(10)])
    epoch1 = torch.cat([stream.indices(s) for s in range(10, 20)])
    assert sorted(epoch0.tolist()) == list(range(100)) and not torch.equal(epoch0, epoch1)


def test_streams_are_pure_functions_of_the_step():
    """A fresh stream asked for step 37 gives what a stream that walked there gives (exact resume)."""
    walked = labeled_stream(torch.arange(50, 80), 8, seed=3)
    seen = [walked.indices(s) for s in range(40)]
    fresh = labeled_stream(torch.arange(50, 80), 8, seed=3)
    assert torch.equal(fresh.indices(37), seen[37])
    # a new pass reshuffles the labeled set (no replay of the same order)
    per_pass = walked.batches_per_pass
    assert not torch.equal(torch.cat(seen[:per_pass]), torch.cat(seen[per_pass : 2 * per_pass]))


def test_processes_get_disjoint_shards():
    shards = [torch.cat([unlabeled_stream(64, 8, 0, rank=r, world=2).indices(s) for s in range(4)]) for r in range(2)]
    assert set(shards[0].tolist()).isdisjoint(shards[1].tolist())
    assert sorted(torch.cat(shards).tolist()) == list(range(64))


def test_batches_larger_than_the_data_are_refused():
    with pytest.raises(SemiclustError, match="lower data.batch.labeled"):
        labeled_stream(torch.arange(5), 8, seed=0)
    with pytest.raises(SemiclustError, match="lower data.batch.unlabeled"):
        unlabeled_stream(5, 8, seed=0)


def test_listing_change_names_what_moved_under_a_recorded_subset(tmp_path):
    from semiclust.data.datasets import FileSplit, split_rows
    from semiclust.data.subsets import listing_change

    split = FileSplit(tmp_path, ["a.png", "b.png", "c.png"], torch.tensor([0, 1, 0]))
    chosen = torch.tensor([0, 2])
    assert listing_change(chosen, split, ["a.png", "c.png"], 3) is None
    assert listing_change(chosen, split, ["a.png", "c.png"], 4) == "the training split had 4 images and now has 3"
    assert "'c.png' is now 'x.png'" in listing_change(chosen, FileSplit(tmp_path, ["a.png", "b.png", "x.png"],
                                                                      split.labels), ["a.png", "c.png"])
    assert "now has only 3 images" in listing_change(torch.tensor([5]), split)
    rows = split_rows(split, chosen)
    assert rows.files == ["a.png", "c.png"] and rows.labels.tolist() == [0, 0]
