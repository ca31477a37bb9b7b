"""On-disk array datasets read into memory: CIFAR-10/100, STL-10, SVHN, MNIST, Fashion-MNIST, KMNIST.

Each entry reads the files as torchvision stores them under `root` (the recipe's `data.options.root`)
and never downloads: a missing file is a SemiclustError that names the paths searched and where to get
the data. A file of the wrong size or format is a SemiclustError naming the file, not a traceback.
Mean and std are the published per-dataset constants (not recomputed from the files).
"""
from __future__ import annotations

import gzip
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semiclust.data.datasets import DATASETS, UNLABELED, Dataset, ImageSplit, StackedImages
from semiclust.errors import SemiclustError

NEVER_DOWNLOADS = "semiclust never downloads"


def _root_path(dataset: str, root: Any) -> Path:
    """The `root` option as a Path (`~` expanded); a non-string value is a recipe error."""
    if not isinstance(root, (str, Path)) or not str(root):
        raise SemiclustError(f"data.options.root for dataset '{dataset}' must be a folder path, got {root!r}.")
    return Path(root).expanduser()


def _find(folder: Path, name: str, suffixes: tuple[str, ...]) -> Path | None:
    """`folder/name` with the first of `suffixes` that exists as a file, or None."""
    return next((folder / (name + s) for s in suffixes if (folder / (name + s)).is_file()), None)


def _locate(dataset: str, folders: list[Path], names: list[str], how: str,
            suffixes: tuple[str, ...] = ("",)) -> dict[str, Path]:
    """The paths of all `names` in the first of `folders` that holds every one of them (each name may
    carry one of `suffixes`, e.g. ".gz"); otherwise a SemiclustError listing what was searched."""
    lacking = []
    for folder in folders:
        found = {name: _find(folder, name, suffixes) for name in names}
        if all(found.values()):
            return found  # type: ignore[return-value]
        missing = ", ".join(name for name, path in found.items() if path is None)
        lacking.append(f"{folder} lacks {missing}" if folder.is_dir() else f"{folder} does not exist")
    gz = " (each optionally gzipped, with a .gz suffix)" if len(suffixes) > 1 else ""
    raise SemiclustError(
        f"dataset '{dataset}' not found: expected {', '.join(names)}{gz} in {' or '.join(map(str, folders))} "
        f"({'; '.join(lacking)}). If the data moved, point the recipe at its new place with --set "
        f"data.options.root=NEW_PLACE. Otherwise: {how}; {NEVER_DOWNLOADS}."
    )


def _corrupt(path: Path, problem: str) -> SemiclustError:
    """The error for a file that exists but cannot be the expected data."""
    return SemiclustError(f"{path} is unreadable or corrupt: {problem}. Replace it with a fresh copy of the file.")


# --- CIFAR-10 / CIFAR-100: Python pickles of numpy arrays ------------------------------------------

