"""Tiny image files on disk, written the way users' datasets are: PNG/JPEG files in folders and lists."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def stripes(label: int, seed: int, size: int = 12, num_classes: int = 4) -> np.ndarray:
    """An RGB stripe image whose orientation is the class (learnable, survives crops): H x W x 3 uint8."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = np.pi * label / num_classes
    phase = rng.uniform(0, 2 * np.pi)
    wave = 0.5 + 0.4 * np.sin(2 * np.pi / 4 * (xs * np.cos(angle) + ys * np.sin(angle)) + phase)
    rgb = np.stack([wave, wave * 0.8 + 0.1, 1 - wave], axis=-1) + rng.normal(0, 0.05, (size, size, 3))
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def save(path: Path, pixels: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def image_tree(root: Path, classes: list[str], per_class: int, start_seed: int = 0, suffix: str = ".png",
               size: int = 12, grey: bool = False) -> list[Path]:
    """root/<class>/<class>_<i><suffix> stripe images (`grey`: one-channel, mode L, the stripes' red plane);
    returns the paths in sorted order."""
    paths = []
    for label, name in enumerate(classes):
        for i in range(per_class):
            pixels = stripes(label, start_seed + label * 1000 + i, size, len(classes))
            pixels = np.ascontiguousarray(pixels[..., 0]) if grey else pixels
            paths.append(save(root / name / f"{name}_{i}{suffix}", pixels))
    return sorted(paths)


def decoded(path: Path) -> torch.Tensor:
    """The file's pixels via PIL, 3 x H x W uint8: an independent reading to compare the loader with."""
    from PIL import Image

    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


def corrupt(path: Path) -> Path:
    """A file with an image extension whose content is truncated: decoders must reject it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return path


def labeled_list_dataset(root: Path, per_class: int = 6, unlabeled_per_class: int = 10, eval_per_class: int = 4,
                         classes: tuple[str, ...] = ("cat", "dog", "fox", "owl")) -> dict:
    """A labeled CSV (with header, relative paths), an unlabeled folder with no class structure, and an
    evaluation CSV; returns the recipe's data.options."""
    lines, eval_lines = ["path,label"], ["path,label"]
    for label, name in enumerate(classes):
        for i in range(per_class):
            save(root / "labeled" / f"{name}{i}.png", stripes(label, 10 + label * 100 + i, num_classes=len(classes)))
            lines.append(f"labeled/{name}{i}.png,{name}")
        for i in range(unlabeled_per_class):
            save(root / "pool" / f"u{label}_{i}.png", stripes(label, 5000 + label * 100 + i, num_classes=len(classes)))
        for i in range(eval_per_class):
            save(root / "held_out" / f"{name}{i}.png", stripes(label, 9000 + label * 100 + i, num_classes=len(classes)))
            eval_lines.append(f"held_out/{name}{i}.png,{name}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    (root / "eval.csv").write_text("\n".join(eval_lines) + "\n")
    return {"labeled": str(root / "labels.csv"), "unlabeled": [str(root / "pool")], "eval": str(root / "eval.csv")}
