"""`semiclust predict`: top-k classes of image files with an exported classifier."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from semiclust.data.decode import UnreadableImage, decode_rgb, file_problem, is_image_file, predicate, printable
from semiclust.data.folders import images_under
from semiclust.data.loader import make_loader
from semiclust.errors import SemiclustError
from semiclust.models.classifier import ExportedClassifier, preprocess
from semiclust.config.schema import Loader


def collect_images(inputs: list[Path]) -> list[Path]:
    """Image files named directly, and every image file under named folders (sorted), in the order given; a path
    that is neither (missing, a broken link, a FIFO or a device) is refused, saying what it is."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend(item / name for name in images_under(item))
            continue
        why = file_problem(item)
        if why is None:
            found.append(item)
            continue
        raise SemiclustError(f"'{printable(item)}' {predicate(why)}; name image files, or folders of them.")
    if not found:
        raise SemiclustError(f"no image files ({', '.join(sorted({'.jpg', '.png', '.webp', '.bmp'}))} ...) under "
                             f"{', '.join(map(printable, inputs))}.")
    return found


@dataclass
class Prediction:
    path: str  # printable (data.decode.printable): valid UTF-8 in the table, the CSV and the JSON
    classes: list[str]
    probabilities: list[float]
    error: str | None = None  # why the file could not be classified (an unreadable image)


class _Views(torch.utils.data.Dataset):
    """Item b = batch b of files as preprocessed views, with the error of each unreadable file."""

    def __init__(self, paths: list[Path], metadata: dict[str, str], batch_size: int):
        self.paths, self.metadata, self.batch_size = paths, metadata, batch_size

    def __len__(self) -> int:
        return -(-len(self.paths) // self.batch_size)

    def __getitem__(self, b: int) -> tuple[list[torch.Tensor | None], list[str | None]]:
        views, errors = [], []
        for path in self.paths[b * self.batch_size : (b + 1) * self.batch_size]:
            if not is_image_file(path.name):
                views.append(None)
                errors.append("not an image file (unknown extension)")
                continue
            try:
                views.append(preprocess(decode_rgb(path), self.metadata))
                errors.append(None)
            except UnreadableImage as err:
                views.append(None)
                errors.append(err.reason)
        return views, errors


def predict_files(classifier: ExportedClassifier, paths: list[Path], top_k: int = 5, batch_size: int = 64, workers: int = 0,
                  advance: Callable[[int], None] = lambda done: None) -> list[Prediction]:
    """Top-k (class name, probability) per file; softmax of prototype scores / temperature."""
    names = classifier.classes
    k = min(top_k, len(names))
    items = _Views(paths, classifier.metadata, batch_size)
    loader = make_loader(items, range(len(items)), Loader(workers=workers, persistent_workers=False), torch.device("cpu"))
    predictions: list[Prediction] = []
    for b, (views, errors) in enumerate(loader):
        batch_paths = paths[b * batch_size : (b + 1) * batch_size]
        ok = [i for i, view in enumerate(views) if view is not None]
        probabilities = classifier(torch.stack([views[i] for i in ok])).softmax(dim=1) if ok else None
        rows = {}
        if probabilities is not None:
            top = probabilities.topk(k, dim=1)
            for row, i in enumerate(ok):
                rows[i] = ([names[c] for c in top.indices[row].tolist()], top.values[row].tolist())
        for i, path in enumerate(batch_paths):
            chosen, probs = rows.get(i, ([], []))
            predictions.append(Prediction(printable(path), chosen, probs, errors[i]))
        advance(len(predictions))
    return predictions


def as_csv(predictions: list[Prediction], top_k: int) -> str:
    """One row per image: path, class_1, probability_1, ..., class_k, probability_k, error."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", *[f"{kind}_{r}" for r in range(1, top_k + 1) for kind in ("class", "probability")], "error"])
    for p in predictions:
        cells = []
        for r in range(top_k):
            cells += [p.classes[r], f"{p.probabilities[r]:.6f}"] if r < len(p.classes) else ["", ""]
        writer.writerow([p.path, *cells, p.error or ""])
    return buffer.getvalue()


def as_json(predictions: list[Prediction]) -> str:
    return json.dumps([asdict(p) for p in predictions], indent=1)
