"""Method registry: suave, daino, and the special cases swav, dino (no labels), supervised (no unlabeled)."""
from __future__ import annotations

from semiclust.methods.base import Method, MethodDefaults, StepBatch, StepResult
from semiclust.methods.daino import Daino, Dino
from semiclust.methods.suave import Suave, SwAV
from semiclust.methods.supervised import Supervised
from semiclust.registry import Registry

METHODS: Registry[type[Method]] = Registry("method")
for _name, _cls in (("suave", Suave), ("daino", Daino), ("swav", SwAV), ("dino", Dino), ("supervised", Supervised)):
    METHODS.register(_name)(_cls)

__all__ = ["METHODS", "Method", "MethodDefaults", "StepBatch", "StepResult"]