_PICKLE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    *((f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("_reconstruct", "scalar")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays, lists and bytes only: a CIFAR batch never needs any other
    global, so a planted pickle cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (a CIFAR pickle holds only arrays)")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict[bytes, Any]:
    """A CIFAR pickle (keys are bytes: loaded with encoding="bytes", as written by Python 2)."""
    try:
        with open(path, "rb") as f:
            content = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as error:  # truncated or foreign files fail in many ways (EOFError, UnpicklingError, ...)
        raise _corrupt(path, f"not a CIFAR python pickle ({type(error).__name__}: {error})") from error
    if not isinstance(content, dict):
        raise _corrupt(path, f"expected a pickled dict, found {type(content).__name__}")
    return content


def _pickle_entry(path: Path, content: dict[bytes, Any], key: bytes) -> Any:
    """`content[key]`, or a SemiclustError naming the file and the missing key."""
    if key not in content:
        raise _corrupt(path, f"no {key.decode()!r} entry (has {', '.join(repr(k.decode()) for k in content)})")
    return content[key]


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N x 3 x 32 x 32 uint8; each row of b"data" is the R, G, B planes, each row-major)
    and labels (N,) of one CIFAR batch file."""
    content = _read_pickle(path)
    data = np.asarray(_pickle_entry(path, content, b"data"))
    labels = np.asarray(_pickle_entry(path, content, label_key))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise _corrupt(path, f"data is {data.dtype} {tuple(data.shape)}, expected uint8 N x 3072")
    if labels.shape != (len(data),):
        raise _corrupt(path, f"{len(labels)} labels for {len(data)} images")
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def _read_names(path: Path, key: bytes) -> list[str]:
    """Class names from a CIFAR meta pickle."""
    return [n.decode() if isinstance(n, bytes) else str(n) for n in _pickle_entry(path, _read_pickle(path), key)]


def _check_labels(path: Path, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """`labels`, after checking they index the class list."""
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise _corrupt(path, f"labels span {int(labels.min())}..{int(labels.max())}, outside the "
                             f"{num_classes} classes 0..{num_classes - 1}")
    return labels


def _cifar_split(paths: list[Path], label_key: bytes, num_classes: int) -> ImageSplit:
    """The concatenated batches of `paths` as one split."""
    batches = [_read_cifar_batch(p, label_key) for p in paths]
    for p, (_, labels) in zip(paths, batches):
        _check_labels(p, labels, num_classes)
    return ImageSplit(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))


@DATASETS.register("cifar10")
def cifar10(root: str) -> Dataset:
    """CIFAR-10 (50,000 train / 10,000 test 32x32 RGB images, 10 classes) from the python version:
    ROOT/cifar-10-batches-py/ (or ROOT itself being that folder)."""
    base = _root_path("cifar10", root)
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    files = _locate(
        "cifar10", [base / "cifar-10-batches-py", base], [*train_names, "test_batch", "batches.meta"],
        f"Download the CIFAR-10 python version from https://www.cs.toronto.edu/~kriz/cifar.html and extract "
        f"it under {base}, or run torchvision.datasets.CIFAR10('{base}', download=True) once on a machine "
        "with network access",
    )
    classes = _read_names(files["batches.meta"], b"label_names")
    train = _cifar_split([files[n] for n in train_names], b"labels", len(classes))
    test = _cifar_split([files["test_batch"]], b"labels", len(classes))
    return Dataset("cifar10", train, test, classes, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


@DATASETS.register("cifar100")
def cifar100(root: str, coarse: bool = False) -> Dataset:
    """CIFAR-100 (50,000 train / 10,000 test 32x32 RGB images) from the python version:
    ROOT/cifar-100-python/ (or ROOT itself being that folder). 100 fine classes, or with
    `coarse: true` the 20 superclasses."""
    base = _root_path("cifar100", root)
    files = _locate(
        "cifar100", [base / "cifar-100-python", base], ["train", "test", "meta"],
        f"Download the CIFAR-100 python version from https://www.cs.toronto.edu/~kriz/cifar.html and extract "
        f"it under {base}, or run torchvision.datasets.CIFAR100('{base}', download=True) once on a machine "
        "with network access",
    )
    kind = b"coarse" if coarse else b"fine"
    classes = _read_names(files["meta"], kind + b"_label_names")
    train = _cifar_split([files["train"]], kind + b"_labels", len(classes))
    test = _cifar_split([files["test"]], kind + b"_labels", len(classes))
    return Dataset("cifar100", train, test, classes, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


# --- STL-10: raw uint8 binaries, each image stored column-major --------------------------------------

STL_IMAGE = (3, 96, 96)


def _read_stl_images(path: Path) -> torch.Tensor:
    """N x 3 x 96 x 96 uint8 images of an STL-10 X file, memory-mapped (copy-on-write, nothing read
    yet): a view with the stored column-major axes swapped to row-major (y, x)."""
    size, per_image = path.stat().st_size, int(np.prod(STL_IMAGE))
    if size == 0 or size % per_image:
        raise _corrupt(path, f"{size} bytes is not a whole number of 3 x 96 x 96 images ({per_image} bytes each)")
    mapped = np.memmap(path, dtype=np.uint8, mode="c", shape=(size // per_image, *STL_IMAGE))
    return torch.from_numpy(mapped).transpose(2, 3)


def _read_stl_labels(path: Path, count: int, num_classes: int) -> torch.Tensor:
    """0-based labels of an STL-10 y file (stored as uint8 1..10), one per image of its X file."""
    labels = torch.from_numpy(np.fromfile(path, dtype=np.uint8).astype(np.int64)) - 1
    if len(labels) != count:
        raise _corrupt(path, f"{len(labels)} labels for {count} images in the matching X file")
    return _check_labels(path, labels, num_classes)


@DATASETS.register("stl10")
def stl10(root: str, unlabeled: bool = True) -> Dataset:
    """STL-10 (96x96 RGB, 10 classes) from the binary version: ROOT/stl10_binary/ (or ROOT itself).

    The train split is the 5,000 labeled train images followed by the 100,000 unlabeled ones
    (label -1), which feed the unlabeled stream; those stay memory-mapped, read a batch at a time.
    `unlabeled: false` trains on the labeled images alone (unlabeled_X.bin is then not needed).
    The test split is the 8,000 test images.
    """
    base = _root_path("stl10", root)
    names = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt"]
    files = _locate(
        "stl10", [base / "stl10_binary", base], names + (["unlabeled_X.bin"] if unlabeled else []),
        f"Download stl10_binary.tar.gz from https://cs.stanford.edu/~acoates/stl10/ and extract it under {base}, "
        f"or run torchvision.datasets.STL10('{base}', split='train+unlabeled', download=True) once on a machine "
        "with network access (or set data.options.unlabeled: false to train without unlabeled_X.bin)",
    )
    classes = [line.strip() for line in files["class_names.txt"].read_text().splitlines() if line.strip()]
    if not classes:
        raise _corrupt(files["class_names.txt"], "no class names in it")

    def labeled(split: str) -> ImageSplit:
        images = _read_stl_images(files[f"{split}_X.bin"]).contiguous()  # small: read into memory
        return ImageSplit(images, _read_stl_labels(files[f"{split}_y.bin"], len(images), len(classes)))

    train, test = labeled("train"), labeled("test")
    if unlabeled:
        extra = _read_stl_images(files["unlabeled_X.bin"])
        labels = torch.cat([train.labels, torch.full((len(extra),), UNLABELED, dtype=torch.long)])
        train = ImageSplit(StackedImages([train.images, extra]), labels)
    return Dataset("stl10", train, test, classes, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713))


# --- SVHN: MATLAB files ---------------------------------------------------------------------------------

def _read_svhn(path: Path) -> ImageSplit:
    """One SVHN .mat file: X is 32 x 32 x 3 x N (H, W, C, N), y is N x 1 with 10 for the digit 0."""
    from scipy.io import loadmat

    try:
        content = loadmat(str(path))
    except Exception as error:  # scipy raises ValueError, MatReadError, OSError, ... on bad files
        raise _corrupt(path, f"not a MATLAB file scipy can read ({type(error).__name__}: {error})") from error
    if "X" not in content or "y" not in content:
        raise _corrupt(path, "expected the variables X and y")
    images, labels = np.asarray(content["X"]), np.asarray(content["y"]).reshape(-1).astype(np.int64)
    if images.dtype != np.uint8 or images.shape[:3] != (32, 32, 3) or images.ndim != 4:
        raise _corrupt(path, f"X is {images.dtype} {tuple(images.shape)}, expected uint8 32 x 32 x 3 x N")
    if len(labels) != images.shape[3]:
        raise _corrupt(path, f"{len(labels)} labels for {images.shape[3]} images")
    if len(labels) and (labels.min() < 0 or labels.max() > 10):
        raise _corrupt(path, f"labels span {labels.min()}..{labels.max()}, expected 1..10 (10 for the digit 0)")
    images = torch.from_numpy(np.ascontiguousarray(images.transpose(3, 2, 0, 1)))  # N x C x H x W
    return ImageSplit(images, torch.from_numpy(labels % 10))


@DATASETS.register("svhn")
def svhn(root: str, extra: bool = False) -> Dataset:
    """SVHN cropped digits (32x32 RGB, 73,257 train / 26,032 test, classes "0".."9") from the .mat
    files in ROOT. `extra: true` adds the 531,131 extra images, labeled, to the train split."""
    base = _root_path("svhn", root)
    names = ["train_32x32.mat", "test_32x32.mat"] + (["extra_32x32.mat"] if extra else [])
    files = _locate(
        "svhn", [base], names,
        f"Download them from http://ufldl.stanford.edu/housenumbers/ into {base}, or run "
        f"torchvision.datasets.SVHN('{base}', split=S, download=True) for S in 'train', 'test'"
        f"{' and extra' if extra else ''} once on a machine with network access",
    )
    train = _read_svhn(files["train_32x32.mat"])
    if extra:
        more = _read_svhn(files["extra_32x32.mat"])
        train = ImageSplit(torch.cat([train.images, more.images]), torch.cat([train.labels, more.labels]))
    test = _read_svhn(files["test_32x32.mat"])
    classes = [str(c) for c in range(10)]
    return Dataset("svhn", train, test, classes, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))


# --- MNIST family: idx files ---------------------------------------------------------------------------

IDX_UINT8 = 0x08


def read_idx(path: Path) -> np.ndarray:
    """A uint8 idx file (plain or .gz) as an array of its dims. Header: two zero bytes, the type code
    (0x08 = uint8), the number of dims, then each dim as a big-endian int32."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = bytearray(f.read())
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise _corrupt(path, f"cannot read it ({type(error).__name__}: {error})") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != IDX_UINT8:
        raise _corrupt(path, f"bad idx magic {bytes(data[:4]).hex() or '(empty file)'}, expected 0000 08 NN (uint8)")
    header = 4 + 4 * data[3]
    if len(data) < header:
        raise _corrupt(path, f"the header announces {data[3]} dims but the file ends after {len(data)} bytes")
    dims = tuple(int(d) for d in np.frombuffer(bytes(data[4:header]), dtype=">i4"))
    if len(data) - header != int(np.prod(dims, dtype=np.int64)):
        raise _corrupt(path, f"{len(data) - header} data bytes for dims {' x '.join(map(str, dims))} "
                             f"(expected {int(np.prod(dims, dtype=np.int64))}; truncated?)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _mnist_family(name: str, root: Any, folder: str, classes: list[str], how: str,
                  mean: tuple[float, ...], std: tuple[float, ...]) -> Dataset:
    """An MNIST-style dataset (1-channel images, idx files) from ROOT/FOLDER/raw/ or ROOT itself."""
    base = _root_path(name, root)
    files = _locate(name, [base / folder / "raw", base], [f for pair in IDX_FILES.values() for f in pair],
                    how.format(root=base), suffixes=("", ".gz"))

    def split(which: str) -> ImageSplit:
        image_file, label_file = (files[f] for f in IDX_FILES[which])
        images, labels = read_idx(image_file), read_idx(label_file)
        if images.ndim != 3:
            raise _corrupt(image_file, f"dims {images.shape}, expected N x H x W images")
        if labels.shape != images.shape[:1]:
            raise _corrupt(label_file, f"dims {labels.shape}, expected one label for each of {len(images)} images")
        labels = _check_labels(label_file, torch.from_numpy(labels.astype(np.int64)), len(classes))
        return ImageSplit(torch.from_numpy(images).unsqueeze(1), labels)

    return Dataset(name, split("train"), split("test"), classes, mean, std)


def _torchvision_how(cls: str, url: str) -> str:
    """How to obtain an MNIST-family dataset (`{root}` is filled in by _mnist_family)."""
    return (f"Download the four files from {url} into {{root}}, or run torchvision.datasets.{cls}('{{root}}', "
            "download=True) once on a machine with network access")


@DATASETS.register("mnist")
def mnist(root: str) -> Dataset:
    """MNIST handwritten digits (60,000 train / 10,000 test 28x28 grey images): ROOT/MNIST/raw/ or ROOT."""
    return _mnist_family("mnist", root, "MNIST", [str(c) for c in range(10)],
                         _torchvision_how("MNIST", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
                         (0.1307,), (0.3081,))


@DATASETS.register("fashion_mnist")
def fashion_mnist(root: str) -> Dataset:
    """Fashion-MNIST (60,000 train / 10,000 test 28x28 grey images of clothing):
    ROOT/FashionMNIST/raw/ or ROOT."""
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
    return _mnist_family("fashion_mnist", root, "FashionMNIST", classes,
                         _torchvision_how("FashionMNIST", "https://github.com/zalandoresearch/fashion-mnist"),
                         (0.2860,), (0.3530,))


@DATASETS.register("kmnist")
def kmnist(root: str) -> Dataset:
    """Kuzushiji-MNIST (60,000 train / 10,000 test 28x28 grey images of cursive hiragana):
    ROOT/KMNIST/raw/ or ROOT."""
    classes = ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]
    return _mnist_family("kmnist", root, "KMNIST", classes,
                         _torchvision_how("KMNIST", "https://github.com/rois-codh/kmnist"),
                         (0.1918,), (0.3483,))
