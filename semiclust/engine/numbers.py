"""The numbers a run is made of (global batches, steps, warm-up, scaled lr): the one place they are
derived, for training and the dry run alike."""
from __future__ import annotations

from dataclasses import dataclass

from semiclust.data.streams import Stream
from semiclust.engine.schedules import cosine, scaled_lr, warmup_cosine
from semiclust.errors import SemiclustError
from semiclust.config.schema import Batch, Recipe


@dataclass(frozen=True)
class RunNumbers:
    world: int
    process_unlabeled: int  # this process's share of a micro-batch, what its streams draw
    process_labeled: int
    global_unlabeled: int  # images per optimiser step over all processes (accumulation included)
    global_labeled: int
    images_per_step: int  # what the step trains on over all processes: the streams the method uses
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    backbone_warmup_steps: int = 0  # the head warm-up (optim.backbone_warmup_epochs), in steps


def process_batches(batch: Batch, world: int, accumulate: int) -> tuple[int, int]:
    """Each process's unlabeled and labeled images per micro-batch: the global batches split over processes and
    accumulation steps (`per: process` recipes give them directly); a global batch that does not divide is an error."""
    if batch.per == "process":
        return batch.unlabeled, batch.labeled
    shares = world * accumulate
    for name, value in (("unlabeled", batch.unlabeled), ("labeled", batch.labeled)):
        if value % shares:
            lower, higher = value // shares * shares, (value // shares + 1) * shares
            nearest = f"{lower} or {higher}" if lower else f"{higher}"
            raise SemiclustError(
                f"data.batch.{name} is {value} images per optimiser step over all processes, which does not split into "
                f"{world} process(es) x {accumulate} accumulation step(s) = {shares} equal shares; use {nearest} (a "
                f"multiple of {shares}), or another number of processes (`semiclust train RECIPE --dry-run --processes N` "
                "shows the split).")
    return batch.unlabeled // shares, batch.labeled // shares


def steps_per_epoch(train_size: int, batch: int, world: int, accumulate: int) -> int:
    """Optimiser steps in one pass over the unlabeled set (drop_last), at least 1."""
    return max(train_size // (batch * world) // accumulate, 1)


def run_numbers(recipe: Recipe, train_size: int, world: int, streams: frozenset[Stream],
                total_steps: int | None = None) -> RunNumbers:
    """Derived values of a run; lr scaled by the global unlabeled batch (labeled for a labels-only method).

    The length is `schedule.epochs` epochs, or `total_steps` when given (a budgeted run, once calibrated;
    until then one epoch stands in for it)."""
    optim, accumulate = recipe.optim, recipe.optim.accumulate_steps
    process_unlabeled, process_labeled = process_batches(recipe.data.batch, world, accumulate)
    batches_per_pass = train_size // (process_unlabeled * world)
    if 0 < batches_per_pass < accumulate:  # no batch at all is the unlabeled stream's error
        raise SemiclustError(
            f"optim.accumulate_steps is {accumulate} but one epoch holds only {batches_per_pass} batches; "
            "lower accumulate_steps or data.batch.unlabeled."
        )
    steps = steps_per_epoch(train_size, process_unlabeled, world, accumulate)
    unlabeled, labeled = process_unlabeled * world * accumulate, process_labeled * world * accumulate
    reference = unlabeled if Stream.UNLABELED in streams else labeled
    images = (unlabeled if Stream.UNLABELED in streams else 0) + (labeled if Stream.LABELED in streams else 0)
    total = total_steps or steps * (recipe.schedule.epochs or 1)
    return RunNumbers(world, process_unlabeled, process_labeled, unlabeled, labeled, images, steps, total,
                      round(recipe.schedule.warmup_epochs * steps), scaled_lr(optim.lr, reference, optim.lr_reference_batch),
                      round(optim.backbone_warmup_epochs * steps))


@dataclass(frozen=True)
class Schedules:
    """The learning rate and weight decay at each step: pure functions of the global step."""

    recipe: Recipe
    numbers: RunNumbers

    def lr(self, step: int) -> float:
        """Warm-up then cosine to final_lr over the first stage; in the fine-tuning stage, its own cosine."""
        s, n = self.recipe.schedule, self.numbers
        start = self.finetune_start
        if s.finetune is not None and step >= start:  # (a budget's calibration steps may pass the stand-in length)
            return cosine(step - start, n.total_steps - start, self.finetune_peak_lr, s.finetune.final_lr)
        return warmup_cosine(step, start, n.warmup_steps, n.peak_lr, s.final_lr, s.warmup_start_lr)

    @property
    def finetune_start(self) -> int:
        """The first step of the fine-tuning stage (the run's length when it has none): the last
        `schedule.finetune.share` of the steps, at least one, after at least one step of the first stage."""
        total, finetune = self.numbers.total_steps, self.recipe.schedule.finetune
        if finetune is None:
            return total
        return min(max(total - round(finetune.share * total), 1), total - 1) if total > 1 else total

    @property
    def finetune_peak_lr(self) -> float:
        """The stage's peak lr, scaled by the global batch as optim.lr is."""
        n, optim = self.numbers, self.recipe.optim
        return n.peak_lr * self.recipe.schedule.finetune.lr / optim.lr

    def pseudo_label_threshold(self, step: int) -> float | None:
        """The confidence pseudo-labels need at `step` when the fine-tuning stage trains on them, else None (the
        method's own unlabeled targets)."""
        finetune = self.recipe.schedule.finetune
        if finetune is None or finetune.targets != "pseudo_labels" or step < self.finetune_start:
            return None
        return finetune.threshold

    def labeled_weight(self, step: int) -> float | None:
        """The labeled loss's weight at `step` when the schedule sets one (the fine-tuning stage's), else None:
        the method's own (method.labeled_weight, or row counts)."""
        finetune = self.recipe.schedule.finetune
        return finetune.labeled_weight if finetune is not None and step >= self.finetune_start else None

    def backbone_frozen(self, step: int) -> bool:
        """Whether the head warm-up holds the backbone still at `step` (frozen, not merely slowed)."""
        return step < self.numbers.backbone_warmup_steps and self.recipe.optim.backbone_warmup_lr_scale == 0

    def backbone_scale(self, step: int) -> float:
        """The backbone's share of the lr at `step`: the warm-up's scale during it, 1 after."""
        return self.recipe.optim.backbone_warmup_lr_scale if step < self.numbers.backbone_warmup_steps else 1.0

    def weight_decay(self, step: int) -> float:
        optim = self.recipe.optim
        end = optim.weight_decay_end if optim.weight_decay_end is not None else optim.weight_decay
        return cosine(step, self.numbers.total_steps, optim.weight_decay, end)


def lr_description(recipe: Recipe, numbers: RunNumbers) -> str:
    """How the start-up line and the dry run state the peak learning rate, scaled or not."""
    optim = recipe.optim
    if optim.lr_reference_batch is None:
        return f"{numbers.peak_lr:.4g} (not scaled)"
    return f"{numbers.peak_lr:.4g} after scaling ({optim.lr:g} per {optim.lr_reference_batch} images)"
