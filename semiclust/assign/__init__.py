"""Assignments: how a batch of scores becomes soft targets (no gradient, fp32).

Each assignment is one module that holds its maths, its recipe section (a `PartSpec` subclass) and an
nn.Module registered in `ASSIGNMENTS` with that section (so any state, like DINO's center, is a
buffer that checkpoints with the method). Importing this package registers the built-in ones.
"""
from __future__ import annotations

from semiclust.assign.center_sharpen import CenterSharpenAssigner, CenterSharpenSpec, center_sharpen, updated_center
from semiclust.assign.sinkhorn import SinkhornAssigner, SinkhornSpec, sinkhorn
from semiclust.registry import ASSIGNMENTS
from semiclust.schema import PartSpec

__all__ = ["ASSIGNMENTS", "CenterSharpenAssigner", "CenterSharpenSpec", "SinkhornAssigner", "SinkhornSpec",
           "build_assigner", "center_sharpen", "sinkhorn", "updated_center"]


def build_assigner(spec: PartSpec, num_prototypes: int):
    """The registered assignment `spec.name`, its section checked by the assignment's own class (a
    recipe read back from a checkpoint carries the generic section)."""
    section = ASSIGNMENTS.spec(spec.name)
    typed = spec if isinstance(spec, section) else section.model_validate(spec.model_dump())
    return ASSIGNMENTS.get(spec.name)(typed, num_prototypes)
