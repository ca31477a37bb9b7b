"""The shared single-loss step of every method; subclasses only say how unlabeled targets are made.

One step: labeled view (mixed copy appended) in front of the unlabeled crops of its resolution,
one backbone call per resolution, head + prototypes on everything, outputs split back; targets
for the unlabeled target crops (never from labeled images); one cross-entropy on both, each part
weighted by its number of prediction rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from semiclust.assign import build_assigner
from semiclust.methods.losses import combine_losses, labeled_fraction, soft_cross_entropy, swapped_cross_entropy
from semiclust.models.init import initialise
from semiclust.models.network import Network
from semiclust.recipe import Recipe


@dataclass(frozen=True)
class MethodDefaults:
    """What a method fills into a recipe that leaves it out."""

    assignment: str
    head: dict = field(default_factory=dict)
    optim: dict = field(default_factory=dict)


@dataclass
class StepBatch:
    """One step's inputs: V unlabeled crops (each B_u x C x s x s, same images in the same order)
    and the labeled view with its soft targets (mixed copy already appended)."""

    unlabeled: list[torch.Tensor]
    labeled: torch.Tensor | None = None
    labeled_targets: torch.Tensor | None = None


@dataclass
class StepResult:
    loss: torch.Tensor
    parts: dict[str, torch.Tensor]


class Method(nn.Module):
    """Base of every method. Class attributes say which streams it uses and its prototype kind."""

    uses_labels: bool = True
    uses_unlabeled: bool = True
    prototypes: Literal["unit", "weight_norm"] = "unit"
    defaults = MethodDefaults(assignment="sinkhorn")
    summary = ""
    per_process_prefixes: tuple[str, ...] = ("queue.",)  # state_dict entries each process keeps for itself

    def __init__(self, recipe: Recipe, num_classes: int, in_chans: int, steps_per_epoch: int):
        super().__init__()
        self.recipe = recipe
        self.spec = recipe.method
        self.num_classes = num_classes
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = steps_per_epoch * recipe.schedule.epochs
        self.student = Network(recipe.model, in_chans, num_classes, self.prototypes)
        self.init_report = initialise(self.student, recipe.model.init) if recipe.model.init else None
        self.assigner = build_assigner(self.spec.assignment, num_classes) if self.uses_unlabeled else None

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
    def student_runner(self) -> nn.Module:
        """What the training step calls: the student, or its DistributedDataParallel wrapper."""
        return self.__dict__.get("_runner") or self.student

    def set_student_runner(self, runner: nn.Module) -> None:
        """Install a wrapper (e.g. DDP) around the student without registering it as a submodule,
        so state_dict keys stay the same at every world size."""
        self.__dict__["_runner"] = runner

    @property
    def classifier(self) -> Network:
        """The network evaluated and exported (the student unless the method has a teacher)."""
        return self.student

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def training_step(self, batch: StepBatch, step: int) -> StepResult:
        tau = self.spec.temperature
        self.student.prototypes.normalize_()
        groups: list[torch.Tensor] = []
        n_labeled = 0
        if self.uses_labels:
            groups.append(batch.labeled)
            n_labeled = len(batch.labeled)
        unlabeled = batch.unlabeled if self.uses_unlabeled else []
        groups.extend(unlabeled)
        embeddings, scores = self.student_runner(groups)
        crop_rows = len(unlabeled[0]) if unlabeled else 0
        sizes = ([n_labeled] if self.uses_labels else []) + [crop_rows] * len(unlabeled)
        score_parts = list(scores.split(sizes))
        embedding_parts = list(embeddings.split(sizes))
        parts: dict[str, torch.Tensor] = {}
        zero = scores.new_zeros((), dtype=torch.float32)
        loss_labeled, loss_unlabeled = zero, zero
        if self.uses_labels:
            logits = score_parts.pop(0).float() / tau
            embedding_parts.pop(0)
            loss_labeled = soft_cross_entropy(logits, batch.labeled_targets, self.spec.label_smoothing)
            parts["loss_labeled"] = loss_labeled.detach()
        n_unlabeled = crop_rows * len(unlabeled)
        if self.uses_unlabeled:
            with torch.no_grad():
                targets = self.targets(embedding_parts, score_parts, unlabeled, step)
            loss_unlabeled = swapped_cross_entropy(targets, score_parts, tau)
            parts["loss_unlabeled"] = loss_unlabeled.detach()
        if self.uses_labels and self.uses_unlabeled:
            loss = combine_losses(loss_labeled, n_labeled, loss_unlabeled, n_unlabeled, self.spec.labeled_weight)
            parts["labeled_weight"] = scores.new_tensor(labeled_fraction(n_labeled, n_unlabeled, self.spec.labeled_weight),
                                                        dtype=torch.float32)
        else:
            loss = loss_labeled if self.uses_labels else loss_unlabeled
        parts["loss"] = loss.detach()
        return StepResult(loss, parts)

    def zero_frozen_grads(self, step: int) -> None:
        """SwAV's option: prototypes get no update during the first `freeze_prototypes_steps` steps."""
        if step < self.spec.freeze_prototypes_steps:
            for p in self.student.prototypes.parameters():
                p.grad = None
