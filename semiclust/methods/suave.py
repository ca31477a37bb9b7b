"""Suave (SwAV + labels) and SwAV: targets from the online network's own scores by Sinkhorn-Knopp,
with an optional queue of past unlabeled embeddings; unit-norm prototypes. Their recipe section adds the
queue (`method.queue`) to the keys every method takes."""
from __future__ import annotations

import torch
from pydantic import ConfigDict, Field, model_validator
from torch import nn

from semiclust.config.schema import MethodSpec
from semiclust.data.streams import Stream
from semiclust.engine.schedules import Schedules
from semiclust.methods.base import Method, MethodDefaults, PartKit
from semiclust.methods.queue import EmbeddingQueue, Queue, queue_for
from semiclust.models.network import Network
from semiclust.registry import METHODS

SWAV_HEAD = {"hidden": 2048, "out": 128, "layers": 2, "batchnorm": True, "activation": "relu", "init": "default"}


class SuaveSpec(MethodSpec):
    """The section of suave and swav: the keys every method takes, and the queue."""

    model_config = ConfigDict(extra="forbid")

    queue: Queue = Field(Queue(), description="the queue of past unlabeled embeddings (see its section)")

    @model_validator(mode="after")
    def _queue_has_a_taker(self) -> "SuaveSpec":
        if self.queue.length and self.assignment.typed and not self.assignment.takes_queue:
            raise ValueError(f"method.queue is used only by assignments that take a queue (sinkhorn), not by "
                             f"'{self.assignment.name}': set its length to 0")
        return self


@METHODS.register("suave", spec=SuaveSpec)
class Suave(Method):
    """SwAV's swapped prediction on unlabeled crops plus cross-entropy on labels, one loss."""

    prototypes = "unit"
    defaults = MethodDefaults(assignment="sinkhorn", head=SWAV_HEAD)
    summary = "SwAV + labels: Sinkhorn targets from the online network, unit-norm class prototypes"
    spec: SuaveSpec

    def __init__(self, spec: SuaveSpec, student: Network, assigner: nn.Module | None, schedules: Schedules,
                 queue: EmbeddingQueue | None = None, ema: Network | None = None):
        super().__init__(spec, student, assigner, schedules, ema)
        self.queue = queue  # this process's embeddings (a per-process part), or None without a queue

    @classmethod
    def build(cls, kit: PartKit) -> "Suave":
        queue = queue_for(kit.spec.queue, kit.spec.target_crops, kit.recipe.model.head.out, kit.processes)
        average = kit.average()
        return cls(kit.spec, kit.student, kit.assigner(cls.streams), kit.schedules, queue=queue, ema=average)

    def targets(self, embeddings, scores, crops, step):
        epoch = self.schedules.epoch(step)
        prototypes = self.student.prototypes.unit_weight().detach().float()
        queue_on = self.queue is not None and epoch >= self.spec.queue.start_epoch
        use_queue = queue_on and self.queue.full
        matrices = []
        for a in range(self.spec.target_crops):
            current = scores[a].detach().float()
            if use_queue:
                current = torch.cat([self.queue.embeddings[a] @ prototypes.t(), current])
            matrices.append(current)
        batch = len(scores[0])
        targets = [q[-batch:] for q in self.assigner(matrices, epoch)]
        if queue_on:
            self.queue.push([e.detach() for e in embeddings[: self.spec.target_crops]])
        return targets


@METHODS.register("swav", spec=SuaveSpec)
class SwAV(Suave):
    """SwAV alone: no labels (prototypes are clusters, not classes)."""

    streams = frozenset({Stream.UNLABELED})
    summary = "SwAV, no labels (clusters are matched to classes only for evaluation)"
