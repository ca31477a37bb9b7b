"""Assignment registry: how a batch of scores becomes soft targets (no gradient, fp32).

Each entry is an nn.Module (so any state, like DINO's center, is a buffer that checkpoints with
the method) built from its recipe section and the number of prototypes, called once per step on
the list of target-crop score matrices.
"""
from __future__ import annotations

import torch
from torch import nn

from semiclust.assign.center_sharpen import center_sharpen, teacher_temperature, updated_center
from semiclust.assign.sinkhorn import sinkhorn
from semiclust.recipe import CenterSharpenSpec, SinkhornSpec
from semiclust.registry import Registry

ASSIGNMENTS: Registry[type[nn.Module]] = Registry("assignment")


@ASSIGNMENTS.register("sinkhorn")
class SinkhornAssigner(nn.Module):
    """Equipartitioned soft clusters (SwAV), one Sinkhorn-Knopp run per target crop."""

    def __init__(self, spec: SinkhornSpec, num_prototypes: int):
        super().__init__()
        self.spec = spec

    def forward(self, scores: list[torch.Tensor], epoch: int) -> list[torch.Tensor]:
        return [sinkhorn(s, self.spec.epsilon, self.spec.iterations) for s in scores]


@ASSIGNMENTS.register("center_sharpen")
class CenterSharpenAssigner(nn.Module):
    """Centered, sharpened softmax (DINO); the center is updated by EMA after computing targets."""

    def __init__(self, spec: CenterSharpenSpec, num_prototypes: int):
        super().__init__()
        self.spec = spec
        self.register_buffer("center", torch.zeros(1, num_prototypes))

    def temperature(self, epoch: int) -> float:
        s = self.spec
        return teacher_temperature(epoch, s.warmup_temperature, s.temperature, s.warmup_epochs)

    @torch.no_grad()
    def forward(self, scores: list[torch.Tensor], epoch: int) -> list[torch.Tensor]:
        temperature = self.temperature(epoch)
        targets = [center_sharpen(s, self.center, temperature) for s in scores]
        self.center.copy_(updated_center(self.center, torch.cat(scores), self.spec.center_momentum))
        return targets


def build_assigner(spec: SinkhornSpec | CenterSharpenSpec, num_prototypes: int) -> nn.Module:
    return ASSIGNMENTS.get(spec.name)(spec, num_prototypes)
