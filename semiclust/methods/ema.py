"""Exponential moving averages of a network's weights: DINO's teacher update (parameters only) and the
weight average of `method.ema` (timm's ModelEmaV3: parameters and float buffers, other buffers copied)."""
from __future__ import annotations

import torch
from torch import nn

from semiclust.config.schema import Ema


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameters only (as DINO)."""
    teacher_params = list(teacher.parameters())
    student_params = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, student_params, alpha=1 - momentum)


def average_momentum(step: int, spec: Ema) -> float:
    """The average's momentum after optimiser step `step`: `spec.momentum`, or with the warm-up
    min(momentum, (1 + step) / (10 + step)), so that the random initial weights are forgotten quickly."""
    return min(spec.momentum, (1 + step) / (10 + step)) if spec.warmup else spec.momentum


@torch.no_grad()
def average_update(average: nn.Module, online: nn.Module, momentum: float) -> None:
    """average <- momentum * average + (1 - momentum) * online for parameters and floating-point buffers
    (BatchNorm's running statistics); integer buffers (batches seen) are copied."""
    for mine, theirs in zip(average.parameters(), online.parameters()):
        mine.lerp_(theirs.detach(), 1 - momentum)
    for mine, theirs in zip(average.buffers(), online.buffers()):
        if mine.is_floating_point():
            mine.lerp_(theirs, 1 - momentum)
        else:
            mine.copy_(theirs)
