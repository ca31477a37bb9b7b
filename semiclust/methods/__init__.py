"""Methods: suave, daino, and the special cases swav, dino (no labels), supervised (no unlabeled).

Each registers itself in `METHODS` with the decorator every registered part uses; importing this
package registers the built-in ones.
"""
from __future__ import annotations

from semiclust.data.batches import StepBatch
from semiclust.methods.base import Method, MethodDefaults, PartKit, StepResult
from semiclust.methods.daino import Daino, Dino
from semiclust.methods.suave import Suave, SwAV
from semiclust.methods.supervised import Supervised
from semiclust.registry import METHODS

__all__ = ["METHODS", "Daino", "Dino", "Method", "MethodDefaults", "PartKit", "StepBatch", "StepResult", "Suave",
           "Supervised", "SwAV"]
