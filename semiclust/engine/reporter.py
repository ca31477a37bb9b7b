"""Where a run's figures go: metrics.jsonl, TensorBoard (optional) and the progress display, with the
timing of each log window. Rank 0 writes and shows; every rank calls, so the averaging all-reduce of
the logged losses happens on all of them."""
from __future__ import annotations

import time

import torch
from rich.console import Console

from semiclust.engine import dist
from semiclust.engine.metrics import MetricsLog
from semiclust.engine.numbers import RunNumbers
from semiclust.engine.progress import TrainingProgress
from semiclust.engine.run_dir import RunFiles
from semiclust.engine.step import StepOutcome
from semiclust.errors import SemiclustError
from semiclust.evaluate import EvalResult
from semiclust.schema import Runtime


def open_tensorboard(files: RunFiles, enabled: bool):
    if not (enabled and dist.is_main()):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SemiclustError("runtime.tensorboard is on but the tensorboard package is not installed; "
                             "`pip install tensorboard` or set runtime.tensorboard: false.") from None
    return SummaryWriter(str(files.tensorboard))


class Reporter:
    """Training records every `log_every_steps` steps, evaluation records, messages and the progress bar."""

    def __init__(self, files: RunFiles, runtime: Runtime, console: Console, numbers: RunNumbers, start_step: int):
        mode = runtime.progress if runtime.progress != "auto" else ("rich" if console.is_terminal else "plain")
        self.metrics = MetricsLog(files.metrics, enabled=dist.is_main())
        self.board = open_tensorboard(files, runtime.tensorboard)
        self.progress = TrainingProgress(console, numbers.total_steps, start_step, numbers.steps_per_epoch,
                                         mode if dist.is_main() else "none")  # rank 0 reports for everyone
        self.numbers, self.log_every, self.console = numbers, runtime.log_every_steps, console
        self.started = time.perf_counter()
        self.window_start, self.window_steps, self.data_seconds = self.started, 0, 0.0

    def message(self, text: str) -> None:
        self.progress.message(text)

    def warn(self, text: str) -> None:
        """A note the user must see whatever runtime.progress says (rank 0 only)."""
        if dist.is_main():
            self.console.print(text, highlight=False, soft_wrap=True, markup=False)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def step_done(self, step: int, outcome: StepOutcome, lr: float, weight_decay: float, extra: dict) -> None:
        """After every finished step (cheap); every `log_every_steps` steps, one record averaged over processes."""
        self.window_steps += 1
        self.data_seconds += outcome.data_seconds
        self.progress.advance(step)
        done = step + 1
        if done % self.log_every and done != self.numbers.total_steps:
            return
        names = sorted(outcome.parts)
        averaged = dist.all_reduce_mean(torch.stack([outcome.parts[k].float() for k in names]))
        parts = dict(zip(names, averaged.tolist()))
        now = time.perf_counter()
        seconds, steps = max(now - self.window_start, 1e-9), max(self.window_steps, 1)
        speed = self.window_steps * self.numbers.images_per_step / seconds
        self.metrics.write({"type": "train", "step": done, "epoch": step // self.numbers.steps_per_epoch, **parts,
                            "lr": lr, "weight_decay": weight_decay, "img_per_s": speed,
                            "step_s": (now - self.window_start) / steps, "data_s": self.data_seconds / steps,
                            "elapsed_s": now - self.started, **extra})
        if self.board is not None:
            for key, value in (*parts.items(), ("lr", lr), ("img_per_s", speed)):
                self.board.add_scalar(f"train/{key}", value, done)
        self.window_start, self.window_steps, self.data_seconds = now, 0, 0.0
        self.progress.report(step, parts, lr, speed)

    def evaluated(self, step: int, result: EvalResult) -> None:
        self.metrics.write({"type": "eval", "step": step, "epoch": step // self.numbers.steps_per_epoch,
                            **result.as_dict()})
        if self.board is not None:
            self.board.add_scalar("eval/top1", result.top1, step)

    def stop_display(self) -> None:
        """The live bar ends with the steps (messages after it print as plain lines)."""
        self.progress.close()

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
            self.board = None
