"""Schedules as pure functions of the global step, so a resumed run is exact by construction."""
from __future__ import annotations

import math


def cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """Half-cosine from `start` at step 0 to `end` at step `total_steps` (held after)."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float, final: float, warmup_start: float = 0.0) -> float:
    """Linear warm-up from `warmup_start` to `peak` over `warmup_steps`, then cosine to `final`."""
    if step < warmup_steps:
        return warmup_start + (peak - warmup_start) * step / warmup_steps
    return cosine(step - warmup_steps, total_steps - warmup_steps, peak, final)


def scaled_lr(lr: float, global_batch: int, reference_batch: int | None) -> float:
    """The linear scaling rule: lr * global_batch / reference_batch (unchanged if no reference)."""
    return lr if reference_batch is None else lr * global_batch / reference_batch
