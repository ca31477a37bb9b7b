"""Daino (DINO + labels) and DINO: targets from an EMA teacher on the unlabeled global crops,
centered and sharpened; weight-normalised prototypes with a trainable magnitude. Their recipe section adds
the teacher (`method.teacher`) to the keys every method takes."""
from __future__ import annotations

import torch
from pydantic import ConfigDict, Field, model_validator
from torch import nn

from semiclust.config.schema import MethodSpec, Probability, Strict
from semiclust.data.streams import Stream
from semiclust.engine.schedules import Schedules
from semiclust.methods.base import Method, MethodDefaults, PartKit
from semiclust.methods.ema import ema_update
from semiclust.models.network import Network
from semiclust.registry import METHODS

DINO_HEAD = {"hidden": 2048, "out": 256, "layers": 3, "batchnorm": False, "activation": "gelu", "init": "trunc_normal"}


class Teacher(Strict):
    """Daino/DINO EMA teacher: momentum follows a per-step cosine from `momentum` to `momentum_end`."""

    momentum: Probability = Field(0.990, description="EMA momentum at the first step")
    momentum_end: Probability = Field(1.0, description="EMA momentum at the last step")


class DainoSpec(MethodSpec):
    """The section of daino and dino: the keys every method takes, and the teacher."""

    model_config = ConfigDict(extra="forbid")

    teacher: Teacher = Field(Teacher(), description="the EMA teacher (see its section)")

    @model_validator(mode="after")
    def _no_second_average(self) -> "DainoSpec":
        if self.ema.enabled:
            raise ValueError(f"method '{self.name}' already evaluates an EMA of its weights (its teacher, "
                             "method.teacher); set method.ema.enabled: false")
        return self


@METHODS.register("daino", spec=DainoSpec)
class Daino(Method):
    """DINO's teacher-student cross-entropy on unlabeled crops plus cross-entropy on labels."""

    prototypes = "weight_norm"
    defaults = MethodDefaults(assignment="center_sharpen", head=DINO_HEAD, optim={"exclude_bias_and_norm": True})
    summary = "DINO + labels: EMA teacher, centered + sharpened targets, weight-normalised prototypes"
    spec: DainoSpec

    def __init__(self, spec: DainoSpec, student: Network, assigner: nn.Module | None, schedules: Schedules,
                 teacher: Network):
        super().__init__(spec, student, assigner, schedules)
        self.teacher = teacher  # the EMA of the student: makes the targets, and is the classifier

    @classmethod
    def build(cls, kit: PartKit) -> "Daino":
        teacher = kit.student_copy()
        return cls(kit.spec, kit.student, kit.assigner(cls.streams), kit.schedules, teacher=teacher)

    @property
    def classifier(self) -> Network:
        return self.teacher

    def targets(self, embeddings, scores, crops, step):
        count = self.spec.target_crops
        teacher_scores = self.teacher.prototype_scores(torch.cat(crops[:count])).float()
        return self.assigner(list(teacher_scores.chunk(count)), self.schedules.epoch(step))

    def pseudo_label_scores(self, pieces, crops):
        """Pseudo-labels come from the teacher, the network Daino evaluates."""
        with torch.no_grad():
            count = self.spec.target_crops
            return list(self.teacher.prototype_scores(torch.cat(crops[:count])).float().chunk(count))

    def momentum(self, step: int) -> float:
        """The teacher's EMA momentum: a per-step cosine from `momentum` to `momentum_end` over the run (DINO)."""
        teacher = self.spec.teacher
        return self.schedules.over_run(step, teacher.momentum, teacher.momentum_end)

    def after_optimizer_step(self, step: int) -> None:
        super().after_optimizer_step(step)
        ema_update(self.teacher, self.student, self.momentum(step))


@METHODS.register("dino", spec=DainoSpec)
class Dino(Daino):
    """DINO alone: no labels."""

    streams = frozenset({Stream.UNLABELED})
    summary = "DINO, no labels (clusters are matched to classes only for evaluation)"
