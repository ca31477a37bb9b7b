"""Supervised baseline: the same network and labeled loss, no unlabeled stream; no options of its own."""
from __future__ import annotations

from semiclust.config.schema import PlainMethodSpec
from semiclust.data.streams import Stream
from semiclust.methods.base import Method, MethodDefaults
from semiclust.methods.suave import SWAV_HEAD
from semiclust.registry import METHODS


@METHODS.register("supervised", spec=PlainMethodSpec)
class Supervised(Method):
    """Labeled cross-entropy only, same backbone, head and prototype classifier."""

    streams = frozenset({Stream.LABELED})
    prototypes = "unit"
    defaults = MethodDefaults(assignment="sinkhorn", head=SWAV_HEAD)
    summary = "labeled cross-entropy only, same backbone, head and prototype classifier"
