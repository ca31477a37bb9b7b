"""Schedules as pure functions of the global step, so a resumed run is exact by construction: the cosine and
warm-up shapes, and `Schedules`, every value a step is given (lr, weight decay, the backbone's share, a method's
own cosine, the fine-tuning stage), built in one block as in DINO's training script and indexed by one global step.
The run's length is read from the run's numbers each time (engine/numbers.py), never copied."""
from __future__ import annotations

import math
from dataclasses import dataclass

from semiclust.config.schema import Recipe
from semiclust.engine.numbers import RunNumbers


def cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """Half-cosine from `start` at step 0 to `end` at step `total_steps` (held after)."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float, final: float, warmup_start: float = 0.0) -> float:
    """Linear warm-up from `warmup_start` to `peak` over `warmup_steps`, then cosine to `final`."""
    if step < warmup_steps:
        return warmup_start + (peak - warmup_start) * step / warmup_steps
    return cosine(step - warmup_steps, total_steps - warmup_steps, peak, final)


@dataclass(frozen=True)
class Schedules:
    """Every scheduled value at each step: pure functions of the global step and the run's numbers (read, not
    copied, so that a budget's re-plan reaches every schedule at once)."""

    recipe: Recipe
    numbers: RunNumbers

    def epoch(self, step: int) -> int:
        """The epoch `step` falls in (the queue's start and the assignments' warm-ups count epochs)."""
        return step // self.numbers.steps_per_epoch

    def over_run(self, step: int, start: float, end: float) -> float:
        """A per-step cosine from `start` at step 0 to `end` at the run's last step, for a method's own schedule
        (Daino's teacher momentum)."""
        return cosine(step, self.numbers.total_steps, start, end)

    def lr(self, step: int) -> float:
        """Warm-up then cosine to final_lr over the first stage; in the fine-tuning stage, its own cosine."""
        s, n = self.recipe.schedule, self.numbers
        start = self.finetune_start
        if self.in_finetune(step):
            return cosine(step - start, n.total_steps - start, self.finetune_peak_lr, s.finetune.final_lr)
        return warmup_cosine(step, start, n.warmup_steps, n.peak_lr, s.final_lr, s.warmup_start_lr)

    def in_finetune(self, step: int) -> bool:
        """Whether `step` is in the fine-tuning stage (never without one: a budget's calibration steps may pass the
        stand-in length that finetune_start then returns)."""
        return self.recipe.schedule.finetune is not None and step >= self.finetune_start

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
        return finetune.threshold if self.in_finetune(step) and finetune.targets == "pseudo_labels" else None

    def propagated_targets(self, step: int) -> bool:
        """Whether the unlabeled images train towards their propagated classes at `step` (the fine-tuning stage with
        `targets: propagated`)."""
        return self.recipe.schedule.propagates and self.in_finetune(step)

    def labeled_weight(self, step: int) -> float | None:
        """The labeled loss's weight at `step` when the schedule sets one (the fine-tuning stage's), else None:
        the method's own (method.labeled_weight, or row counts)."""
        finetune = self.recipe.schedule.finetune
        return finetune.labeled_weight if self.in_finetune(step) else None

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
