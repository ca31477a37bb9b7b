"""Assignments: how a batch of scores becomes soft targets (no gradient, fp32).

Each assignment is one module that holds its maths, its recipe section (a `PartSpec` subclass) and an
nn.Module registered in `ASSIGNMENTS` with that section (so any state, like DINO's center, is a
buffer that checkpoints with the method). Importing this package registers the built-in ones.
"""
from __future__ import annotations

import inspect

from semiclust.assign.center_sharpen import CenterSharpenAssigner, CenterSharpenSpec, center_sharpen, updated_center
from semiclust.assign.sinkhorn import SinkhornAssigner, SinkhornSpec, sinkhorn
from semiclust.errors import SemiclustError
from semiclust.registry import ASSIGNMENTS
from semiclust.config.schema import PartSpec

__all__ = ["ASSIGNMENTS", "CenterSharpenAssigner", "CenterSharpenSpec", "SinkhornAssigner", "SinkhornSpec",
           "build_assigner", "center_sharpen", "sinkhorn", "updated_center"]


def build_assigner(spec: PartSpec, num_classes: int, per_class: int = 1):
    """The registered assignment `spec.name` over `num_classes * per_class` prototypes (`per_class` consecutive
    ones per class), its section checked by the assignment's own class (a recipe read back from a checkpoint
    carries the generic section). An assignment is made as `Assignment(section, num_prototypes)`, and with several
    prototypes per class as `Assignment(section, num_classes, per_class)`, which one of its own must then accept."""
    section = ASSIGNMENTS.spec(spec.name)
    typed = spec if isinstance(spec, section) else section.model_validate(spec.model_dump())
    kind = ASSIGNMENTS.get(spec.name)
    if per_class == 1:
        return kind(typed, num_classes)
    if "per_class" not in inspect.signature(kind).parameters:
        raise SemiclustError(f"assignment '{spec.name}' does not take several prototypes per class (its class has no "
                             "per_class argument); set model.head.prototypes_per_class: 1, or use sinkhorn or "
                             "center_sharpen.")
    return kind(typed, num_classes, per_class)
