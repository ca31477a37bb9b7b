"""Where a run's figures go: metrics.jsonl, the experiment trackers of `runtime.loggers` (TensorBoard, W&B,
MLflow; engine/loggers.py) and the progress display, with the timing of each log window. Rank 0 writes and
shows; every rank calls, so the averaging all-reduce of the logged losses happens on all of them."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from rich.console import Console

from semiclust.engine import dist
from semiclust.engine.loggers import Logger, open_loggers
from semiclust.engine.metrics import MetricsLog
from semiclust.engine.numbers import RunNumbers
from semiclust.engine.progress import TrainingProgress
from semiclust.engine.run_dir import RunFiles
from semiclust.engine.signals import Stopped, TrainingStopped
from semiclust.engine.step import StepOutcome
from semiclust.evaluation.metrics import EvalResult
from semiclust.config.schema import Recipe
from semiclust.storage.atomic import write_bytes


def tracked_scalars(record: dict, section: str) -> dict[str, float]:
    """The numbers of a metrics.jsonl record, as `section/key` (its step is the trackers' step; None, a
    non-finite value in the file, and text such as the split's name are left out)."""
    return {f"{section}/{key}": float(value) for key, value in record.items()
            if key not in ("type", "step") and isinstance(value, (int, float)) and not isinstance(value, bool)}


def trim_for_resume(path: Path, step: int) -> list[str]:
    """metrics.jsonl as it must be when a run resumes at `step`: a last line cut by a killed write is dropped (an
    append would glue the next record to it), and so are the records of the steps after the checkpoint, which
    the resumed run logs again. Other lines are kept as they are; returns the note to print."""
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    cut = lines.pop() != b""  # the text after the last newline: empty for a whole file
    kept, later = [], 0
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step:
            later += 1
        else:
            kept.append(line)
    if not cut and not later:
        return []
    write_bytes(path, b"".join(line + b"\n" for line in kept))
    what = [f"{later} record(s) of the steps after {step}, logged again as the run repeats them"] if later else []
    return ["metrics.jsonl: dropped " + " and ".join(what + (["a last line cut by a killed write"] if cut else []))]


class Reporter:
    """Training records every `log_every_steps` steps, evaluation records, messages and the progress bar;
    a context manager, so that the trackers hear how the run ended."""

    def __init__(self, files: RunFiles, recipe: Recipe, console: Console, numbers: RunNumbers, start_step: int,
                 resume: bool = False):
        runtime = recipe.runtime
        mode = runtime.progress if runtime.progress != "auto" else ("rich" if console.is_terminal else "plain")
        self.metrics = MetricsLog(files.metrics, enabled=dist.is_main())
        self.loggers: list[Logger] = open_loggers(files, recipe, resume) if dist.is_main() else []
        self.progress = TrainingProgress(console, numbers, start_step,
                                         mode if dist.is_main() else "none")  # rank 0 reports for everyone
        self.numbers, self.log_every, self.console = numbers, runtime.log_every_steps, console
        self.started = time.perf_counter()
        self.window_start, self.window_steps, self.data_seconds = self.started, 0, 0.0

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close("finished" if kind is None else "stopped" if isinstance(error, (TrainingStopped, Stopped)) else "failed")

    @property
    def tracking(self) -> bool:
        """Whether an experiment tracker listens (the end of the run then makes figures for it)."""
        return bool(self.loggers)

    def message(self, text: str) -> None:
        self.progress.message(text)

    def warn(self, text: str) -> None:
        """A note the user must see whatever runtime.progress says (rank 0 only)."""
        if dist.is_main():
            self.console.print(text, highlight=False, soft_wrap=True, markup=False)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def record(self, record: dict, section: str) -> None:
        """One metrics.jsonl record, and its numbers to every tracker at the record's step."""
        self.metrics.write(record)
        scalars = tracked_scalars(record, section)
        self.each_logger(lambda logger: logger.log_scalars(scalars, record["step"]))

    def each_logger(self, call) -> None:
        """`call(logger)` for every tracker; one that fails (a server gone away) is dropped with a warning, and the
        run goes on: metrics.jsonl and the checkpoints hold everything."""
        for logger in list(self.loggers):
            try:
                call(logger)
            except Exception as err:  # each tracker's own exception types
                self.loggers.remove(logger)
                self.message(f"warning: {type(logger).__name__} stopped logging ({type(err).__name__}: "
                             f"{str(err).strip()[:200]}); the run continues, metrics.jsonl has every figure")

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
        self.record({"type": "train", "step": done, "epoch": step // self.numbers.steps_per_epoch, **parts,
                     "lr": lr, "weight_decay": weight_decay, "img_per_s": speed,
                     "step_s": (now - self.window_start) / steps, "data_s": self.data_seconds / steps,
                     "elapsed_s": now - self.started, **extra}, "train")
        self.window_start, self.window_steps, self.data_seconds = now, 0, 0.0
        self.progress.report(step, parts, lr, speed)

    def evaluated(self, step: int, result: EvalResult, extra: dict | None = None) -> None:
        """One evaluation record: the classifier's result and `extra` figures (validation, the EMA beside it)."""
        self.record({"type": "eval", "step": step, "epoch": step // self.numbers.steps_per_epoch, **result.as_dict(),
                     **(extra or {})}, "eval")

    def files(self, paths: list[Path]) -> None:
        """Figures of the finished run (curves, confusion) to every tracker, at the last step."""
        self.each_logger(lambda logger: [logger.log_file(path, self.numbers.total_steps) for path in paths])

    def stop_display(self) -> None:
        """The live bar ends with the steps (messages after it print as plain lines)."""
        self.progress.close()

    def close(self, outcome: str = "finished") -> None:
        """Close every tracker (once), telling W&B and MLflow how the run ended: finished, stopped by a signal
        (to be resumed) or failed."""
        loggers, self.loggers = self.loggers, []
        for logger in loggers:
            logger.close(outcome)
