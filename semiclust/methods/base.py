"""The shared single-loss step of every method; subclasses only say how unlabeled targets are made.

One step: labeled view (mixed copy appended) in front of the unlabeled crops of its resolution,
one backbone call per resolution, head + prototypes on everything, outputs split back; targets
for the unlabeled target crops (never from labeled images); one cross-entropy on both, each part
weighted by its number of prediction rows.

A method is given its parts (the student network, the assigner, the schedules, and its own: a queue, a
teacher); its `build` says which of them to make from the `PartKit` the composition root (`engine/setup.py`)
hands it, so that a method with a new kind of part is one file. It reads no file and knows no process count.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Literal

import torch
from torch import nn

from semiclust.assign import build_assigner
from semiclust.config.schema import MethodSpec, Recipe
from semiclust.data.batches import StepBatch
from semiclust.data.streams import BOTH, Stream
from semiclust.engine.schedules import Schedules
from semiclust.methods.ema import average_momentum, average_update
from semiclust.methods.label_propagation import PropagatedTargets
from semiclust.methods.losses import (combine_losses, labeled_fraction, pseudo_label_loss, pseudo_labels,
                                      soft_cross_entropy, swapped_cross_entropy)
from semiclust.methods.per_process import PerProcess
from semiclust.models.network import Network, teacher_of

StudentForward = Callable[[list[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class MethodDefaults:
    """What a method fills into a recipe that leaves it out."""

    assignment: str
    head: dict = field(default_factory=dict)
    optim: dict = field(default_factory=dict)


@dataclass
class PartKit:
    """What the composition root hands a method's `build`: the recipe, the student, the schedules and the sizes a
    part is made with, and the makers of the parts every method may take (the assigner, a copy of the student)."""

    recipe: Recipe
    student: Network
    schedules: Schedules
    in_chans: int
    num_classes: int
    processes: int
    prototypes: Literal["unit", "weight_norm"] = "unit"

    @property
    def spec(self) -> MethodSpec:
        """The method's own recipe section (its registered class)."""
        return self.recipe.method

    def student_copy(self) -> Network:
        """A network of the student's shape holding the student's weights, without gradients (a teacher, an
        average)."""
        return teacher_of(self.student, self.recipe.model, self.in_chans, self.num_classes, self.prototypes)

    def average(self) -> Network | None:
        """The weight average of `method.ema`, when it is on."""
        return self.student_copy() if self.spec.ema.enabled else None

    def assigner(self, streams: frozenset[Stream]) -> nn.Module | None:
        """The registered assignment of `method.assignment`, for a method that trains on unlabeled images."""
        if Stream.UNLABELED not in streams:
            return None
        return build_assigner(self.spec.assignment, self.num_classes, self.recipe.model.head.prototypes_per_class)


@dataclass
class StepResult:
    loss: torch.Tensor
    parts: dict[str, torch.Tensor]


def mixed_view_loss(scores: torch.Tensor, targets: list[torch.Tensor], lam: float, temperature: float) -> torch.Tensor:
    """Suave's mixed view (global crop 1 mixed with the batch-reversed global crop 2) against the same mix of
    the two globals' targets: CE(lam * q_1 + (1 - lam) * reversed(q_2), softmax(scores / temperature))."""
    target = lam * targets[0] + (1 - lam) * targets[1].flip(0)
    return soft_cross_entropy(scores.float() / temperature, target)


@dataclass
class StepPieces:
    """The network's outputs split back: labeled scores, the unlabeled crops' embeddings and scores (in crop
    order), and the mixed view's scores."""

    labeled: torch.Tensor | None
    embeddings: list[torch.Tensor]
    scores: list[torch.Tensor]
    mixed: torch.Tensor | None


@dataclass
class GroupLayout:
    """The crop groups of one backbone pass, in order: the labeled view, the target crops, the mixed view
    (after the globals, so that it shares their backbone call and BatchNorm statistics), the other crops."""

    groups: list[torch.Tensor]
    unlabeled: list[torch.Tensor]
    has_labeled: bool
    mixed_at: int | None  # the mixed view's position among the unlabeled groups

    @classmethod
    def of(cls, batch: StepBatch, labels: bool, unlabeled: bool, target_crops: int) -> "GroupLayout":
        crops = batch.unlabeled if unlabeled else []
        mixed = [batch.mixed] if unlabeled and batch.mixed is not None else []
        groups = ([batch.labeled] if labels else []) + crops[:target_crops] + mixed + crops[target_crops:]
        return cls(groups, crops, labels, target_crops if mixed else None)

    def split(self, embeddings: torch.Tensor, scores: torch.Tensor) -> StepPieces:
        sizes = [len(g) for g in self.groups]
        embedding_parts, score_parts = list(embeddings.split(sizes)), list(scores.split(sizes))
        labeled = None
        if self.has_labeled:
            embedding_parts.pop(0)
            labeled = score_parts.pop(0)
        mixed = None
        if self.mixed_at is not None:
            embedding_parts.pop(self.mixed_at)
            mixed = score_parts.pop(self.mixed_at)
        return StepPieces(labeled, embedding_parts, score_parts, mixed)


