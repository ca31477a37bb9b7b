"""The class marginal an assignment aims its unlabeled targets at: uniform (SwAV's equipartition, DINO's
centering), the labeled subset's class frequencies, or an estimate kept online from the model's own
predictions on unlabeled images (an EMA of their batch means, all processes together, with a floor so
that no class is ever starved). Real data sets are imbalanced; the uniform marginal pushes them flat."""
from __future__ import annotations

import math
from typing import Annotated, Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn

from semiclust.engine import dist

Reduce = Callable[[torch.Tensor], torch.Tensor]
PriorKind = Literal["uniform", "labeled", "estimated"]


class PriorFields(BaseModel):
    """The prior's keys, shared by the sections of the assignments that take one."""

    prior: PriorKind = Field("uniform", description="the class marginal of the unlabeled targets: uniform (the "
                             "release), labeled (the labeled subset's class frequencies) or estimated (online, from "
                             "the model's predictions on unlabeled images)")
    prior_momentum: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.99, description="prior: estimated; EMA momentum of the estimate (one update per step)")
    prior_floor: Annotated[float, Field(ge=0, le=1)] = Field(
        0.1, description="prior: labeled or estimated; every class keeps at least this fraction of a uniform share")
    prior_temperature: Annotated[float, Field(gt=0)] = Field(
        0.1, description="prior: estimated; temperature of the predictions averaged (the method's temperature)")


def floored(distribution: torch.Tensor, floor: float) -> torch.Tensor:
    """`distribution` with every entry at least floor / K, renormalised to sum 1."""
    kept = distribution.clamp_min(floor / len(distribution))
    return kept / kept.sum()


@torch.no_grad()
def batch_mean_prediction(scores: list[torch.Tensor], temperature: float,
                          reduce_sum: Reduce = dist.all_reduce_sum) -> torch.Tensor:
    """Mean of softmax(scores / temperature) over every row of every matrix and every process (K,)."""
    rows = torch.cat([s.float() for s in scores])
    total = reduce_sum(F.softmax(rows / temperature, dim=1).sum(dim=0))
    count = reduce_sum(torch.tensor(float(len(rows)), device=rows.device))
    return total / count


class ClassPrior(nn.Module):
    """The marginal an assignment uses, as a buffer (checkpointed with the method, so resume is exact).

    `uniform` is None (the assignment keeps its own, unchanged, arithmetic, and no buffer: checkpoints keep
    their keys); `labeled` is fixed once the labeled subset is known (`use_counts`); `estimated` starts
    uniform and follows `observe`. The estimate is per class; with `per_class` prototypes per class
    (model.head.prototypes_per_class) each class's share is spread evenly over its group."""

    def __init__(self, spec: PriorFields, num_classes: int, per_class: int = 1):
        super().__init__()
        self.kind, self.momentum, self.floor = spec.prior, spec.prior_momentum, spec.prior_floor
        self.temperature, self.per_class = spec.prior_temperature, per_class
        if self.kind != "uniform":
            self.register_buffer("estimate", torch.full((num_classes,), 1.0 / num_classes))

    def use_counts(self, counts: torch.Tensor) -> None:
        """The labeled subset's class counts (prior: labeled)."""
        if self.kind == "labeled":
            self.estimate.copy_(counts.float() / counts.sum())

    def log_prior(self) -> torch.Tensor | None:
        """log of the marginal over the prototypes (floored), or None for the uniform one."""
        if self.kind == "uniform":
            return None
        log_class = torch.log(floored(self.estimate, self.floor))
        return log_class if self.per_class == 1 else spread_over_groups(log_class, self.per_class)

    @torch.no_grad()
    def observe(self, scores: list[torch.Tensor]) -> None:
        """After the targets of a step: move the estimate towards this step's mean prediction (estimated), each
        class's the sum over its prototypes."""
        if self.kind == "estimated":
            mean = batch_mean_prediction(scores, self.temperature)
            if self.per_class > 1:
                mean = mean.reshape(-1, self.per_class).sum(dim=1)
            self.estimate.mul_(self.momentum).add_(mean, alpha=1 - self.momentum)


def spread_over_groups(log_class: torch.Tensor, per_class: int) -> torch.Tensor:
    """A log class marginal (C,) as one over C * k prototypes, each class's share split evenly over its k
    consecutive prototypes: log p_c - log k, repeated k times."""
    return log_class.repeat_interleave(per_class) - math.log(per_class)
