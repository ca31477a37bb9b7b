"""Suave (SwAV + labels) and SwAV: targets from the online network's own scores by Sinkhorn-Knopp,
with an optional queue of past unlabeled embeddings; unit-norm prototypes."""
from __future__ import annotations

import torch
from torch import nn

from semiclust.data.streams import Stream
from semiclust.methods.base import Method, MethodDefaults
from semiclust.methods.queue import EmbeddingQueue
from semiclust.models.network import Network
from semiclust.registry import METHODS
from semiclust.config.schema import MethodSpec

SWAV_HEAD = {"hidden": 2048, "out": 128, "layers": 2, "batchnorm": True, "activation": "relu", "init": "default"}


@METHODS.register("suave")
class Suave(Method):
    """SwAV's swapped prediction on unlabeled crops plus cross-entropy on labels, one loss."""

    parts = ("queue",)
    prototypes = "unit"
    defaults = MethodDefaults(assignment="sinkhorn", head=SWAV_HEAD)
    summary = "SwAV + labels: Sinkhorn targets from the online network, unit-norm class prototypes"

    def __init__(self, spec: MethodSpec, student: Network, assigner: nn.Module | None, steps_per_epoch: int,
                 total_steps: int, queue: EmbeddingQueue | None = None, ema: Network | None = None):
        super().__init__(spec, student, assigner, steps_per_epoch, total_steps, ema)
        self.queue = queue

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


@METHODS.register("swav")
class SwAV(Suave):
    """SwAV alone: no labels (prototypes are clusters, not classes)."""

    streams = frozenset({Stream.UNLABELED})
    summary = "SwAV, no labels (clusters are matched to classes only for evaluation)"
