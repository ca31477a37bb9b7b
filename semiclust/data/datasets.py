"""Datasets: the splits, the `Dataset` every registered entry returns, and the generated ones (digits, synthetic).

Two kinds of split. An `ImageSplit` holds uint8 pixels of equal-sized images (digits, CIFAR, STL-10,
SVHN, the MNIST family), read once from local files and augmented in batches on the training
device. A `FileSplit` lists image files of any size (image folders, ImageNet, labeled lists),
decoded by DataLoader workers. Labels are class indices, or -1 where an image has no label (the
unlabeled-only part of a training set). Nothing is ever downloaded.
"""
from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from semiclust.data.names import FileNames
from semiclust.errors import SemiclustError
from semiclust.registry import DATASETS


UNLABELED = -1  # the label of an image that has none


class StackedImages:
    """Several uint8 N_i x C x H x W tensors (e.g. memory-mapped files) seen as one, without copying:
    STL-10's 100,000 unlabeled images stay on disk until a batch reads its rows."""

    def __init__(self, parts: list[torch.Tensor]):
        if not parts or any(p.shape[1:] != parts[0].shape[1:] for p in parts):
            raise ValueError("stacked image tensors must share C x H x W")
        self.parts = parts
        self.offsets = torch.tensor([0, *[len(p) for p in parts]]).cumsum(0)
        self.dtype, self.ndim = parts[0].dtype, 4
        self.shape = torch.Size([int(self.offsets[-1]), *parts[0].shape[1:]])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        part = torch.bucketize(index, self.offsets[1:], right=True)
        out = torch.empty((len(index), *self.shape[1:]), dtype=self.dtype)
        for p in part.unique().tolist():
            rows = torch.nonzero(part == p).flatten()
            out[rows] = self.parts[p][index[rows] - self.offsets[p]]
        return out


@dataclass
class ImageSplit:
    """Images (uint8, N x C x H x W, a tensor or StackedImages) and integer labels (N,; -1 = none)."""

    images: torch.Tensor | StackedImages
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError("images must be a uint8 N x C x H x W tensor")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must have one entry per image")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]


@dataclass
class FileSplit:
    """Image files (paths relative to `root`, in a fixed sorted order) and labels (-1 = none).
    The paths are one `FileNames` (a list of str given here becomes one), which loader workers read without
    copying it. Decoded by the loader to RGB, or to grey when `channels` is 1 (`data.options.channels`); images
    may differ in size. `pixels` holds them all decoded (uint8, N x channels x H x W, in shared memory) when they were
    cached (data/cache.py): training and evaluation then crop them in batches like an in-memory split, and
    everything else still sees the files."""

    root: Path
    files: FileNames
    labels: torch.Tensor
    pixels: torch.Tensor | None = None
    channels: int = 3

    def __post_init__(self) -> None:
        self.files = FileNames.of(self.files)
        if self.labels.shape != (len(self.files),):
            raise ValueError("labels must have one entry per file")
        if self.channels not in (1, 3):
            raise ValueError("a file split decodes to 3 channels (RGB) or 1 (grey)")

    def __len__(self) -> int:
        return len(self.files)

    def path(self, index: int) -> Path:
        return self.root / self.files[index]

    def location(self, index: int) -> str:
        """`path(index)` as a str, made without pathlib: a Path parses its name and interns the parts, which grows
        the interpreter's table of interned strings in each loader worker that reads many paths (about 15 MB)."""
        return os.path.join(self.root, self.files[index])

    def locations(self, indices) -> list[str]:
        """`location` of each of `indices`, in one pass."""
        root = os.fspath(self.root)
        return [os.path.join(root, name) for name in self.files.names_at(indices)]


Split = ImageSplit | FileSplit


def split_rows(split: Split, indices: torch.Tensor) -> Split:
    """The images at `indices` as a split of their own (e.g. the labeled subset, for a kNN memory)."""
    if isinstance(split, FileSplit):
        pixels = split.pixels[indices] if split.pixels is not None else None
        return FileSplit(split.root, split.files.take(indices.tolist()), split.labels[indices], pixels, split.channels)
    return ImageSplit(split.images[torch.as_tensor(indices)], split.labels[indices])


def indexed(split: Split) -> Split:
    """The split with each image's label replaced by its own index: the evaluation views then say which images
    they hold (unreadable files are left out of them)."""
    rows = torch.arange(len(split), dtype=torch.long)
    if isinstance(split, ImageSplit):
        return ImageSplit(split.images, rows)
    return FileSplit(split.root, split.files, rows, split.pixels, split.channels)


@dataclass
class Dataset:
    """A training split (its unlabeled-only images carry label -1), an evaluation split (None when
    the user has none) and what the loader found wrong while reading the files (`problems`:
    missing files, empty classes, labels outside the class set); `semiclust data check` lists them
    and training refuses to start while there are any."""

    name: str
    train: Split
    test: Split | None
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    test_split_name: str = "test"
    problems: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.train.channels

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, ImageSplit)


def dataset_options(name: str) -> dict[str, inspect.Parameter]:
    """The `data.options` the registered dataset `name` accepts: its factory's parameters."""
    return dict(inspect.signature(DATASETS.get(name)).parameters)


def build_dataset(name: str, options: dict[str, Any]) -> Dataset:
    """Call the registered factory with the recipe's `data.options`, rejecting unknown options."""
    factory = DATASETS.get(name)
    parameters = dataset_options(name)
    accepted = list(parameters)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise SemiclustError(
            f"data.options for dataset '{name}' has unknown option(s) {', '.join(unknown)}; "
            f"accepted options: {', '.join(accepted) or 'none'}."
        )
    required = [k for k, p in parameters.items() if p.default is inspect.Parameter.empty and k not in options]
    if required:
        raise SemiclustError(
            f"dataset '{name}' needs data.options {', '.join(required)} (e.g. `options: {{{required[0]}: /path/to/data}}` "
            f"in the recipe, or --set data.options.{required[0]}=...); accepted options: {', '.join(accepted)}."
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
