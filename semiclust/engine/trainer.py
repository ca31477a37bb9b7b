"""The training loop, read top to bottom: processes and device, run directory, the run's objects
(engine/setup.py), resume, then the steps with their evaluation and checkpoint policy, and the end.

One process needs no launcher; under torchrun every process runs this same function and all
cross-process work goes through engine/dist.py (gradients through DistributedDataParallel).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from semiclust.data.loader import Corrupt
from semiclust.data.streams import Stream
from semiclust.engine import dist
from semiclust.engine.checkpoint import latest_usable, save_checkpoint, save_periodic
from semiclust.engine.device import resolve_device
from semiclust.engine.loggers import check_installed
from semiclust.engine.policy import Policy
from semiclust.engine.reporter import Reporter
from semiclust.engine.run import Run
from semiclust.engine.run_dir import RunFiles, prepare_run_dir
from semiclust.engine.setup import build_run
from semiclust.engine.signals import StopRequest, TrainingStopped
from semiclust.engine.state import process_state, restore, training_state
from semiclust.engine.step import StepOutcome, train_step, undo_buffers
from semiclust.errors import SemiclustError
from semiclust.plot import plot_confusion, plot_run
from semiclust.evaluate import EvalResult, evaluate_with_confusion
from semiclust.schema import Recipe, Runtime
from semiclust.version import __version__


@dataclass
class TrainSummary:
    run_dir: Path
    checkpoint: Path
    result: EvalResult | None  # None when the dataset has no evaluation split
    steps: int
    seconds: float
    main_process: bool = True  # rank 0 (the process that reports)


def train(recipe: Recipe, run_dir: Path, console: Console | None = None, resume: bool = False,
          overwrite: bool = False, resume_hint: str | None = None) -> TrainSummary:
    """Train `recipe` into `run_dir` (recipe, labeled subset, metrics, checkpoints) and evaluate the result.

    `resume` continues from the newest readable periodic checkpoint, bit-identically; `overwrite`
    replaces a run already in the folder; `resume_hint` is the command printed when a signal stops it."""
    device = start_processes(recipe.runtime)
    check_installed(recipe)  # a tracker package that is missing stops the run before anything is written
    files = RunFiles(Path(run_dir))
    prepare_run_dir(files, recipe, resume, overwrite)
    run = build_run(recipe, files, device, resume)
    start_step, skipped = resume_from(files, run) if resume else (0, 0)
    total = run.numbers.total_steps
    with Reporter(files, recipe, console or Console(), run.numbers, start_step, resume) as reporter:
        announce(run, reporter, start_step)
        run.batches.on_corrupt = corrupt_image_handler(run, reporter)
        hint = resume_hint or f"semiclust train RECIPE --out {files.root} --resume"
        skipped = run_steps(run, files, reporter, range(start_step, total), skipped, hint)
        result, confusion = evaluate_run(run, total, reporter)
        seconds = reporter.elapsed()
        state = checkpoint_state(run, total, skipped, result)
        if state is not None:
            save_checkpoint(state, files.final)
            if reporter.tracking:
                reporter.files(final_figures(run, files, result, confusion))
        dist.barrier()
    return TrainSummary(files.root, files.final, result, total - start_step, seconds, dist.is_main())


def final_figures(run: Run, files: RunFiles, result: EvalResult | None, confusion: torch.Tensor | None) -> list[Path]:
    """curves.png and checkpoints/final_confusion.png (as `semiclust plot` and `semiclust eval` write them), made
    at the end of a run that logs to a tracker, for the tracker."""
    paths = [plot_run(files.root, files.curves)]
    if result is not None and confusion is not None:
        paths.append(plot_confusion(confusion, list(run.dataset.classes), files.final_confusion,
                                    f"{run.recipe.name}, step {run.numbers.total_steps}: top-1 {result.top1:.2f}% on "
                                    f"{result.n} images"))
    return paths


def run_steps(run: Run, files: RunFiles, reporter: Reporter, steps: range, skipped: int, hint: str) -> int:
    """The optimiser steps, each followed by what the policy says is due (evaluation, a periodic
    checkpoint, the stop a signal asked for); returns the number of non-finite steps skipped."""
    policy = Policy(run.recipe, run.numbers, run.eval_views is not None, run.device)
    run.method.train()
    with StopRequest() as stop:
        try:
            for step in steps:
                outcome = train_step(run, step)
                if not outcome.finite:
                    skipped = skip_or_stop(run, outcome, step, skipped, files, reporter)
                    continue  # the next step starts by zeroing the discarded gradients
                reporter.step_done(step, outcome, run.schedules.lr(step), run.schedules.weight_decay(step),
                                   file_counts(run))
                after_step(run, step + 1, policy, stop, reporter, files, skipped, hint)
        finally:
            reporter.stop_display()
    return skipped


def after_step(run: Run, done: int, policy: Policy, stop: StopRequest, reporter: Reporter, files: RunFiles,
               skipped: int, hint: str) -> None:
    """Evaluation and periodic checkpoints when due; after a signal (on any process), a checkpoint and the stop."""
    if policy.evaluates_after(done):
        result, _ = evaluate_run(run, done, reporter)
        reporter.message(f"epoch {done // run.numbers.steps_per_epoch}: top-1 {result.top1:.2f}%  top-5 {result.top5:.2f}%")
    stopping = dist.any_process(stop.requested, run.device)
    if policy.saves_after(done, stopping):
        path = save_periodic_checkpoint(run, done, files, skipped)
        policy.saved()
        if stopping:
            raise stopped(stop, done, path or files.last_periodic(), hint)


def start_processes(runtime: Runtime) -> torch.device:
    """Join the process group torchrun describes (nothing for one process), pick the device and threads."""
    dist.init_from_env(runtime.device != "cpu" and torch.cuda.is_available())
    device = resolve_device(runtime.device)
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    return device


def resume_from(files: RunFiles, run: Run) -> tuple[int, int]:
    """Restore the newest readable periodic checkpoint: (the step to continue from, steps skipped so far)."""
    found = latest_usable(files.checkpoints, map_location=run.device)
    if found is None:
        return 0, 0
    return restore(found[1], run), found[1].get("skipped_steps", 0)


def announce(run: Run, reporter: Reporter, start_step: int) -> None:
    """The start-up line: data, labeled subset, parameters, steps, lr, processes and device."""
    recipe, dataset, numbers = run.recipe, run.dataset, run.numbers
    params = sum(p.numel() for p in run.method.student.parameters())
    evaluation = f"{len(dataset.test)} {dataset.test_split_name}" if dataset.test is not None else "no evaluation set"
    reporter.message(
        f"semiclust {__version__}: {recipe.method.name} on {dataset.name} ({len(dataset.train)} train, "
        f"{len(run.subset.indices)} labeled [{run.subset.identity}], {evaluation}); {params:,} parameters; "
        f"{numbers.steps_per_epoch} steps/epoch x {recipe.schedule.epochs} epochs = {numbers.total_steps} steps; "
        f"lr {numbers.peak_lr:.4g} (scaled); {numbers.world} process(es) on {run.device}"
        + (", SyncBatchNorm" if run.sync_bn else "") + (f", {run.amp_dtype}" if run.amp_dtype else "")
        + (f"; resuming at step {start_step}" if start_step else "")
    )
    if run.init_report is not None:
        reporter.message(run.init_report.summary())


def corrupt_image_handler(run: Run, reporter: Reporter):
    """What an unreadable training image does: a warning (`data.corrupt_images: skip`) or the end of the run."""
    def handle(corrupt: list[Corrupt]) -> None:
        for bad in corrupt:
            if run.recipe.data.corrupt_images == "fail":
                raise SemiclustError(
                    f"unreadable training image '{bad.path}' ({bad.reason}). Replace or remove the file, or set "
                    "data.corrupt_images: skip to skip unreadable images with a warning; `semiclust data check "
                    "RECIPE --all` lists every one.", exit_code=1)
            reporter.message(f"warning: skipped unreadable image '{bad.path}' ({bad.reason}); "
                             f"{run.batches.corrupt_images} skipped so far")

    return handle


def file_counts(run: Run) -> dict:
    """Extra figures of a training record: the unreadable images skipped so far (image-file datasets)."""
    return {"corrupt_images": run.batches.corrupt_images} if run.batches.files is not None else {}


def evaluate_run(run: Run, step: int, reporter: Reporter) -> tuple[EvalResult | None, torch.Tensor | None]:
    """Top-1/top-5 of the method's classifier on the evaluation split, recorded in the metrics, and the confusion
    matrix of its predictions (both None without an evaluation split)."""
    if run.eval_views is None:
        return None, None
    result, confusion = evaluate_with_confusion(run.method.classifier, run.eval_views, run.dataset.test_split_name,
                                                match=Stream.LABELED not in run.method.streams)
    reporter.evaluated(step, result)
    return result, confusion


def checkpoint_state(run: Run, step: int, skipped: int, result: EvalResult | None = None) -> dict | None:
    """The checkpoint of `step` on rank 0 (every process's RNG and queue gathered), None elsewhere."""
    per_rank = dist.gather_objects(process_state(run.method, run.device))
    return training_state(run, step, result, per_rank, skipped) if dist.is_main() else None


def save_periodic_checkpoint(run: Run, step: int, files: RunFiles, skipped: int) -> Path | None:
    state = checkpoint_state(run, step, skipped)
    path = save_periodic(state, files.checkpoints, run.recipe.checkpoint.keep_last) if state else None
    dist.barrier()
    return path


def skip_or_stop(run: Run, outcome: StepOutcome, step: int, skipped: int, files: RunFiles, reporter: Reporter) -> int:
    """A non-finite step: skipped (its buffer changes undone) while `runtime.skip_nonfinite_steps` allows,
    else the end of the run with the loss parts and the last good checkpoint."""
    parts = {k: float(v) for k, v in outcome.parts.items()}
    allowed = run.recipe.runtime.skip_nonfinite_steps
    if skipped >= allowed:
        raise non_finite_error(step, parts, files, skipped)
    undo_buffers(run, outcome)
    reporter.message(f"step {step}: non-finite loss ({parts}); step skipped ({skipped + 1}/{allowed} allowed)")
    return skipped + 1


def non_finite_error(step: int, parts: dict[str, float], files: RunFiles, skipped: int) -> SemiclustError:
    shown = ", ".join(f"{k} {v:.4g}" for k, v in parts.items())
    last = files.last_periodic()
    where = f"The last good checkpoint is '{last}'" if last else "No checkpoint was written yet"
    also = f" after skipping {skipped} bad step(s)" if skipped else ""
    return SemiclustError(
        f"the loss became non-finite at step {step}{also} ({shown}). {where}. Lower optim.lr, add warm-up "
        "(schedule.warmup_epochs), set optim.clip_grad_norm, or use runtime.precision: fp32, then --resume "
        "(runtime.skip_nonfinite_steps skips a bounded number of such steps).",
        exit_code=1,
    )


def stopped(stop: StopRequest, done: int, path: Path | None, hint: str) -> TrainingStopped:
    return TrainingStopped(
        f"stopped by {stop.signal_name or 'a signal on another process'} after step {done}; checkpoint '{path}' "
        f"written. Continue with: {hint}",
        exit_code=130 if stop.signal_name == "SIGINT" else 143,
    )
