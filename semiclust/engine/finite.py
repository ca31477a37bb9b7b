"""Non-finite losses noticed on the device: the first bad step is kept in a device tensor and read back only when
the host reads anyway (each log window), so a GPU step never waits for the loss to be checked. Used where no
non-finite step may be skipped (runtime.skip_nonfinite_steps: 0) on CUDA; skipping needs the answer at once."""
from __future__ import annotations

import torch

from semiclust.engine import dist

NONE = 2**62  # "no bad step yet": larger than any step, so the earliest bad step is the minimum


class FiniteWatch:
    """The earliest step whose loss was not finite, over every process, as a device tensor."""

    def __init__(self, device: torch.device):
        self.first_bad = torch.full((), NONE, dtype=torch.long, device=device)

    def note(self, loss: torch.Tensor, step: int) -> None:
        """Remember `step` if `loss` is not finite and no earlier step was (device ops only)."""
        bad = ~torch.isfinite(loss.detach())
        self.first_bad.copy_(torch.where(bad, torch.clamp(self.first_bad, max=step), self.first_bad))

    def clear(self) -> None:
        """Forget the steps noted so far (the budget's calibration steps, which are put back, are not the run's)."""
        self.first_bad.fill_(NONE)

    def first(self) -> int | None:
        """The earliest bad step on any process, or None: one read-back (and one all-reduce)."""
        earliest = -int(dist.all_reduce_max(-self.first_bad))
        return None if earliest == NONE else earliest
