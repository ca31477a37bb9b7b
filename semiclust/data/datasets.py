"""Dataset registry: each entry returns train/test images as uint8 tensors plus class names.

In-memory datasets (digits, synthetic; later CIFAR and friends) are augmented in batches on the
training device, which is what makes the embedded dataset fast on a laptop CPU.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from semiclust.errors import SemiclustError
from semiclust.registry import Registry


@dataclass
class ImageSplit:
    """Images (uint8, N x C x H x W) and integer labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError("images must be a uint8 N x C x H x W tensor")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must have one entry per image")

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class Dataset:
    name: str
    train: ImageSplit
    test: ImageSplit
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    test_split_name: str = "test"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.train.images.shape[1]


DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")


def build_dataset(name: str, options: dict[str, Any]) -> Dataset:
    """Call the registered factory with the recipe's `data.options`, rejecting unknown options."""
    factory = DATASETS.get(name)
    accepted = [p for p in inspect.signature(factory).parameters if p != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise SemiclustError(
            f"data.options for dataset '{name}' has unknown option(s) {', '.join(unknown)}; "
            f"accepted options: {', '.join(accepted) or 'none'}."
        )
    return factory(**options)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    x = images.float().div_(255)
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).tolist())


DIGITS_TEST_PER_CLASS = 36
DIGITS_SPLIT_SEED = 0


@DATASETS.register("digits")
def digits() -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), 1 channel.

    Fixed split, independent of the run's seed: 36 images per class (360 in all) form the test
    split, chosen by numpy's legacy RandomState(0) permutation of each class's members (a
    generator numpy keeps stable across versions); the other 1,437 are the training set.
    (Not the last 36 of each class: load_digits is ordered by writer, so its tail is a few
    writers' style; a fully supervised SVC scores 93.9% there but 98.3% on a random split.)
    Pixels 0..16 are rescaled to 0..255.
    """
    import numpy as np
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().mul(255.0 / 16.0).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).long()
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    state = np.random.RandomState(DIGITS_SPLIT_SEED)
    for cls in range(10):
        members = np.flatnonzero(bunch.target == cls)
        is_test[torch.from_numpy(state.permutation(members)[:DIGITS_TEST_PER_CLASS])] = True
    train = ImageSplit(images[~is_test].contiguous(), labels[~is_test].contiguous())
    test = ImageSplit(images[is_test].contiguous(), labels[is_test].contiguous())
    mean, std = channel_stats(train.images)
    return Dataset("digits", train, test, [str(c) for c in range(10)], mean, std)


@DATASETS.register("synthetic")
def synthetic(
    num_classes: int = 4,
    size: int = 8,
    channels: int = 1,
    train_per_class: int = 32,
    test_per_class: int = 8,
    noise: float = 0.1,
    seed: int = 0,
) -> Dataset:
    """Generated, learnable data for tests: class c is a stripe pattern at angle pi * c / num_classes
    with a random phase per image, plus pixel noise. Orientation survives crops and resizing (not
    horizontal flips, so recipes on it should use flip: 0)."""
    if num_classes < 2 or size < 2 or channels < 1 or train_per_class < 1 or test_per_class < 1:
        raise SemiclustError(
            "synthetic dataset options must be positive (num_classes >= 2, size >= 2); check data.options."
        )
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    frequency = 2 * math.pi / 4.0  # a period of 4 pixels

    def make(per_class: int) -> ImageSplit:
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        angle = (math.pi * labels.float() / num_classes).view(-1, 1, 1)
        phase = (2 * math.pi * torch.rand(len(labels), generator=generator)).view(-1, 1, 1)
        stripes = 0.5 + 0.4 * torch.sin(frequency * (xs * torch.cos(angle) + ys * torch.sin(angle)) + phase)
        pixels = stripes.unsqueeze(1).expand(-1, channels, -1, -1)
        pixels = pixels + noise * torch.randn(len(labels), channels, size, size, generator=generator)
        return ImageSplit(pixels.clamp(0, 1).mul(255).round().to(torch.uint8), labels)

    train, test = make(train_per_class), make(test_per_class)
    mean, std = channel_stats(train.images)
    return Dataset("synthetic", train, test, [f"class_{c}" for c in range(num_classes)], mean, std)
