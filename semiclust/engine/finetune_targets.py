"""The fine-tuning stage's propagated targets (`schedule.finetune.targets: propagated`): when the stage starts, one
centre view of every training image through the evaluated network's backbone, the labeled subset's classes spread
over the k-nearest-neighbour graph of those features (methods/label_propagation.py), and the result put in the
method's table, which checkpoints save, so that a run resumed inside the stage trains towards the same targets.
Every process computes the same table from the same weights (no communication)."""
from __future__ import annotations

import time

import torch

from semiclust.data.datasets import indexed
from semiclust.data.eval_views import EvalViews
from semiclust.engine.run import Run
from semiclust.errors import SemiclustError
from semiclust.evaluation.metrics import features_and_scores
from semiclust.methods.label_propagation import knn_graph, propagate


def propagation_due(run: Run, step: int) -> bool:
    """Whether the table must be filled before `step`: the stage propagates, has started, and has no table yet."""
    return run.schedules.propagated_targets(step) and run.method.propagation_pending


def fill_propagated_targets(run: Run) -> str:
    """Fill the method's table from the evaluated network's features of every readable training image; returns a
    line for the log (images, mean confidence, seconds)."""
    started = time.perf_counter()
    recipe, dataset = run.recipe, run.dataset
    views = EvalViews(indexed(dataset.train), recipe.data.eval, dataset.mean, dataset.std, recipe.eval.batch_size,
                      run.device, recipe.data.loader, recipe.data.max_image_pixels)
    features, _, rows = features_and_scores(run.method.classifier, views)
    labeled = run.subset.indices
    where = torch.full((len(dataset.train),), -1, dtype=torch.long)
    where[rows] = torch.arange(len(rows))
    if bool((where[labeled] < 0).any()):
        raise SemiclustError("a labeled image could not be read for the fine-tuning stage's propagated targets; "
                             "check the labeled files with `semiclust data check RECIPE`.")
    finetune = recipe.schedule.finetune
    graph = knn_graph(features.to(run.device), finetune.neighbours)  # on the training device (a GPU: seconds)
    propagated = propagate(graph, where[labeled], dataset.train.labels[labeled], dataset.num_classes)
    run.method.propagation.fill(rows, propagated)  # (moved to the table's device)
    seconds = time.perf_counter() - started
    return (f"fine-tuning stage: labels propagated to {len(rows):,} training images over a {graph.index.shape[1]}-"
            f"neighbour graph (mean confidence {propagated.confidence.mean().item():.2f}) in {seconds:.1f}s")
