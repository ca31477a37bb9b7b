"""The on-disk array datasets, read back from tiny files written here in each real format.

Every pixel value encodes its (image, channel, row, column) through a formula with distinct
coefficients, and each file is laid out from that formula by its format's own index rule, so a
swapped axis or a wrong plane order changes the decoded tensor and fails the equality checks.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from semiclust.data.datasets import UNLABELED, StackedImages, build_dataset
from semiclust.errors import SemiclustError


def pixels(count: int, channels: int, size: int, first: int = 0) -> np.ndarray:
    """Expected N x C x H x W uint8 images: pixel (n, c, y, x) = (37 n + 80 c + 3 y + 7 x) mod 256."""
    n, c, y, x = np.ogrid[first : first + count, :channels, :size, :size]
    return ((37 * n + 80 * c + 3 * y + 7 * x) % 256).astype(np.uint8)


def grid(images: np.ndarray):
    """Index arrays (n, c, y, x) broadcast over every pixel of `images`."""
    return np.ogrid[tuple(slice(0, s) for s in images.shape)]


# --- CIFAR ------------------------------------------------------------------------------------------------

def cifar_rows(images: np.ndarray) -> np.ndarray:
    """CIFAR's b"data": per image 3072 bytes, the R, G, B planes one after another, each row-major."""
    n, c, y, x = grid(images)
    rows = np.zeros((len(images), 3072), dtype=np.uint8)
    rows[n, c * 1024 + y * 32 + x] = images
    return rows


def write_pickle(path: Path, content: dict, protocol: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(content, protocol=protocol))


def write_cifar10(folder: Path) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    """Five 2-image train batches and a 3-image test batch; returns the expected images and labels."""
    train, test = pixels(10, 3, 32), pixels(3, 3, 32, first=10)
    train_labels, test_labels = [i % 10 for i in range(10)], [9, 0, 4]
    for b in range(5):
        write_pickle(folder / f"data_batch_{b + 1}",
                     {b"batch_label": b"training batch", b"labels": train_labels[2 * b : 2 * b + 2],
                      b"data": cifar_rows(train[2 * b : 2 * b + 2]), b"filenames": [b"a.png", b"b.png"]},
                     protocol=2 if b % 2 else 5)  # old (Python 2 era) and current pickle protocols
    write_pickle(folder / "test_batch", {b"labels": test_labels, b"data": cifar_rows(test)})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    write_pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return train, train_labels, test, test_labels


