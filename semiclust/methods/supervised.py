"""Supervised baseline: the same network and labeled loss, no unlabeled stream."""
from __future__ import annotations

from semiclust.methods.base import Method, MethodDefaults
from semiclust.methods.suave import SWAV_HEAD


class Supervised(Method):
    uses_unlabeled = False
    prototypes = "unit"
    defaults = MethodDefaults(assignment="sinkhorn", head=SWAV_HEAD)
    summary = "labeled cross-entropy only, same backbone, head and prototype classifier"
