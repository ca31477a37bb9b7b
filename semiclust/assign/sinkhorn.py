"""The `sinkhorn` assignment: SwAV's equipartitioned soft clusters by Sinkhorn-Knopp, in log space and
fp32, with the cross-process sums injected; its recipe section and its registered module."""
from __future__ import annotations

import math
from typing import Annotated, Callable, ClassVar, Literal

import torch
from pydantic import ConfigDict, Field
from torch import nn

from semiclust.assign.prior import ClassPrior, PriorFields
from semiclust.engine import dist
from semiclust.registry import ASSIGNMENTS
from semiclust.config.schema import PartSpec

Reduce = Callable[[torch.Tensor], torch.Tensor]


def _global_logsumexp(values: torch.Tensor, dim: int | None, reduce_sum: Reduce, reduce_max: Reduce) -> torch.Tensor:
    """log(sum(exp(values))) over `dim` (None = everything) and over all processes, overflow-free."""
    if dim is None:
        peak = reduce_max(values.max().detach())
        return peak + torch.log(reduce_sum(torch.exp(values - peak).sum()))
    peak = reduce_max(values.max(dim=dim, keepdim=True).values.detach())
    return peak + torch.log(reduce_sum(torch.exp(values - peak).sum(dim=dim, keepdim=True)))


@torch.no_grad()
def sinkhorn(
    scores: torch.Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    reduce_sum: Reduce = dist.all_reduce_sum,
    reduce_max: Reduce = dist.all_reduce_max,
    total_batch: int | None = None,
    log_prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft assignments (B x K, each row sums to 1) from scores (B x K, this process's rows).

    Q = exp(S / epsilon) as K x B_total; normalised to sum 1; then `iterations` times: rows (one
    per prototype, summed over ALL processes) to 1/K (or to the prior's share of prototype k, given
    `log_prior`), columns (one per sample, local) to 1/B_total; finally times B_total. Computed in log
    space, so no epsilon overflows. `total_batch` (rows over all processes), when the caller knows it,
    spares a cross-process sum read back to the host.
    """
    log_q = scores.detach().float().t() / epsilon  # K x B
    num_prototypes, local_batch = log_q.shape
    if total_batch is None:
        total_batch = int(reduce_sum(torch.tensor(float(local_batch), device=log_q.device)).item())
    row_target = -math.log(num_prototypes) if log_prior is None else log_prior.float().reshape(-1, 1)
    log_q = log_q - _global_logsumexp(log_q, None, reduce_sum, reduce_max)
    for _ in range(iterations):
        log_q = log_q - _global_logsumexp(log_q, 1, reduce_sum, reduce_max) + row_target
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(total_batch)
    return (torch.exp(log_q) * total_batch).t()


class SinkhornSpec(PriorFields, PartSpec):
    """SwAV's equipartitioned assignment (on cosine scores / epsilon, in fp32)."""

    model_config = ConfigDict(extra="forbid")
    takes_queue: ClassVar[bool] = True

    name: Literal["sinkhorn"] = Field("sinkhorn", description="the assignment method")
    epsilon: Annotated[float, Field(gt=0)] = Field(0.05,
        description="entropy regularisation (scores are divided by it before the exponential)")
    iterations: Annotated[int, Field(ge=1)] = Field(3, description="Sinkhorn-Knopp normalisation rounds")


@ASSIGNMENTS.register("sinkhorn", spec=SinkhornSpec)
class SinkhornAssigner(nn.Module):
    """Equipartitioned soft clusters (SwAV), one Sinkhorn-Knopp run per target crop."""

    def __init__(self, spec: SinkhornSpec, num_classes: int, per_class: int = 1):
        super().__init__()
        self.spec = spec
        self.prior = ClassPrior(spec, num_classes, per_class)  # the class marginal, spread over each class's group

    def forward(self, scores: list[torch.Tensor], epoch: int) -> list[torch.Tensor]:
        """Every process holds the same number of rows, so the total is known without a cross-process sum."""
        world, log_prior = dist.world_size(), self.prior.log_prior()
        targets = [sinkhorn(s, self.spec.epsilon, self.spec.iterations, total_batch=len(s) * world,
                            log_prior=log_prior) for s in scores]
        self.prior.observe(scores)
        return targets