@pytest.mark.parametrize("inside", [True, False], ids=["root-above", "root-is-folder"])
def test_cifar10_pixels_labels_classes(tmp_path, inside):
    folder = tmp_path / "cifar-10-batches-py"
    train, train_labels, test, test_labels = write_cifar10(folder)
    data = build_dataset("cifar10", {"root": str(tmp_path if inside else folder)})
    assert data.train.images.shape == (10, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert torch.equal(data.train.images, torch.from_numpy(train))
    assert torch.equal(data.test.images, torch.from_numpy(test))
    assert data.train.labels.tolist() == train_labels and data.test.labels.tolist() == test_labels
    assert data.train.labels.dtype == torch.long
    assert data.classes[:2] == ["airplane", "automobile"] and data.num_classes == 10
    assert data.train.images[3, 2, 5, 9].item() == (37 * 3 + 80 * 2 + 3 * 5 + 7 * 9) % 256  # (n, c, y, x)
    assert data.mean == (0.4914, 0.4822, 0.4465) and data.std == (0.2470, 0.2435, 0.2616)
    assert data.name == "cifar10" and data.test_split_name == "test" and data.channels == 3


def write_cifar100(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    train, test = pixels(4, 3, 32), pixels(2, 3, 32, first=4)
    write_pickle(folder / "train", {b"fine_labels": [0, 99, 5, 6], b"coarse_labels": [0, 19, 1, 1],
                                    b"data": cifar_rows(train)})
    write_pickle(folder / "test", {b"fine_labels": [98, 1], b"coarse_labels": [18, 2], b"data": cifar_rows(test)})
    write_pickle(folder / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                                   b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    return train, test


def test_cifar100_fine_and_coarse(tmp_path):
    train, test = write_cifar100(tmp_path / "cifar-100-python")
    fine = build_dataset("cifar100", {"root": str(tmp_path)})
    assert torch.equal(fine.train.images, torch.from_numpy(train))
    assert torch.equal(fine.test.images, torch.from_numpy(test))
    assert fine.train.labels.tolist() == [0, 99, 5, 6] and fine.test.labels.tolist() == [98, 1]
    assert fine.num_classes == 100 and fine.classes[99] == "fine99"
    coarse = build_dataset("cifar100", {"root": str(tmp_path), "coarse": True})
    assert coarse.train.labels.tolist() == [0, 19, 1, 1] and coarse.test.labels.tolist() == [18, 2]
    assert coarse.num_classes == 20 and coarse.classes[19] == "coarse19"
    assert coarse.mean == (0.5071, 0.4865, 0.4409) and coarse.std == (0.2673, 0.2564, 0.2762)


def test_cifar_missing_files_name_the_paths_searched(tmp_path):
    with pytest.raises(SemiclustError) as missing:
        build_dataset("cifar10", {"root": str(tmp_path / "nowhere")})
    message = str(missing.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message and "data_batch_1" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message and "never downloads" in message
    assert "\n" not in message
    write_cifar10(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(SemiclustError, match="cifar-10-batches-py lacks data_batch_3"):
        build_dataset("cifar10", {"root": str(tmp_path)})
    with pytest.raises(SemiclustError, match="cifar-100-python"):
        build_dataset("cifar100", {"root": str(tmp_path)})


def test_cifar_corrupt_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    whole = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(SemiclustError, match=r"data_batch_2 is unreadable or corrupt: not a CIFAR python pickle"):
        build_dataset("cifar10", {"root": str(tmp_path)})
    write_pickle(folder / "data_batch_2", {b"labels": [1, 2], b"data": np.zeros((2, 100), np.uint8)})
    with pytest.raises(SemiclustError, match=r"data_batch_2 .*expected uint8 N x 3072"):
        build_dataset("cifar10", {"root": str(tmp_path)})
    write_pickle(folder / "data_batch_2", {b"labels": [1, 12], b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(SemiclustError, match=r"data_batch_2 .*labels span 1..12"):
        build_dataset("cifar10", {"root": str(tmp_path)})
    write_pickle(folder / "data_batch_2", {b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(SemiclustError, match=r"data_batch_2 .*no 'labels' entry"):
        build_dataset("cifar10", {"root": str(tmp_path)})


class _Planted:
    """A pickle that would run a command when loaded with plain pickle.load."""

    def __reduce__(self):
        return (os.system, ("echo planted",))


def test_cifar_pickle_loads_arrays_only(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    write_pickle(folder / "test_batch", {b"labels": [0], b"data": _Planted()})
    with pytest.raises(SemiclustError, match=r"test_batch .*refusing to load .*system"):
        build_dataset("cifar10", {"root": str(tmp_path)})


# --- STL-10 -----------------------------------------------------------------------------------------------

def stl_bytes(images: np.ndarray) -> bytes:
    """STL-10's X file: per image and channel, the 96 x 96 pixels column by column (y varies fastest)."""
    n, c, y, x = grid(images)
    flat = np.zeros((len(images), 3 * 96 * 96), dtype=np.uint8)
    flat[n, c * 96 * 96 + x * 96 + y] = images
    return flat.tobytes()


def write_stl10(folder: Path, unlabeled: bool = True) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    images = {"train": pixels(3, 3, 96), "test": pixels(2, 3, 96, first=3), "unlabeled": pixels(4, 3, 96, first=5)}
    for split, array in images.items():
        if split != "unlabeled" or unlabeled:
            (folder / f"{split}_X.bin").write_bytes(stl_bytes(array))
    (folder / "train_y.bin").write_bytes(bytes([1, 10, 4]))  # 1-based
    (folder / "test_y.bin").write_bytes(bytes([10, 2]))
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    return images


@pytest.mark.parametrize("inside", [True, False], ids=["root-above", "root-is-folder"])
def test_stl10_labeled_then_unlabeled(tmp_path, inside):
    folder = tmp_path / "stl10_binary"
    images = write_stl10(folder)
    data = build_dataset("stl10", {"root": str(tmp_path if inside else folder)})
    train = data.train.images
    assert isinstance(train, StackedImages) and train.shape == (7, 3, 96, 96) and train.dtype == torch.uint8
    expected = torch.from_numpy(np.concatenate([images["train"], images["unlabeled"]]))
    assert torch.equal(train[torch.arange(7)], expected)
    assert torch.equal(train[[6, 0, 4]], expected[[6, 0, 4]])
    assert train[[1]][0, 2, 5, 70].item() == (37 * 1 + 80 * 2 + 3 * 5 + 7 * 70) % 256  # (n, c, y, x)
    assert data.train.labels.tolist() == [0, 9, 3, UNLABELED, UNLABELED, UNLABELED, UNLABELED]
    assert torch.equal(data.test.images, torch.from_numpy(images["test"])) and data.test.labels.tolist() == [9, 1]
    assert data.classes[0] == "airplane" and data.classes[-1] == "truck" and data.num_classes == 10
    assert data.mean == (0.4467, 0.4398, 0.4066) and data.std == (0.2603, 0.2566, 0.2713)


def test_stl10_without_unlabeled(tmp_path):
    images = write_stl10(tmp_path / "stl10_binary", unlabeled=False)
    with pytest.raises(SemiclustError, match=r"lacks unlabeled_X.bin.*unlabeled: false"):
        build_dataset("stl10", {"root": str(tmp_path)})
    data = build_dataset("stl10", {"root": str(tmp_path), "unlabeled": False})
    assert torch.equal(data.train.images, torch.from_numpy(images["train"]))
    assert data.train.labels.tolist() == [0, 9, 3]


def test_stl10_bad_files(tmp_path):
    folder = tmp_path / "stl10_binary"
    write_stl10(folder)
    with pytest.raises(SemiclustError) as missing:
        build_dataset("stl10", {"root": str(tmp_path / "elsewhere")})
    assert str(tmp_path / "elsewhere" / "stl10_binary") in str(missing.value)
    assert "https://cs.stanford.edu/~acoates/stl10/" in str(missing.value)
    (folder / "test_y.bin").write_bytes(bytes([1, 2, 3]))
    with pytest.raises(SemiclustError, match=r"test_y.bin .*3 labels for 2 images"):
        build_dataset("stl10", {"root": str(tmp_path)})
    (folder / "test_y.bin").write_bytes(bytes([0, 2]))  # 0 is not a 1-based label
    with pytest.raises(SemiclustError, match=r"test_y.bin .*labels span -1..1"):
        build_dataset("stl10", {"root": str(tmp_path)})
    (folder / "test_y.bin").write_bytes(bytes([10, 2]))
    (folder / "unlabeled_X.bin").write_bytes(b"\x00" * 1000)
    with pytest.raises(SemiclustError, match=r"unlabeled_X.bin .*not a whole number"):
        build_dataset("stl10", {"root": str(tmp_path)})


# --- SVHN -------------------------------------------------------------------------------------------------

def write_svhn(path: Path, images: np.ndarray, labels: list[int]) -> None:
    """An SVHN .mat file: X is H x W x C x N, y is N x 1 (10 stands for the digit 0)."""
    from scipy.io import savemat

    n, c, y, x = grid(images)
    stored = np.zeros((32, 32, 3, len(images)), dtype=np.uint8)
    stored[y, x, c, n] = images
    savemat(str(path), {"X": stored, "y": np.array(labels, dtype=np.uint8).reshape(-1, 1)})


def test_svhn_pixels_labels_and_extra(tmp_path):
    train, test, extra = pixels(3, 3, 32), pixels(2, 3, 32, first=3), pixels(2, 3, 32, first=5)
    write_svhn(tmp_path / "train_32x32.mat", train, [10, 1, 9])
    write_svhn(tmp_path / "test_32x32.mat", test, [3, 10])
    data = build_dataset("svhn", {"root": str(tmp_path)})
    assert data.train.images.shape == (3, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert torch.equal(data.train.images, torch.from_numpy(train))
    assert torch.equal(data.test.images, torch.from_numpy(test))
    assert data.train.labels.tolist() == [0, 1, 9] and data.test.labels.tolist() == [3, 0]
    assert data.classes == [str(d) for d in range(10)]
    assert data.mean == (0.4377, 0.4438, 0.4728) and data.std == (0.1980, 0.2010, 0.1970)
    with pytest.raises(SemiclustError, match=r"extra_32x32.mat.*split=S"):
        build_dataset("svhn", {"root": str(tmp_path), "extra": True})
    write_svhn(tmp_path / "extra_32x32.mat", extra, [10, 7])
    both = build_dataset("svhn", {"root": str(tmp_path), "extra": True})
    assert torch.equal(both.train.images, torch.from_numpy(np.concatenate([train, extra])))
    assert both.train.labels.tolist() == [0, 1, 9, 0, 7] and len(both.test) == 2


def test_svhn_errors(tmp_path):
    with pytest.raises(SemiclustError) as missing:
        build_dataset("svhn", {"root": str(tmp_path)})
    assert str(tmp_path) in str(missing.value) and "train_32x32.mat" in str(missing.value)
    assert "http://ufldl.stanford.edu/housenumbers/" in str(missing.value)
    (tmp_path / "train_32x32.mat").write_bytes(b"not a matlab file at all" * 10)
    write_svhn(tmp_path / "test_32x32.mat", pixels(1, 3, 32), [11])
    with pytest.raises(SemiclustError, match=r"train_32x32.mat is unreadable or corrupt"):
        build_dataset("svhn", {"root": str(tmp_path)})
    write_svhn(tmp_path / "train_32x32.mat", pixels(1, 3, 32), [1])
    with pytest.raises(SemiclustError, match=r"test_32x32.mat .*labels span 11..11"):
        build_dataset("svhn", {"root": str(tmp_path)})
    with pytest.raises(SemiclustError, match=r"unknown option.*extras.*accepted options: root, extra"):
        build_dataset("svhn", {"root": str(tmp_path), "extras": True})


# --- MNIST family -----------------------------------------------------------------------------------------

def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file: 0x0000, type 0x08 (uint8), the number of dims, the dims (big-endian int32), then the
    values with the last index varying fastest (row-major)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    flat = np.zeros(array.size, dtype=np.uint8)
    if array.ndim == 3:
        n, y, x = np.ogrid[tuple(slice(0, s) for s in array.shape)]
        flat[(n * array.shape[1] + y) * array.shape[2] + x] = array
    else:
        flat[:] = array
    return header + flat.tobytes()


def write_mnist(folder: Path, gzipped: dict[str, bool]) -> dict[str, np.ndarray]:
    """The four idx files of an MNIST-style dataset, each plain or gzipped as `gzipped` says."""
    folder.mkdir(parents=True, exist_ok=True)
    content = {"train-images-idx3-ubyte": pixels(3, 1, 28)[:, 0], "train-labels-idx1-ubyte": np.array([5, 0, 9]),
               "t10k-images-idx3-ubyte": pixels(2, 1, 28, first=3)[:, 0], "t10k-labels-idx1-ubyte": np.array([1, 7])}
    for name, array in content.items():
        raw = idx_bytes(array.astype(np.uint8))
        if gzipped.get(name):
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return content


@pytest.mark.parametrize(("name", "subfolder", "first_class", "mean"), [
    ("mnist", "MNIST/raw", "0", (0.1307,)),
    ("fashion_mnist", "FashionMNIST/raw", "T-shirt/top", (0.2860,)),
    ("kmnist", "KMNIST/raw", "o", (0.1918,)),
    ("mnist", ".", "0", (0.1307,)),  # the files directly in root
])
def test_mnist_family_plain_and_gzipped(tmp_path, name, subfolder, first_class, mean):
    content = write_mnist(tmp_path / subfolder, {"train-images-idx3-ubyte": True, "t10k-labels-idx1-ubyte": True})
    data = build_dataset(name, {"root": str(tmp_path)})
    assert data.train.images.shape == (3, 1, 28, 28) and data.train.images.dtype == torch.uint8
    assert torch.equal(data.train.images[:, 0], torch.from_numpy(content["train-images-idx3-ubyte"]))
    assert torch.equal(data.test.images[:, 0], torch.from_numpy(content["t10k-images-idx3-ubyte"]))
    assert data.train.images[2, 0, 4, 11].item() == (37 * 2 + 3 * 4 + 7 * 11) % 256  # (n, c, y, x)
    assert data.train.labels.tolist() == [5, 0, 9] and data.test.labels.tolist() == [1, 7]
    assert data.classes[0] == first_class and data.num_classes == 10 and data.channels == 1
    assert data.mean == mean and data.name == name


def test_mnist_family_class_names(tmp_path):
    write_mnist(tmp_path, {})
    assert build_dataset("fashion_mnist", {"root": str(tmp_path)}).classes == [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert build_dataset("kmnist", {"root": str(tmp_path)}).classes == [
        "o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]
    assert build_dataset("mnist", {"root": str(tmp_path)}).classes == [str(d) for d in range(10)]


def test_mnist_family_missing_and_corrupt_files(tmp_path):
    with pytest.raises(SemiclustError) as missing:
        build_dataset("fashion_mnist", {"root": str(tmp_path)})
    message = str(missing.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message and "t10k-images-idx3-ubyte" in message
    assert ".gz" in message and "torchvision.datasets.FashionMNIST" in message and "\n" not in message
    raw = tmp_path / "MNIST" / "raw"
    write_mnist(raw, {"t10k-images-idx3-ubyte": True})
    images = raw / "train-images-idx3-ubyte"
    whole = images.read_bytes()
    images.write_bytes(whole[:-5])
    with pytest.raises(SemiclustError, match=r"train-images-idx3-ubyte is unreadable .*truncated"):
        build_dataset("mnist", {"root": str(tmp_path)})
    images.write_bytes(b"\x00\x00\x0d\x03" + whole[4:])  # type 0x0D (float32) is not uint8
    with pytest.raises(SemiclustError, match=r"train-images-idx3-ubyte .*bad idx magic 00000d03"):
        build_dataset("mnist", {"root": str(tmp_path)})
    images.write_bytes(whole)
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(pixels(2, 1, 28)[:, 0]))[:-20])
    with pytest.raises(SemiclustError, match=r"t10k-images-idx3-ubyte.gz is unreadable"):
        build_dataset("mnist", {"root": str(tmp_path)})
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(pixels(3, 1, 28)[:, 0])))
    with pytest.raises(SemiclustError, match=r"t10k-labels-idx1-ubyte .*one label for each of 3 images"):
        build_dataset("mnist", {"root": str(tmp_path)})


def test_missing_root_option_is_a_semiclust_error():
    with pytest.raises(SemiclustError, match="root"):
        build_dataset("cifar10", {})
