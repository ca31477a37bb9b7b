"""The `center_sharpen` assignment: DINO's teacher targets, the teacher's logits centered and sharpened
with a low temperature; the pure functions, its recipe section and its registered module."""
from __future__ import annotations

from typing import Annotated, Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field
from torch import nn

from semiclust.assign.prior import ClassPrior, PriorFields
from semiclust.engine import dist
from semiclust.registry import ASSIGNMENTS
from semiclust.config.schema import PartSpec

Reduce = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def center_sharpen(logits: torch.Tensor, center: torch.Tensor, temperature: float,
                   log_prior: torch.Tensor | None = None) -> torch.Tensor:
    """softmax((logits - center) / temperature), in fp32; with `log_prior`, softmax((logits - center) / temperature
    + log prior): centering flattens the targets' class marginal, the prior puts its shape back."""
    if log_prior is None:
        return F.softmax((logits.float() - center) / temperature, dim=-1)
    return F.softmax((logits.float() - center) / temperature + log_prior.float(), dim=-1)


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


class CenterSharpenSpec(PriorFields, PartSpec):
    """DINO's teacher targets: softmax((logits - center) / temperature), center kept by EMA."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["center_sharpen"] = Field("center_sharpen", description="the assignment method")
    temperature: Annotated[float, Field(gt=0)] = Field(0.07, description="teacher temperature after the warm-up")
    warmup_temperature: Annotated[float, Field(gt=0)] = Field(0.04,
        description="teacher temperature at the start of the warm-up")
    warmup_epochs: Annotated[int, Field(ge=0)] = Field(10, description="linear warm-up, stepped per epoch as DINO")
    center_momentum: Annotated[float, Field(ge=0.0, le=1.0)] = Field(0.9, description="EMA momentum of the center")


@ASSIGNMENTS.register("center_sharpen", spec=CenterSharpenSpec)
class CenterSharpenAssigner(nn.Module):
    """Centered, sharpened softmax (DINO); the center is updated by EMA after computing targets."""

    def __init__(self, spec: CenterSharpenSpec, num_classes: int, per_class: int = 1):
        super().__init__()
        self.spec = spec
        self.register_buffer("center", torch.zeros(1, num_classes * per_class))
        self.prior = ClassPrior(spec, num_classes, per_class)

    def temperature(self, epoch: int) -> float:
        s = self.spec
        return teacher_temperature(epoch, s.warmup_temperature, s.temperature, s.warmup_epochs)

    @torch.no_grad()
    def forward(self, scores: list[torch.Tensor], epoch: int) -> list[torch.Tensor]:
        temperature = self.temperature(epoch)
        log_prior = self.prior.log_prior()
        targets = [center_sharpen(s, self.center, temperature, log_prior) for s in scores]
        self.center.copy_(updated_center(self.center, torch.cat(scores), self.spec.center_momentum))
        self.prior.observe(scores)
        return targets
