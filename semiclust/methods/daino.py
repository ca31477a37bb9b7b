"""Daino (DINO + labels) and DINO: targets from an EMA teacher on the unlabeled global crops,
centered and sharpened; weight-normalised prototypes with a trainable magnitude."""
from __future__ import annotations

import math

import torch

from semiclust.methods.base import Method, MethodDefaults
from semiclust.models.network import Network
from semiclust.recipe import Recipe

DINO_HEAD = {"hidden": 2048, "out": 256, "layers": 3, "batchnorm": False, "activation": "gelu", "init": "trunc_normal"}


def teacher_momentum(step: int, total_steps: int, start: float, end: float = 1.0) -> float:
    """Per-step cosine from `start` (step 0) to `end` (last step), as DINO's momentum schedule."""
    progress = step / max(total_steps, 1)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameters only (as DINO)."""
    teacher_params = list(teacher.parameters())
    student_params = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, student_params, alpha=1 - momentum)


class Daino(Method):
    """DINO's teacher-student cross-entropy on unlabeled crops plus cross-entropy on labels."""

    prototypes = "weight_norm"
    defaults = MethodDefaults(assignment="center_sharpen", head=DINO_HEAD, optim={"exclude_bias_and_norm": True})
    summary = "DINO + labels: EMA teacher, centered + sharpened targets, weight-normalised prototypes"

    def __init__(self, recipe: Recipe, num_classes: int, in_chans: int, steps_per_epoch: int):
        super().__init__(recipe, num_classes, in_chans, steps_per_epoch)
        stochastic = {k: 0.0 for k in ("drop_path_rate", "drop_rate") if k in recipe.model.backbone.kwargs}
        self.teacher = Network(recipe.model, in_chans, num_classes, self.prototypes, stochastic or None)
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)

    @property
    def classifier(self) -> Network:
        return self.teacher

    def targets(self, embeddings, scores, crops, step):
        count = self.spec.target_crops
        teacher_scores = self.teacher(torch.cat(crops[:count])).float()
        return self.assigner(list(teacher_scores.chunk(count)), self.epoch_of(step))

    def momentum(self, step: int) -> float:
        teacher = self.spec.teacher
        return teacher_momentum(step, self.total_steps, teacher.momentum, teacher.momentum_end)

    def after_optimizer_step(self, step: int) -> None:
        super().after_optimizer_step(step)
        ema_update(self.teacher, self.student, self.momentum(step))


class Dino(Daino):
    """DINO alone: no labels."""

    uses_labels = False
    summary = "DINO, no labels (clusters are matched to classes only for evaluation)"
