"""The numbers a run is made of (global batches, steps, warm-up, scaled lr): the one place they are
derived, for training and the dry run alike, and the one object that holds them during a run. A budget's
re-plan changes the run's length here, and only here (`RunNumbers.retarget`): the schedules, the policy, the
reporter and the batches read it from this object when they need it (timm's rule: counts are not copied)."""
from __future__ import annotations

from dataclasses import dataclass

from semiclust.data.streams import Stream
from semiclust.errors import SemiclustError
from semiclust.config.schema import Batch, Recipe


@dataclass
class RunNumbers:
    """The numbers of one run. Every field is fixed once derived, except `total_steps`, which a budget decides
    (calibration, re-plans) through `retarget`; whoever needs the length reads it here."""

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

    def retarget(self, total_steps: int) -> None:
        """The run's decided length (a budget's calibration or re-plan): the one change a run's numbers see."""
        self.total_steps = total_steps


def scaled_lr(lr: float, global_batch: int, reference_batch: int | None) -> float:
    """The linear scaling rule: lr * global_batch / reference_batch (unchanged if no reference)."""
    return lr if reference_batch is None else lr * global_batch / reference_batch


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


def lr_description(recipe: Recipe, numbers: RunNumbers) -> str:
    """How the start-up line and the dry run state the peak learning rate, scaled or not."""
    optim = recipe.optim
    if optim.lr_reference_batch is None:
        return f"{numbers.peak_lr:.4g} (not scaled)"
    return f"{numbers.peak_lr:.4g} after scaling ({optim.lr:g} per {optim.lr_reference_batch} images)"
