"""The shared single-loss step of every method; subclasses only say how unlabeled targets are made.

One step: labeled view (mixed copy appended) in front of the unlabeled crops of its resolution,
one backbone call per resolution, head + prototypes on everything, outputs split back; targets
for the unlabeled target crops (never from labeled images); one cross-entropy on both, each part
weighted by its number of prediction rows.

A method is given its parts (the student network, the assigner, and what `parts` names: a queue, a
teacher) by the composition root, `engine/setup.py`; it reads no file and knows no process count.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import nn

from semiclust.data.batches import StepBatch
from semiclust.data.streams import BOTH, Stream
from semiclust.methods.losses import combine_losses, labeled_fraction, soft_cross_entropy, swapped_cross_entropy
from semiclust.models.network import Network
from semiclust.schema import MethodSpec

StudentForward = Callable[[list[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class MethodDefaults:
    """What a method fills into a recipe that leaves it out."""

    assignment: str
    head: dict = field(default_factory=dict)
    optim: dict = field(default_factory=dict)


@dataclass
class StepResult:
    loss: torch.Tensor
    parts: dict[str, torch.Tensor]


class Method(nn.Module):
    """Base of every method. Class attributes declare the streams it draws from, the parts it takes
    beyond student and assigner, its prototype kind and its recipe defaults."""

    streams: frozenset[Stream] = BOTH
    parts: tuple[str, ...] = ()  # extra parts the composition root builds for it: "queue", "teacher"
    prototypes: Literal["unit", "weight_norm"] = "unit"
    defaults = MethodDefaults(assignment="sinkhorn")
    summary = ""
    per_process_prefixes: tuple[str, ...] = ("queue.",)  # state_dict entries each process keeps for itself

    def __init__(self, spec: MethodSpec, student: Network, assigner: nn.Module | None, steps_per_epoch: int,
                 total_steps: int):
        super().__init__()
        self.spec = spec
        self.student = student
        self.assigner = assigner
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps

    # ---- what subclasses provide
    def targets(self, embeddings: list[torch.Tensor], scores: list[torch.Tensor], crops: list[torch.Tensor],
                step: int) -> list[torch.Tensor]:
        """Soft targets (B_u x K) for the first `target_crops` unlabeled crops. No gradient."""
        raise NotImplementedError

    def after_optimizer_step(self, step: int) -> None:
        """Bookkeeping after the weights moved: unit-norm prototypes are renormalised (so the saved
        and evaluated classifier scores cosines); subclasses add theirs (teacher EMA)."""
        self.student.prototypes.normalize_()

    # ---- shared
    @property
    def uses_labels(self) -> bool:
        return Stream.LABELED in self.streams

    @property
    def uses_unlabeled(self) -> bool:
        return Stream.UNLABELED in self.streams

    @property
    def classifier(self) -> Network:
        """The network evaluated and exported (the student unless the method has a teacher)."""
        return self.student

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def training_step(self, batch: StepBatch, step: int, student: StudentForward | None = None) -> StepResult:
        """The step's single loss. `student` runs the student on the crop groups: the network itself, or
        the DistributedDataParallel wrapper around it that the trainer passes."""
        tau = self.spec.temperature
        self.student.prototypes.normalize_()
        groups = ([batch.labeled] if self.uses_labels else []) + (batch.unlabeled if self.uses_unlabeled else [])
        embeddings, scores = (student or self.student)(groups)
        n_labeled = len(batch.labeled) if self.uses_labels else 0
        unlabeled = batch.unlabeled if self.uses_unlabeled else []
        crop_rows = len(unlabeled[0]) if unlabeled else 0
        sizes = ([n_labeled] if self.uses_labels else []) + [crop_rows] * len(unlabeled)
        score_parts, embedding_parts = list(scores.split(sizes)), list(embeddings.split(sizes))
        parts: dict[str, torch.Tensor] = {}
        loss_labeled = loss_unlabeled = scores.new_zeros((), dtype=torch.float32)
        if self.uses_labels:
            embedding_parts.pop(0)
            loss_labeled = soft_cross_entropy(score_parts.pop(0).float() / tau, batch.labeled_targets,
                                              self.spec.label_smoothing)
            parts["loss_labeled"] = loss_labeled.detach()
        if self.uses_unlabeled:
            with torch.no_grad():
                targets = self.targets(embedding_parts, score_parts, unlabeled, step)
            loss_unlabeled = swapped_cross_entropy(targets, score_parts, tau)
            parts["loss_unlabeled"] = loss_unlabeled.detach()
        loss = self._combined(loss_labeled, n_labeled, loss_unlabeled, crop_rows * len(unlabeled), parts, scores)
        parts["loss"] = loss.detach()
        return StepResult(loss, parts)

    def _combined(self, labeled: torch.Tensor, n_labeled: int, unlabeled: torch.Tensor, n_unlabeled: int,
                  parts: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """Row-count weighting of the two parts (or the one part a single-stream method has)."""
        if self.streams != BOTH:
            return labeled if self.uses_labels else unlabeled
        weight = labeled_fraction(n_labeled, n_unlabeled, self.spec.labeled_weight)
        parts["labeled_weight"] = like.new_tensor(weight, dtype=torch.float32)
        return combine_losses(labeled, n_labeled, unlabeled, n_unlabeled, self.spec.labeled_weight)

    def zero_frozen_grads(self, step: int) -> None:
        """SwAV's option: prototypes get no update during the first `freeze_prototypes_steps` steps."""
        if step < self.spec.freeze_prototypes_steps:
            for p in self.student.prototypes.parameters():
                p.grad = None
