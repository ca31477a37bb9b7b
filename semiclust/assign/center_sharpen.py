"""DINO's teacher targets: center the teacher's logits, sharpen with a low temperature."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from semiclust.engine import dist

Reduce = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def center_sharpen(logits: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax((logits - center) / temperature), in fp32."""
    return F.softmax((logits.float() - center) / temperature, dim=-1)


@torch.no_grad()
def updated_center(
    center: torch.Tensor, logits: torch.Tensor, momentum: float, reduce_sum: Reduce = dist.all_reduce_sum
) -> torch.Tensor:
    """momentum * center + (1 - momentum) * mean of `logits` rows over all processes."""
    rows = reduce_sum(torch.tensor(float(len(logits)), device=logits.device))
    batch_mean = reduce_sum(logits.float().sum(dim=0, keepdim=True)) / rows
    return center * momentum + batch_mean * (1 - momentum)


def teacher_temperature(epoch: int, start: float, end: float, warmup_epochs: int) -> float:
    """Linear warm-up from `start` to `end` over the first `warmup_epochs` epochs, stepped per epoch
    (epoch 0 uses `start`, epoch warmup_epochs - 1 reaches `end`, as DINO's linspace), then `end`."""
    if epoch >= warmup_epochs:
        return end
    if warmup_epochs == 1:
        return start
    return start + (end - start) * epoch / (warmup_epochs - 1)
