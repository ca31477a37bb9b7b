"""Progress display: a rich bar on a terminal, plain log lines otherwise (or on ranks other than 0)."""
from __future__ import annotations

import time
from typing import Literal

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from semiclust.engine.numbers import RunNumbers


def format_stats(parts: dict[str, float], lr: float, images_per_second: float) -> str:
    shown = [f"loss {parts['loss']:.4f}"]
    if "loss_labeled" in parts:
        shown.append(f"lab {parts['loss_labeled']:.3f}")
    if "loss_unlabeled" in parts:
        shown.append(f"unlab {parts['loss_unlabeled']:.3f}")
    shown += [f"lr {lr:.3g}", f"{images_per_second:,.0f} img/s"]
    return "  ".join(shown)


class TrainingProgress:
    """Shows epoch, step, loss parts, lr, images/s and ETA; the run's length is read from its numbers, so that a
    budget's re-plan shows at once."""

    def __init__(self, console: Console, numbers: RunNumbers, start_step: int, mode: Literal["rich", "plain", "none"]):
        self.console, self.mode, self.numbers = console, mode, numbers
        total_steps, steps_per_epoch = numbers.total_steps, numbers.steps_per_epoch
        self.started, self.start_step = time.perf_counter(), start_step
        self._bar: Progress | None = None
        if mode == "rich":
            self._bar = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=console,
            )
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step,
                                            epoch=start_step // steps_per_epoch, stats="")
            self._bar.start()

    def advance(self, step: int) -> None:
        """Called after every step (cheap)."""
        if self._bar is not None:
            self._bar.update(self._task, completed=step + 1, total=self.numbers.total_steps,
                             epoch=step // self.numbers.steps_per_epoch)

    def report(self, step: int, parts: dict[str, float], lr: float, images_per_second: float) -> None:
        """Called every log interval with fresh numbers."""
        stats = format_stats(parts, lr, images_per_second)
        if self._bar is not None:
            self._bar.update(self._task, stats=stats)
        elif self.mode == "plain":
            done = step + 1 - self.start_step
            elapsed = time.perf_counter() - self.started
            total, epoch = self.numbers.total_steps, step // self.numbers.steps_per_epoch
            eta = elapsed / max(done, 1) * (total - step - 1)
            self.console.print(
                f"epoch {epoch} step {step + 1}/{total}  {stats}  ETA {eta:,.0f}s",
                highlight=False, soft_wrap=True,
            )

    def message(self, text: str) -> None:
        if self.mode != "none":
            self.console.print(text, highlight=False, soft_wrap=True, markup=False)  # paths and [lists] print as they are

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
