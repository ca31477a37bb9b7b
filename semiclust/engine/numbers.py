"""The numbers a run is made of (global batches, steps, warm-up, scaled lr): the one place they are
derived, for training and the dry run alike."""
from __future__ import annotations

from dataclasses import dataclass

from semiclust.data.streams import Stream
from semiclust.engine.schedules import cosine, scaled_lr, warmup_cosine
from semiclust.errors import SemiclustError
from semiclust.schema import Recipe


@dataclass(frozen=True)
class RunNumbers:
    world: int
    global_unlabeled: int  # images per optimiser step over all processes (accumulation included)
    global_labeled: int
    images_per_step: int  # what the step trains on over all processes: the streams the method uses
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float


def steps_per_epoch(train_size: int, batch: int, world: int, accumulate: int) -> int:
    """Optimiser steps in one pass over the unlabeled set (drop_last), at least 1."""
    return max(train_size // (batch * world) // accumulate, 1)


def run_numbers(recipe: Recipe, train_size: int, world: int, streams: frozenset[Stream]) -> RunNumbers:
    """Derived values of a run; lr scaled by the global unlabeled batch (labeled for a labels-only method)."""
    batch, optim, accumulate = recipe.data.batch, recipe.optim, recipe.optim.accumulate_steps
    batches_per_pass = train_size // (batch.unlabeled * world)
    if 0 < batches_per_pass < accumulate:  # no batch at all is the unlabeled stream's error
        raise SemiclustError(
            f"optim.accumulate_steps is {accumulate} but one epoch holds only {batches_per_pass} batches; "
            "lower accumulate_steps or data.batch.unlabeled."
        )
    steps = steps_per_epoch(train_size, batch.unlabeled, world, accumulate)
    unlabeled, labeled = batch.unlabeled * world * accumulate, batch.labeled * world * accumulate
    reference = unlabeled if Stream.UNLABELED in streams else labeled
    images = (unlabeled if Stream.UNLABELED in streams else 0) + (labeled if Stream.LABELED in streams else 0)
    return RunNumbers(world, unlabeled, labeled, images, steps, steps * recipe.schedule.epochs,
                      round(recipe.schedule.warmup_epochs * steps), scaled_lr(optim.lr, reference, optim.lr_reference_batch))


@dataclass(frozen=True)
class Schedules:
    """The learning rate and weight decay at each step: pure functions of the global step."""

    recipe: Recipe
    numbers: RunNumbers

    def lr(self, step: int) -> float:
        s, n = self.recipe.schedule, self.numbers
        return warmup_cosine(step, n.total_steps, n.warmup_steps, n.peak_lr, s.final_lr, s.warmup_start_lr)

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
