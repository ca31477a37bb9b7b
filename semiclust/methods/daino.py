"""Daino (DINO + labels) and DINO: targets from an EMA teacher on the unlabeled global crops,
centered and sharpened; weight-normalised prototypes with a trainable magnitude."""
from __future__ import annotations

import torch
from torch import nn

from semiclust.data.streams import Stream
from semiclust.engine.schedules import cosine
from semiclust.methods.base import Method, MethodDefaults
from semiclust.methods.ema import ema_update
from semiclust.models.network import Network
from semiclust.registry import METHODS
from semiclust.config.schema import MethodSpec

DINO_HEAD = {"hidden": 2048, "out": 256, "layers": 3, "batchnorm": False, "activation": "gelu", "init": "trunc_normal"}


@METHODS.register("daino")
class Daino(Method):
    """DINO's teacher-student cross-entropy on unlabeled crops plus cross-entropy on labels."""

    parts = ("teacher",)
    prototypes = "weight_norm"
    defaults = MethodDefaults(assignment="center_sharpen", head=DINO_HEAD, optim={"exclude_bias_and_norm": True})
    summary = "DINO + labels: EMA teacher, centered + sharpened targets, weight-normalised prototypes"

    def __init__(self, spec: MethodSpec, student: Network, assigner: nn.Module | None, steps_per_epoch: int,
                 total_steps: int, teacher: Network):
        super().__init__(spec, student, assigner, steps_per_epoch, total_steps)
        self.teacher = teacher

    @property
    def classifier(self) -> Network:
        return self.teacher

    def targets(self, embeddings, scores, crops, step):
        count = self.spec.target_crops
        teacher_scores = self.teacher.prototype_scores(torch.cat(crops[:count])).float()
        return self.assigner(list(teacher_scores.chunk(count)), self.epoch_of(step))

    def pseudo_label_scores(self, pieces, crops):
        """Pseudo-labels come from the teacher, the network Daino evaluates."""
        with torch.no_grad():
            count = self.spec.target_crops
            return list(self.teacher.prototype_scores(torch.cat(crops[:count])).float().chunk(count))

    def momentum(self, step: int) -> float:
        """The teacher's EMA momentum: a per-step cosine from `momentum` to `momentum_end` (DINO)."""
        teacher = self.spec.teacher
        return cosine(step, self.total_steps, teacher.momentum, teacher.momentum_end)

    def after_optimizer_step(self, step: int) -> None:
        super().after_optimizer_step(step)
        ema_update(self.teacher, self.student, self.momentum(step))


@METHODS.register("dino")
class Dino(Daino):
    """DINO alone: no labels."""

    streams = frozenset({Stream.UNLABELED})
    summary = "DINO, no labels (clusters are matched to classes only for evaluation)"
