import pytest
import torch

from semiclust.data.datasets import DATASETS, build_dataset
from semiclust.errors import SemiclustError


def test_digits_fixed_split():
    first, second = build_dataset("digits", {}), build_dataset("digits", {})
    assert len(first.train) == 1437 and len(first.test) == 360
    assert torch.equal(torch.bincount(first.test.labels), torch.full((10,), 36))
    assert torch.equal(first.test.images, second.test.images)  # fixed, not drawn per run
    assert first.channels == 1 and first.train.images.dtype == torch.uint8 and first.train.images.shape[-1] == 8
    # train and test are disjoint: no test image appears in the training split
    train_rows = {bytes(img.flatten().tolist()) + bytes([int(l)]) for img, l in zip(first.train.images, first.train.labels)}
    from sklearn.datasets import load_digits

    total = len(load_digits().target)
    assert len(first.train) + len(first.test) == total
    overlap = sum(bytes(img.flatten().tolist()) + bytes([int(l)]) in train_rows
                  for img, l in zip(first.test.images, first.test.labels))
    assert overlap <= 2  # load_digits itself holds a couple of exact duplicates
    mean = first.train.images.float().div(255).mean().item()
    assert first.mean[0] == pytest.approx(mean, rel=1e-5)


def test_synthetic_is_seeded_and_configurable():
    a = build_dataset("synthetic", {"num_classes": 3, "size": 6, "channels": 3, "seed": 1})
    b = build_dataset("synthetic", {"num_classes": 3, "size": 6, "channels": 3, "seed": 1})
    assert torch.equal(a.train.images, b.train.images) and a.train.images.shape == (96, 3, 6, 6)
    assert a.classes == ["class_0", "class_1", "class_2"]


def test_unknown_dataset_and_option_errors():
    with pytest.raises(SemiclustError, match="Did you mean 'digits'"):
        DATASETS.get("digit")
    with pytest.raises(SemiclustError, match="unknown option.*sizee.*accepted options: num_classes"):
        build_dataset("synthetic", {"sizee": 4})
