"""The report of `semiclust eval` for a checkpoint: its classifier rebuilt, the recipe's evaluation split
loaded again, top-1/top-5, per class, the confusion matrix, and the kNN diagnostic whose memory is the
labeled subset the checkpoint trained with, or every labeled training image (`knn_memory="all"`: how well the
features separate the classes, beside what the labeled subset makes of them)."""
from __future__ import annotations

import torch

from semiclust.data.datasets import Dataset, Split, build_dataset, split_rows
from semiclust.data.eval_views import EvalViews
from semiclust.data.subsets import listing_change
from semiclust.engine.checkpoint import Checkpoint, classifier_network
from semiclust.errors import SemiclustError
from semiclust.evaluation.metrics import EvalReport, evaluation_report
from semiclust.config.schema import Recipe


def labeled_memory(dataset: Dataset, checkpoint: Checkpoint) -> tuple[Split | None, str | None]:
    """The labeled subset the checkpoint trained with, as a split, or (None, why not)."""
    indices = checkpoint.labeled_indices
    if indices is None or not len(indices):
        return None, "the checkpoint records no labeled subset"
    changed = listing_change(indices, dataset.train, checkpoint.labeled_files)
    if changed:
        return None, f"the training data differ from those the checkpoint recorded ({changed})"
    return split_rows(dataset.train, indices), None


KNN_MEMORIES = ("labeled", "all")


def check_knn_memory(memory: str) -> None:
    """Refuse an unknown kNN memory before anything is loaded."""
    if memory not in KNN_MEMORIES:
        raise SemiclustError(f"--knn-memory must be 'labeled' (the run's labeled subset) or 'all' (every labeled "
                             f"training image), not {memory!r}.")


def knn_memory_split(dataset: Dataset, checkpoint: Checkpoint, memory: str) -> tuple[Split | None, str | None]:
    """The kNN diagnostic's memory: the labeled subset ("labeled"), or every training image with a label ("all"),
    or (None, why not)."""
    check_knn_memory(memory)
    if memory == "labeled":
        return labeled_memory(dataset, checkpoint)
    rows = torch.nonzero(dataset.train.labels >= 0).flatten()
    if not len(rows):
        return None, "no training image has a label (--knn-memory all needs them)"
    return split_rows(dataset.train, rows), None


def evaluation_data(recipe: Recipe, checkpoint: Checkpoint) -> Dataset:
    """The recipe's dataset, refused when it has no evaluation split or other classes than the checkpoint."""
    dataset = build_dataset(recipe.data.dataset, recipe.data.options)
    if dataset.test is None:
        raise SemiclustError(f"dataset '{dataset.name}' of this checkpoint's recipe has no evaluation split; "
                             "give one with --set (e.g. data.options.eval=eval.csv for labeled_list).")
    trained = checkpoint.classifier.num_classes
    if len(dataset.classes) != trained:
        raise SemiclustError(f"the dataset now has {len(dataset.classes)} classes but the checkpoint was trained "
                             f"with {trained}; point --set data.options at the same data.")
    return dataset


def checkpoint_report(checkpoint: Checkpoint, recipe: Recipe, device: torch.device, knn: int = 20,
                      knn_temperature: float = 0.07, knn_memory: str = "labeled") -> tuple[EvalReport, str | None]:
    """The evaluation report of a checkpoint on `recipe`'s data (the checkpoint's recipe, or it with
    overrides such as a moved dataset), and why the kNN diagnostic was skipped, if it was."""
    network, _ = classifier_network(checkpoint)
    network.to(device)
    dataset = evaluation_data(recipe, checkpoint)
    mean, std, batch = tuple(checkpoint.mean), tuple(checkpoint.std), recipe.eval.batch_size
    views = EvalViews(dataset.test, recipe.data.eval, mean, std, batch, device, recipe.data.loader)
    memory, skipped = (None, "--knn-k 0") if knn <= 0 else knn_memory_split(dataset, checkpoint, knn_memory)
    memory_views = None if memory is None else EvalViews(memory, recipe.data.eval, mean, std, batch, device,
                                                         recipe.data.loader)
    report = evaluation_report(network, views, dataset.test_split_name, list(checkpoint.classes),
                               match=bool(checkpoint.classifier.matched), memory=memory_views, knn_k=max(knn, 1),
                               knn_temperature=knn_temperature)
    return report, skipped
