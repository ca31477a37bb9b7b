"""The objects of one training run, as the composition root (engine/setup.py) assembles them."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from semiclust.data.batches import BatchMaker
from semiclust.data.datasets import Dataset
from semiclust.data.eval_views import EvalViews
from semiclust.data.subsets import LabeledSubset
from semiclust.engine.finite import FiniteWatch
from semiclust.engine.numbers import RunNumbers
from semiclust.engine.schedules import Schedules
from semiclust.methods.base import Method
from semiclust.models.init import InitReport
from semiclust.config.schema import Recipe


@dataclass
class Run:
    """Data, model, optimisation and where they run; `runner` is what calls the student in a step (the
    network itself, or its DistributedDataParallel wrapper, which the method never holds)."""

    recipe: Recipe
    dataset: Dataset
    subset: LabeledSubset
    numbers: RunNumbers
    schedules: Schedules
    method: Method
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # enabled under fp16 autocast only; its calls pass through otherwise
    batches: BatchMaker
    eval_views: EvalViews | None
    device: torch.device
    amp_dtype: torch.dtype | None
    runner: nn.Module
    sync_bn: bool
    init_report: InitReport | None = None
    notes: list[str] = field(default_factory=list)  # what setting up did that the start-up lines should say
    validation_views: EvalViews | None = None  # data.validation's images, evaluated beside the test split
    validation: LabeledSubset | None = None
    finite_watch: FiniteWatch | None = None  # CUDA without skipping: non-finite losses noticed on the device
