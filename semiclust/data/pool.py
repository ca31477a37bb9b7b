"""`pool`: images nobody has labeled yet, for a self-supervised run (SwAV, DINO) such as the one
`semiclust label suggest` trains before it picks the images to label.

The pool is either the image files anywhere under a folder (any layout, flat or nested) or the training split of
a registered dataset with its labels removed. It has no classes: its `clusters` prototypes stand in for them
(named `cluster_0`, `cluster_1`, ...), and it has no evaluation split. An empty folder is a listing problem, so
training refuses it like any other dataset's problems.
"""
from __future__ import annotations

from pathlib import Path

import torch

from semiclust.data.datasets import DATASETS, UNLABELED, Dataset, FileSplit, ImageSplit, build_dataset
from semiclust.data.decode import printable
from semiclust.data.folders import _stats, images_under
from semiclust.errors import SemiclustError

POOL = "pool"
IMAGE_SUFFIXES = ".jpg, .jpeg, .png, .bmp, .gif, .webp, .tif, .tiff, .ppm or .pgm"


def cluster_names(clusters: int) -> list[str]:
    """The stand-in class names of a pool's prototypes."""
    return [f"cluster_{k}" for k in range(clusters)]


def _without_labels(dataset: Dataset, clusters: int) -> Dataset:
    """A registered dataset's training split with every label removed (-1), no evaluation split."""
    train = dataset.train
    labels = torch.full((len(train),), UNLABELED, dtype=torch.long)
    if isinstance(train, ImageSplit):
        split = ImageSplit(train.images, labels)
    else:
        split = FileSplit(train.root, train.files, labels, channels=train.channels)
    return Dataset(POOL, split, None, cluster_names(clusters), dataset.mean, dataset.std, test_split_name="none",
                   problems=list(dataset.problems))


@DATASETS.register(POOL)
def pool(root: str | None = None, dataset: str | None = None, options: dict | None = None, clusters: int = 30,
         mean: list[float] | None = None, std: list[float] | None = None, channels: int = 3) -> Dataset:
    """Unlabeled images for SwAV / DINO: the image files under `root` (searched recursively), or the training split
    of the registered `dataset` (with its `options`) without its labels; `clusters` prototypes, no evaluation split.
    `channels: 1` decodes files to grey, as for `imagefolder`."""
    if type(clusters) is not int or clusters < 2:
        raise SemiclustError(f"data.options.clusters is {clusters!r}: a pool needs at least 2 clusters (prototypes).")
    if (root is None) == (dataset is None):
        raise SemiclustError("the pool dataset needs either data.options.root (a folder of images) or "
                             "data.options.dataset (a registered dataset, with its data.options.options), not both.")
    if dataset is not None:
        if dataset == POOL:
            raise SemiclustError("data.options.dataset of a pool cannot be 'pool' itself; name a registered dataset.")
        return _without_labels(build_dataset(dataset, dict(options or {})), clusters)
    mean, std = _stats(mean, std, channels)
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise SemiclustError(f"pool: '{printable(folder)}' is not a folder; give the folder that holds the images "
                             "(any layout: they are searched recursively).")
    files = images_under(folder)
    problems = [] if len(files) else [f"the folder '{printable(folder)}' holds no images (searched recursively for "
                                      f"files ending {IMAGE_SUFFIXES}); point at the folder of your images"]
    split = FileSplit(folder, files, torch.full((len(files),), UNLABELED, dtype=torch.long), channels=channels)
    return Dataset(POOL, split, None, cluster_names(clusters), mean, std, test_split_name="none", problems=problems)
