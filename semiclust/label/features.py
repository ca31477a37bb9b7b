"""The images a run trained on, as features to choose from: the run's evaluated network (Daino's teacher) rebuilt
from its checkpoint, one centre view of every training image through it (in batches, with progress), and which of
those images already have a label.

A run's images are its recipe's training split: a `pool` folder (a suggestion run), a `labeled_list` (the labeled
images and the folders of unlabeled ones) or a registered dataset. Unreadable files are left out of the pass.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from semiclust.data.datasets import Dataset, ImageSplit, Split, build_dataset, indexed
from semiclust.data.decode import printable
from semiclust.data.eval_views import EvalViews
from semiclust.engine.checkpoint import Checkpoint, checkpoint_file, classifier_network, load_checkpoint
from semiclust.errors import SemiclustError
from semiclust.evaluation.metrics import features_and_scores
from semiclust.label.lists import read_rows
from semiclust.models.network import Network
from semiclust.config.schema import Recipe

Advance = Callable[[int, int], None]  # (images done, images in all)
SELF_SUPERVISED = ("swav", "dino")  # methods whose prototypes are clusters, not classes


@dataclass
class RunImages:
    """A run's checkpoint, rebuilt network and recipe, and its training images (`dataset.train`)."""

    checkpoint: Path
    state: Checkpoint
    network: Network
    recipe: Recipe
    dataset: Dataset

    @property
    def trained_with_labels(self) -> bool:
        """Whether the run's prototypes are classes (Suave, Daino, supervised) rather than clusters."""
        return self.recipe.method.name not in SELF_SUPERVISED


def open_run(checkpoint: Path | str) -> RunImages:
    """A checkpoint (or run directory) with its network and the training images its recipe names."""
    path = checkpoint_file(checkpoint)
    state = load_checkpoint(path)
    network, recipe = classifier_network(state)
    dataset = build_dataset(recipe.data.dataset, recipe.data.options)
    if not len(dataset.train):
        raise SemiclustError(f"the run of '{path}' trained on images that are gone: its training split is empty now; "
                             "point at a run whose images are in place.")
    return RunImages(path, state, network, recipe, dataset)


def data_places(recipe: Recipe) -> tuple[list[str], str | None]:
    """The folders a run's recipe takes its images from (real paths), and the registered dataset it names (None for
    folders): what `--data` or `--dataset` must match for a checkpoint to belong to them."""
    options = recipe.data.options
    name = recipe.data.dataset
    if name == "pool" and options.get("dataset"):
        name, options = options["dataset"], options.get("options") or {}
    if name == "pool":
        return [os.path.realpath(Path(options["root"]).expanduser())], None
    if name == "labeled_list":
        folders = options.get("unlabeled") or []
        folders = [folders] if isinstance(folders, str) else folders
        return [os.path.realpath(Path(f).expanduser()) for f in folders], None
    if name in ("imagefolder", "imagenet"):
        base = Path(options["root"]).expanduser()
        return [os.path.realpath(base / options.get("train_dir", "train"))], None
    return [], name


def refuse_other_data(run: RunImages, data: Path | None, registered: str | None) -> None:
    """A checkpoint given with --data (or --dataset) must have trained on those images: one paragraph otherwise."""
    folders, name = data_places(run.recipe)
    if data is not None:
        wanted = os.path.realpath(Path(data).expanduser())
        if wanted not in folders:
            where = ", ".join(f"'{printable(f)}'" for f in folders) if folders else f"the registered dataset '{name}'"
            raise SemiclustError(f"the checkpoint '{run.checkpoint}' was trained on the images of {where}, not on "
                                 f"'{printable(data)}'; leave out --data to choose among its own images, or give a "
                                 "checkpoint of a run on that folder.")
    if registered is not None and registered != name:
        raise SemiclustError(f"the checkpoint '{run.checkpoint}' was trained on "
                             f"{'the registered dataset ' + repr(name) if name else 'image folders'}, not on the "
                             f"registered dataset '{registered}'; leave out --dataset, or give a checkpoint of a run "
                             "on it.")


class Counted:
    """Evaluation views that report each batch done (a progress bar over the feature pass)."""

    def __init__(self, views: EvalViews, advance: Advance):
        self.views, self.advance = views, advance

    @property
    def split(self) -> Split:
        return self.views.split

    @property
    def unreadable(self) -> int:
        return self.views.unreadable

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        done, total = 0, len(self.views.split)
        self.advance(0, total)
        for images, rows in self.views:
            yield images, rows
            done = int(rows[-1]) + 1 if len(rows) else done
            self.advance(done, total)


@dataclass
class Features:
    """The backbone features and class probabilities of the images that could be read (`rows` of the training
    split), and how many could not."""

    rows: np.ndarray
    features: np.ndarray
    probabilities: np.ndarray
    unreadable: int


def image_features(run: RunImages, device: torch.device, advance: Advance = lambda done, total: None) -> Features:
    """One centre view of every training image through the run's network: backbone features, and the softmax of
    the class scores at the method's temperature."""
    recipe, state = run.recipe, run.state
    loader = recipe.data.loader.model_copy(update={"persistent_workers": False})
    views = EvalViews(indexed(run.dataset.train), recipe.data.eval, tuple(state.mean), tuple(state.std),
                      recipe.eval.batch_size, device, loader, recipe.data.max_image_pixels)
    counted = Counted(views, advance)
    network = run.network.to(device)
    features, scores, rows = features_and_scores(network, counted)  # type: ignore[arg-type]
    probabilities = torch.softmax(scores.double() / recipe.method.temperature, dim=1)
    return Features(rows.numpy(), features.numpy(), probabilities.numpy(), counted.unreadable)


def already_labeled(run: RunImages) -> np.ndarray:
    """The training images the run had labels for: its labeled subset, and for a `labeled_list` every listed label."""
    labeled = np.zeros(len(run.dataset.train), dtype=bool)
    indices = run.state.labeled_indices
    if indices is not None and len(indices):
        labeled[np.asarray(indices, dtype=np.int64)] = True
    if run.recipe.data.dataset == "labeled_list":
        labeled |= run.dataset.train.labels.numpy() >= 0
    return labeled


def listed_rows(split: Split, list_file: Path) -> tuple[np.ndarray, list[str]]:
    """The training images a `path,label` list names (filled in or not: an --exclude list), and the entries that are
    none of them. Paths are relative to the list's folder; for an in-memory split, entries are indices."""
    rows = read_rows(list_file)
    found, unknown = [], []
    if isinstance(split, ImageSplit):
        for row in rows:
            if row.path.isdigit() and int(row.path) < len(split):
                found.append(int(row.path))
            else:
                unknown.append(row.path)
        return np.asarray(found, dtype=np.int64), unknown
    where = {os.path.realpath(split.path(i)): i for i in range(len(split))}
    base = Path(list_file).parent
    for row in rows:
        path = Path(row.path).expanduser()
        index = where.get(os.path.realpath(path if path.is_absolute() else base / path))
        if index is None:
            unknown.append(row.path)
        else:
            found.append(index)
    return np.asarray(found, dtype=np.int64), unknown
