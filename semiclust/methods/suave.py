"""Suave (SwAV + labels) and SwAV: targets from the online network's own scores by Sinkhorn-Knopp,
with an optional queue of past unlabeled embeddings; unit-norm prototypes."""
from __future__ import annotations

import torch

from semiclust.engine import dist
from semiclust.methods.base import Method, MethodDefaults
from semiclust.methods.queue import EmbeddingQueue, queue_per_process
from semiclust.recipe import Recipe

SWAV_HEAD = {"hidden": 2048, "out": 128, "layers": 2, "batchnorm": True, "activation": "relu", "init": "default"}


class Suave(Method):
    """SwAV's swapped prediction on unlabeled crops plus cross-entropy on labels, one loss."""

    prototypes = "unit"
    defaults = MethodDefaults(assignment="sinkhorn", head=SWAV_HEAD)
    summary = "SwAV + labels: Sinkhorn targets from the online network, unit-norm class prototypes"

    def __init__(self, recipe: Recipe, num_classes: int, in_chans: int, steps_per_epoch: int):
        super().__init__(recipe, num_classes, in_chans, steps_per_epoch)
        queue = self.spec.queue
        self.queue = None
        if queue.length:
            per_process = queue_per_process(queue.length, dist.world_size())
            self.queue = EmbeddingQueue(self.spec.target_crops, per_process, recipe.model.head.out)

    def targets(self, embeddings, scores, crops, step):
        prototypes = self.student.prototypes.unit_weight().detach().float()
        queue_on = self.queue is not None and self.epoch_of(step) >= self.spec.queue.start_epoch
        use_queue = queue_on and self.queue.full
        matrices = []
        for a in range(self.spec.target_crops):
            current = scores[a].detach().float()
            if use_queue:
                current = torch.cat([self.queue.embeddings[a] @ prototypes.t(), current])
            matrices.append(current)
        batch = len(scores[0])
        targets = [q[-batch:] for q in self.assigner(matrices, self.epoch_of(step))]
        if queue_on:
            self.queue.push([e.detach() for e in embeddings[: self.spec.target_crops]])
        return targets


class SwAV(Suave):
    """SwAV alone: no labels (prototypes are clusters, not classes)."""

    uses_labels = False
    summary = "SwAV, no labels (clusters are matched to classes only for evaluation)"
