"""When a run evaluates and writes periodic checkpoints: decisions on the finished step count, with the
clock-based checkpoint agreed by every process."""
from __future__ import annotations

import time

import torch

from semiclust.engine import dist
from semiclust.engine.numbers import RunNumbers
from semiclust.config.schema import Recipe


class Policy:
    """The recipe's `eval` and `checkpoint` sections applied to a run's step counts."""

    def __init__(self, recipe: Recipe, numbers: RunNumbers, has_eval: bool, device: torch.device):
        self.eval, self.checkpoint, self.numbers = recipe.eval, recipe.checkpoint, numbers
        self.has_eval, self.device = has_eval, device
        self.last_save = time.monotonic()

    def _epoch_end(self, done: int) -> tuple[bool, int]:
        return done % self.numbers.steps_per_epoch == 0, done // self.numbers.steps_per_epoch

    def evaluates_after(self, done: int) -> bool:
        """Evaluation every `eval.every_epochs` epochs (the last step evaluates anyway)."""
        epoch_end, epoch = self._epoch_end(done)
        return (epoch_end and done < self.numbers.total_steps and bool(self.eval.every_epochs) and self.has_eval
                and epoch % self.eval.every_epochs == 0)

    def saves_after(self, done: int, stopping: bool) -> bool:
        """A periodic checkpoint is due (by minutes, steps or epochs), or the run is stopping."""
        ckpt = self.checkpoint
        epoch_end, epoch = self._epoch_end(done)
        timed = bool(ckpt.every_minutes) and dist.any_process(
            time.monotonic() - self.last_save >= 60 * ckpt.every_minutes, self.device)
        due = (timed or (ckpt.every_steps and done % ckpt.every_steps == 0)
               or (epoch_end and ckpt.every_epochs and epoch % ckpt.every_epochs == 0))
        return done < self.numbers.total_steps and bool(due or stopping)

    def saved(self) -> None:
        self.last_save = time.monotonic()