class Method(nn.Module):
    """Base of every method. Class attributes declare the streams it draws from, its prototype kind and its recipe
    defaults; its recipe section is the class registered with it; its parts are typed members, made by `build`."""

    streams: ClassVar[frozenset[Stream]] = BOTH
    prototypes: ClassVar[Literal["unit", "weight_norm"]] = "unit"
    defaults: ClassVar[MethodDefaults] = MethodDefaults(assignment="sinkhorn")
    summary: ClassVar[str] = ""

    def __init__(self, spec: MethodSpec, student: Network, assigner: nn.Module | None, schedules: Schedules,
                 ema: Network | None = None):
        super().__init__()
        self.spec = spec
        self.student = student
        self.assigner = assigner
        self.schedules = schedules  # the scheduled values of each step, read from the run's numbers
        self.ema = ema  # the weight average of method.ema: a member (and state-dict entries) only when on
        self.propagation: PropagatedTargets | None = None  # schedule.finetune.targets: propagated (engine/setup.py)

    @classmethod
    def build(cls, kit: PartKit) -> "Method":
        """The method with its parts made from the composition root's kit; a method with parts of its own (a queue,
        a teacher) overrides this to make them."""
        average = kit.average()
        return cls(kit.spec, kit.student, kit.assigner(cls.streams), kit.schedules, ema=average)

    # ---- what subclasses provide
    def targets(self, embeddings: list[torch.Tensor], scores: list[torch.Tensor], crops: list[torch.Tensor],
                step: int) -> list[torch.Tensor]:
        """Soft targets (B_u x K) for the first `target_crops` unlabeled crops. No gradient."""
        raise NotImplementedError

    def after_optimizer_step(self, step: int) -> None:
        """Bookkeeping after the weights moved: unit-norm prototypes are renormalised (so the saved
        and evaluated classifier scores cosines), the weight average (`method.ema`) follows the student;
        subclasses add theirs (teacher EMA)."""
        self.student.prototypes.normalize_()
        average = self.average
        if average is not None:
            average_update(average, self.student, average_momentum(step, self.spec.ema))
            average.prototypes.normalize_()

    # ---- shared
    @property
    def propagation_pending(self) -> bool:
        """Whether the method trains on propagated targets later and its table is not filled yet."""
        return self.propagation is not None and not self.propagation.ready

    @property
    def uses_labels(self) -> bool:
        return Stream.LABELED in self.streams

    @property
    def uses_unlabeled(self) -> bool:
        return Stream.UNLABELED in self.streams

    @property
    def average(self) -> Network | None:
        """The weight average of `method.ema`, when it is on."""
        return self.ema

    @property
    def classifier(self) -> Network:
        """The network evaluated and exported: the student, or its weight average when `method.ema.evaluate`
        (a method with a teacher evaluates the teacher)."""
        average = self.average
        return average if average is not None and self.spec.ema.evaluate else self.student

    def networks(self) -> dict[str, Network]:
        """Every network a checkpoint can give as a classifier (the student, a teacher, the weight average), by the
        state-dict prefix it has there: the method's members that are networks."""
        return {name: module for name, module in self.named_children() if isinstance(module, Network)}

    def per_process_state(self) -> dict[str, torch.Tensor]:
        """The state each process keeps for itself (its `PerProcess` parts, at any depth, as `buffers_replaced` finds
        them: SwAV's queue, or one inside an assigner), as state-dict entries."""
        return {f"{name}.{key}": value.detach().cpu() for name, module in self.named_modules()
                if isinstance(module, PerProcess) for key, value in module.state_dict().items()}

    def buffers_replaced(self) -> None:
        """Tell the parts that keep a buffer's value on the host that the buffers were put back (a skipped step)."""
        for module in self.modules():
            if isinstance(module, PerProcess):
                module.buffers_changed()

    def beside(self) -> dict[str, Network]:
        """Networks evaluated beside the classifier and reported under their name (the online network and
        its weight average, whichever is not the classifier)."""
        if self.average is None:
            return {}
        return {"online": self.student} if self.classifier is self.average else {"ema": self.average}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]

    def training_step(self, batch: StepBatch, step: int, student: StudentForward | None = None) -> StepResult:
        """The step's single loss. `student` runs the student on the crop groups: the network itself, or
        the DistributedDataParallel wrapper around it that the trainer passes."""
        tau = self.spec.temperature
        self.student.prototypes.normalize_()
        layout = GroupLayout.of(batch, self.uses_labels, self.uses_unlabeled, self.spec.target_crops)
        embeddings, scores = (student or self.student)(layout.groups)
        pieces = layout.split(embeddings, scores)
        parts: dict[str, torch.Tensor] = {}
        rows: dict[str, tuple[torch.Tensor, int]] = {}
        if self.uses_labels:
            logits = self.student.class_scores(pieces.labeled).float() / tau  # log-softmax: log p(class)
            loss = soft_cross_entropy(logits, batch.labeled_targets, self.spec.label_smoothing)
            rows["labeled"] = (loss, len(batch.labeled))
        threshold = self.schedules.pseudo_label_threshold(step)
        if self.uses_unlabeled and self.schedules.propagated_targets(step):
            rows["unlabeled"] = (self._propagated_loss(pieces, batch, parts),
                                 len(layout.unlabeled[0]) * len(layout.unlabeled))
        elif self.uses_unlabeled and threshold is not None:
            rows["unlabeled"] = (self._pseudo_label_loss(pieces, layout, parts, threshold),
                                 len(layout.unlabeled[0]) * len(layout.unlabeled))
        elif self.uses_unlabeled:
            with torch.no_grad():
                targets = self.targets(pieces.embeddings, pieces.scores, layout.unlabeled, step)
            loss = swapped_cross_entropy(targets, pieces.scores, tau)
            rows["unlabeled"] = (loss, len(layout.unlabeled[0]) * len(layout.unlabeled))
            if pieces.mixed is not None:
                rows["mixed"] = (mixed_view_loss(pieces.mixed, targets, batch.mixed_lambda, tau),
                                 self._mixed_rows(len(batch.mixed)))
        for name, (loss, _) in rows.items():
            parts[f"loss_{name}"] = loss.detach()
        loss = self._combined(rows, parts, scores, self.schedules.labeled_weight(step))
        parts["loss"] = loss.detach()
        return StepResult(loss, parts)

    def pseudo_label_scores(self, pieces: "StepPieces", crops: list[torch.Tensor]) -> list[torch.Tensor]:
        """The prototype scores pseudo-labels are read from: the target crops' own (no gradient); a method with a
        teacher reads its teacher's."""
        return [s.detach() for s in pieces.scores[: self.spec.target_crops]]

    def _pseudo_label_loss(self, pieces: "StepPieces", layout: "GroupLayout", parts: dict,
                           threshold: float) -> torch.Tensor:
        """Self-training (schedule.finetune.targets: pseudo_labels): every crop towards the class the classifier
        gives the image with at least the threshold's probability; the share of images kept is logged."""
        tau, pool = self.spec.temperature, self.student.class_scores
        with torch.no_grad():
            source = [pool(s).float() / tau for s in self.pseudo_label_scores(pieces, layout.unlabeled)]
        labels, keep = pseudo_labels(source, threshold)
        parts["pseudo_label_share"] = keep.float().mean()
        return pseudo_label_loss([pool(s).float() / tau for s in pieces.scores], labels, keep)

    def _propagated_loss(self, pieces: "StepPieces", batch: StepBatch, parts: dict) -> torch.Tensor:
        """Every crop towards its image's propagated class, weighted by the propagation's confidence (the stage's
        start filled the table: engine/finetune_targets.py); the mean weight is logged."""
        if self.propagation is None or not self.propagation.ready or batch.unlabeled_index is None:
            raise RuntimeError("the propagated targets were not computed before the fine-tuning stage")
        labels, weights = self.propagation.of(batch.unlabeled_index)
        parts["propagated_weight"] = weights.mean()
        tau, pool = self.spec.temperature, self.student.class_scores
        return pseudo_label_loss([pool(s).float() / tau for s in pieces.scores], labels, weights)

    def _mixed_rows(self, images: int) -> int:
        """The mixed view's count in the row-count weighting: 1 (the release counts views) or its images."""
        return 1 if self.spec.unlabeled_mixup.weight == "views" else images

    def _combined(self, rows: dict[str, tuple[torch.Tensor, int]], parts: dict[str, torch.Tensor],
                  like: torch.Tensor, scheduled: float | None) -> torch.Tensor:
        """Row-count weighting of the parts: the labeled part against the unlabeled ones (the swapped loss
        and the mixed view, themselves weighted by their rows), or the one part a single-stream method has; the
        labeled weight the schedule sets (`scheduled`, a fine-tuning stage) wins over method.labeled_weight."""
        unlabeled, n_unlabeled = rows.get("unlabeled", (None, 0))
        if "mixed" in rows:
            mixed, n_mixed = rows["mixed"]
            unlabeled = (n_unlabeled * unlabeled + n_mixed * mixed) / (n_unlabeled + n_mixed)
            n_unlabeled += n_mixed
        if self.streams != BOTH:
            return rows["labeled"][0] if self.uses_labels else unlabeled
        labeled, n_labeled = rows["labeled"]
        fixed = self.spec.labeled_weight if scheduled is None else scheduled
        weight = labeled_fraction(n_labeled, n_unlabeled, fixed)
        parts["labeled_weight"] = torch.full((), weight, dtype=torch.float32, device=like.device)  # no host copy
        return combine_losses(labeled, n_labeled, unlabeled, n_unlabeled, fixed)

    def zero_frozen_grads(self, step: int) -> None:
        """SwAV's option: prototypes get no update during the first `freeze_prototypes_steps` steps."""
        if step < self.spec.freeze_prototypes_steps:
            for p in self.student.prototypes.parameters():
                p.grad = None
