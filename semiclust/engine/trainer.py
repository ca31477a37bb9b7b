"""The training loop, read top to bottom: processes and device, run directory, the run's objects
(engine/setup.py), resume, then the steps with their evaluation and checkpoint policy, and the end.

One process needs no launcher; under torchrun every process runs this same function and all
cross-process work goes through engine/dist.py (gradients through DistributedDataParallel).
"""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from semiclust.data.decode import printable
from semiclust.data.loader import Corrupt
from semiclust.data.subsets import save_subset
from semiclust.engine import dist
from semiclust.engine.budget import BudgetGuard, plan_budget
from semiclust.engine.checkpoint import latest_usable, periodic_path, save_checkpoint, save_periodic
from semiclust.engine.device import resolve_device
from semiclust.engine.policy import Policy
from semiclust.engine.reporter import Reporter, trim_for_resume
from semiclust.engine.run import Run
from semiclust.engine.numbers import lr_description
from semiclust.engine.run_dir import Claim, RunFiles, begin_files, claim_run_dir, record_changes
from semiclust.engine.setup import build_run
from semiclust.engine.loggers import check_installed
from semiclust.engine.signals import Stopped, StopRequest, TrainingStopped, exit_code
from semiclust.engine.disk import needed_space
from semiclust.engine.state import misfit, process_state, restore, training_state
from semiclust.engine.step import StepOutcome, train_step, undo_buffers
from semiclust.errors import SemiclustError, examples
from semiclust.evaluation.during_training import BestSoFar, RunEvaluation, evaluate_run
from semiclust.evaluation.metrics import EvalResult
from semiclust.plot import plot_confusion, plot_run
from semiclust.config.schema import Recipe, Runtime
from semiclust.storage.atomic import WriteFailed
from semiclust.version import __version__


@dataclass
class TrainSummary:
    run_dir: Path
    checkpoint: Path
    result: EvalResult | None  # None when the dataset has no evaluation split
    steps: int
    seconds: float
    main_process: bool = True  # rank 0 (the process that reports)
    budget_used: str | None = None  # of a budgeted run: the wall time it took, of its budget
    beside: dict[str, EvalResult] | None = None  # the networks evaluated beside the classifier (method.ema)
    best: BestSoFar | None = None  # data.validation: the best validation top-1, its step and test result


def train(recipe: Recipe, run_dir: Path, console: Console | None = None, resume: bool = False,
          overwrite: bool = False, resume_hint: str | None = None, started: float | None = None) -> TrainSummary:
    """Train `recipe` into `run_dir` (recipe, labeled subset, metrics, checkpoints) and evaluate the result.

    `resume` continues from the newest readable periodic checkpoint, bit-identically; `overwrite`
    replaces a run already in the folder; `resume_hint` is the command printed when a signal stops it;
    `started` (time.time()) is when a budget's clock started (the CLI: the process start; default now).
    A file that cannot be written (a full disk) ends the run in one paragraph naming the last good checkpoint;
    SIGTERM or SIGINT at any moment ends it with a checkpoint to resume from (engine/signals.py)."""
    started = started or time.time()
    device = start_processes(recipe.runtime)
    check_installed(recipe)  # a tracker package that is missing stops the run before anything is written
    files = RunFiles(Path(run_dir))
    hint = resume_hint or shlex.join(["semiclust", "train", "RECIPE", "--out", str(files.root), "--resume"])
    lock = None
    with StopRequest() as stop:
        try:
            claim, lock = claim_run_dir(files, recipe, resume, overwrite, device)
            return run_training(claim, files, device, console or Console(), hint, started, stop)
        except WriteFailed as err:
            raise write_failed(err, files, hint) from None
        except Stopped as interrupted:
            raise stopped_outside_steps(interrupted.signal_name, files, hint) from None
        finally:
            if lock is not None:
                lock.release()


def run_training(claim: Claim, files: RunFiles, device: torch.device, console: Console, hint: str,
                 started: float, stop: StopRequest) -> TrainSummary:
    """The run in a claimed folder: its objects, resume, its files (only once the start is built), its length (a
    budget's calibration), the steps, a checkpoint of the last step, the final evaluation and checkpoint."""
    run = build_run(claim.recipe, files, device, claim.resume)
    start_step, skipped, passed_over = resume_from(files, run) if claim.resume else (0, 0, [])
    check_free_space(run, files, claim.resume)
    notes = begin_files(files, claim, lambda: save_subsets(run, files))
    notes += trim_for_resume(files.metrics, start_step) if claim.resume and dist.is_main() else []
    plan = budget_or_stop(run, files, claim.resume, started, start_step, skipped, stop, hint)
    check_the_end(run, start_step)
    record_changes(files, claim, start_step)
    guard = BudgetGuard(plan, started, start_step) if plan else None
    best = BestSoFar.of(files.best, claim.resume) if run.validation_views is not None else None
    with Reporter(files, claim.recipe, console, run.numbers, start_step, claim.resume) as reporter:
        announce(run, reporter, start_step, passed_over + claim.notes + notes + budget_notes(plan, run))
        skipped, end = run_steps(run, files, reporter, start_step, skipped, hint, stop, guard, best)
        last = save_last_step(run, files, skipped, end, start_step)
        if stop.requested:  # a signal during the last step: its checkpoint is written, the evaluation is not begun
            raise stopped(stop, end, last, hint)
        evaluation = evaluate_run(run, end, reporter)
        keep_if_best(run, files, best, evaluation, end, skipped)
        seconds = reporter.elapsed()
        save_final(run, files, skipped, evaluation, end)
        if reporter.tracking and dist.is_main():
            reporter.files(final_figures(run, files, evaluation.result, evaluation.confusion))
    if last is not None and dist.is_main():
        last.unlink(missing_ok=True)  # final.pt holds the same step: the folder keeps the files it always had
    used = time.time() - started
    return TrainSummary(files.root, files.final, evaluation.result, end - start_step, seconds, dist.is_main(),
                        f"{used / 60:.1f} of {plan.budget_s / 60:.1f} minutes ({used / plan.budget_s:.1%})" if plan else None,
                        evaluation.beside, best)


def save_subsets(run: Run, files: RunFiles) -> None:
    """labeled_subset.json (and validation_subset.json): the exact images the run trains on and holds out."""
    save_subset(run.subset, run.dataset.train, files.subset)
    if run.validation is not None:
        save_subset(run.validation, run.dataset.train, files.validation)


def check_free_space(run: Run, files: RunFiles, resume: bool) -> None:
    """Refuse, before anything is removed or trained, a run whose checkpoints cannot fit on the disk (every
    process learns rank 0's verdict)."""
    error = None
    if dist.is_main():
        try:
            needed_space(run, files)
        except SemiclustError as err:
            error = err
    if dist.any_process(error is not None, run.device):
        raise error or SemiclustError("rank 0 found too little free space for the run (its error is printed there).")


def budget_or_stop(run: Run, files: RunFiles, resumed: bool, started: float, start_step: int, skipped: int,
                   stop: StopRequest, hint: str):
    """The budget's plan (engine/budget.py); a signal during its calibration puts the run back as it was and
    writes it as a checkpoint of its first step, so that the printed command resumes it."""
    try:
        with stop.deferred():
            return plan_budget(run, files, resumed, started, start_step,
                               lambda: dist.any_process(stop.requested, run.device))
    except Stopped:
        path = save_periodic_checkpoint(run, start_step, files, skipped) if not resumed else files.last_periodic()
        raise stopped(stop, start_step, path, hint, "during the budget's calibration") from None


def save_last_step(run: Run, files: RunFiles, skipped: int, end: int, start_step: int) -> Path | None:
    """A checkpoint of the last step before the final evaluation (removed once final.pt holds it), so that a signal
    during the evaluation, or a failed final.pt, loses no training; none when the run resumed at its end, whose
    checkpoint is there already."""
    if end == start_step:
        return files.last_periodic()
    path = periodic_path(files.checkpoints, end)
    if path.exists():  # the periodic policy wrote it (a checkpoint every step)
        return None
    state = checkpoint_state(run, end, skipped)
    written_or_failed(lambda: save_checkpoint(state, path) if state is not None else None, run)
    return path


def keep_if_best(run: Run, files: RunFiles, best: BestSoFar | None, evaluation: RunEvaluation, step: int,
                 skipped: int) -> None:
    """checkpoints/best.pt, rewritten when the validation top-1 improves (data.validation)."""
    if best is not None and best.improved_by(evaluation, step):
        state = checkpoint_state(run, step, skipped, evaluation)
        written_or_failed(lambda: save_checkpoint(state, files.best) if state is not None else None, run)


def budget_notes(plan, run: Run) -> list[str]:
    if plan is None:
        return []
    spe = run.numbers.steps_per_epoch
    return [f"budget {run.recipe.schedule.budget}: {plan.total_steps} steps ({plan.total_steps / spe:.2f} epochs) "
            f"at {plan.step_s:.3f}s a step, {plan.evaluations} periodic evaluation(s) of {plan.eval_s:.1f}s, "
            f"planned to end {plan.planned_end_s:.0f}s after the start (recorded in budget.json)"]


def final_figures(run: Run, files: RunFiles, result: EvalResult | None, confusion: torch.Tensor | None) -> list[Path]:
    """curves.png and checkpoints/final_confusion.png (as `semiclust plot` and `semiclust eval` write them), made
    at the end of a run that logs to a tracker, for the tracker."""
    paths = [plot_run(files.root, files.curves)]
    if result is not None and confusion is not None:
        paths.append(plot_confusion(confusion, list(run.dataset.classes), files.final_confusion,
                                    f"{run.recipe.name}, step {run.numbers.total_steps}: top-1 {result.top1:.2f}% on "
                                    f"{result.n} images"))
    return paths


def run_steps(run: Run, files: RunFiles, reporter: Reporter, start_step: int, skipped: int, hint: str,
              stop: StopRequest, guard: BudgetGuard | None = None, best: BestSoFar | None = None) -> tuple[int, int]:
    """The optimiser steps from `start_step` to the run's length (which a budget's re-plan may change on the way),
    each followed by what the policy says is due (evaluation, a periodic checkpoint, the stop a signal asked for);
    returns the number of non-finite steps skipped and the step the run ended at (earlier than planned only if a
    budget would otherwise be overrun)."""
    policy = Policy(run.recipe, run.numbers, run.eval_views is not None, run.device)
    unreadable = UnreadableImages(run, reporter)
    run.batches.on_corrupt = unreadable.add
    run.method.train()
    step = start_step
    with stop.deferred():
        try:
            while step < run.numbers.total_steps:
                outcome = train_step(run, step)
                step += 1
                if not outcome.finite:
                    skipped = skip_or_stop(run, outcome, step - 1, skipped, files, reporter, hint)
                    continue  # the next step starts by zeroing the discarded gradients
                reporter.step_done(step - 1, outcome, run.schedules.lr(step - 1), run.schedules.weight_decay(step - 1),
                                   file_counts(run))
                if run.finite_watch is not None and (step % run.recipe.runtime.log_every_steps == 0
                                                     or policy.evaluates_after(step) or step == run.numbers.total_steps):
                    check_finite_watch(run, outcome, files, skipped, hint)
                unreadable.report(step)
                after_step(run, step, policy, stop, reporter, files, skipped, hint, best, guard)
                if guard is not None and out_of_time(guard, step, run, reporter):
                    return skipped, step
        finally:
            reporter.stop_display()
    return skipped, step


def check_finite_watch(run: Run, outcome: StepOutcome, files: RunFiles, skipped: int, hint: str) -> None:
    """The device's note of non-finite losses, read once per log window (CUDA): the run ends at the first bad
    step as it would have at once, only up to a window later."""
    bad = run.finite_watch.first()
    if bad is not None:
        raise non_finite_error(bad, {k: float(v) for k, v in outcome.parts.items()}, files, skipped, hint)


def out_of_time(guard: BudgetGuard, done: int, run: Run, reporter: Reporter) -> bool:
    """Checked every few seconds, agreed by every process: the run ends here rather than past its budget."""
    if not guard.due(done) or not dist.any_process(guard.over(done), run.device):
        return False
    reporter.warn(f"warning: the steps ran slower than the calibration measured; the run ends at step {done} of "
                  f"{run.numbers.total_steps} to stay inside its budget of {run.recipe.schedule.budget}")
    return True


def after_step(run: Run, done: int, policy: Policy, stop: StopRequest, reporter: Reporter, files: RunFiles,
               skipped: int, hint: str, best: BestSoFar | None = None, guard: BudgetGuard | None = None) -> None:
    """Evaluation (and best.pt) and periodic checkpoints when due; after a signal (on any process), a checkpoint
    and the stop. A budget's re-plan, when due, comes before the checkpoint, which then records the new length."""
    if policy.evaluates_after(done):
        evaluation = evaluate_run(run, done, reporter)
        keep_if_best(run, files, best, evaluation, done, skipped)
        shown, what = (evaluation.result, "") if evaluation.result else (evaluation.validation, "validation ")
        reporter.message(f"epoch {done // run.numbers.steps_per_epoch}: {what}top-1 {shown.top1:.2f}%  "
                         f"top-5 {shown.top5:.2f}%" + (evaluation.line() if evaluation.result else ""))
    stopping = stop_agreed(run, done, stop)
    if guard is not None:
        guard.step_done(done)
        if guard.replan_due(done):
            replan(guard, run, files, done, policy, reporter)
    if policy.saves_after(done, stopping):
        path = save_periodic_checkpoint(run, done, files, skipped)
        policy.saved()
        if stopping:
            raise stopped(stop, done, path or files.last_periodic(), hint)


def replan(guard: BudgetGuard, run: Run, files: RunFiles, done: int, policy: Policy, reporter: Reporter) -> None:
    """The budget's length decided again from the run's own pace; the loop, the policy and the display follow."""
    before = run.numbers.total_steps
    length, pace = guard.replan(run, files, done)
    policy.numbers = run.numbers
    reporter.retarget(run.numbers)
    reporter.warn(replan_note(run.recipe.schedule.budget, done, before, length, pace))


def replan_note(budget: str, done: int, before: int, length: int, pace: float | None) -> str:
    """The line each re-plan prints (whatever runtime.progress says, like the calibration's): the run's length
    changes under the user's eyes, so every decision is shown, the ones that keep the length too."""
    how = f"from the run's own pace ({pace:.3f}s a step)" if pace is not None else \
        "as budget.json recorded it or with too few timed steps to measure a pace"
    change = f"{length} steps instead of {before}" if length != before else f"keeps its {length} steps"
    return f"budget {budget}: re-planned at step {done} {how}: {change} (budget.json)"


def stop_agreed(run: Run, done: int, stop: StopRequest) -> bool:
    """Whether a signal reached any process: asked after every step on a CPU, after each log window on GPUs (the
    question is a read-back, which a GPU step should not wait for); the stop then comes at most a window later."""
    if run.device.type == "cuda" and run.numbers.world > 1 and done % run.recipe.runtime.log_every_steps \
            and done != run.numbers.total_steps:
        return False
    return dist.any_process(stop.requested, run.device)


def start_processes(runtime: Runtime) -> torch.device:
    """Join the process group torchrun describes (nothing for one process), pick the device and threads."""
    dist.init_from_env(runtime.device != "cpu" and torch.cuda.is_available())
    device = resolve_device(runtime.device)
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    return device


def resume_from(files: RunFiles, run: Run) -> tuple[int, int, list[str]]:
    """Restore the newest periodic checkpoint that loads and fits the run's networks (an older one when the newest
    is damaged): (the step to continue from, steps skipped so far, a note for each checkpoint passed over)."""
    passed_over: list[str] = []
    found = latest_usable(files.checkpoints, map_location=run.device, fits=lambda state: misfit(state, run.method),
                          skipped=passed_over)
    notes = [f"warning: {note}" for note in passed_over]
    if found is None:
        if passed_over:
            raise SemiclustError(f"--resume: no checkpoint of '{files.checkpoints}' can be used "
                                 f"({'; '.join(passed_over)}). Start a new run with --overwrite or another --out.")
        return 0, 0, notes
    return restore(found[1], run), found[1].get("skipped_steps", 0), notes


def check_the_end(run: Run, start_step: int) -> None:
    """A resume past the run's end is refused; at its very end (a stop during the final evaluation) the run goes
    straight to the final evaluation."""
    if start_step > run.numbers.total_steps:
        raise SemiclustError(f"--resume: the run is at step {start_step} but the schedule now ends at step "
                             f"{run.numbers.total_steps}; give schedule.epochs (or a budget) that reach past it.")


def last_good_checkpoint(files: RunFiles) -> Path | None:
    """The newest periodic checkpoint that loads (an unreadable one is never called good)."""
    found = latest_usable(files.checkpoints) if files.checkpoints.is_dir() else None
    return found[0] if found else None


def write_failed(err: WriteFailed, files: RunFiles, hint: str) -> SemiclustError:
    """A failed write during a run: what could not be written, the free space, and how to go on."""
    last = last_good_checkpoint(files)
    where = f"The last good checkpoint is '{last}'" if last else "No checkpoint was written yet"
    then = f"continue with: {hint}" if last else "start the run again"
    return SemiclustError(f"{err}. {where}. Free some space (or choose another --out), then {then}.", exit_code=1)


def save_final(run: Run, files: RunFiles, skipped: int, evaluation: RunEvaluation, end: int) -> None:
    """checkpoints/final.pt (of step `end`), written by rank 0; every process learns whether it could be written."""
    state = checkpoint_state(run, end, skipped, evaluation)
    written_or_failed(lambda: save_checkpoint(state, files.final) if state is not None else None, run)


def written_or_failed(write, run: Run):
    """Rank 0 writes; if it cannot, every process stops with its error instead of waiting at a barrier."""
    outcome, error = None, None
    try:
        outcome = write()
    except WriteFailed as err:
        error = err
    if dist.any_process(error is not None, run.device):
        raise error or WriteFailed(Path("(rank 0's file)"), "rank 0 could not write it (its error is printed there)")
    return outcome


def announce(run: Run, reporter: Reporter, start_step: int, notes: list[str] = ()) -> None:
    """The start-up line: data, labeled subset, parameters, steps, lr, processes and device; the notes of
    the run directory and of the labeled draw."""
    for note in notes:
        reporter.warn(note)
    recipe, dataset, numbers = run.recipe, run.dataset, run.numbers
    params = sum(p.numel() for p in run.method.student.parameters())
    evaluation = f"{len(dataset.test)} {dataset.test_split_name}" if dataset.test is not None else "no evaluation set"
    reporter.message(
        f"semiclust {__version__}: {recipe.method.name} on {dataset.name} ({len(dataset.train)} train, "
        f"{len(run.subset.indices)} labeled [{run.subset.identity}], {evaluation}); {params:,} parameters; "
        f"{numbers.steps_per_epoch} steps/epoch x {epochs_of(recipe, numbers)} epochs = {numbers.total_steps} steps; "
        f"lr {lr_description(recipe, numbers)}; {numbers.world} process(es) on {run.device}"
        + (", SyncBatchNorm" if run.sync_bn else "") + (f", {run.amp_dtype}" if run.amp_dtype else "")
        + (f"; resuming at step {start_step}" if start_step else "")
    )
    if run.init_report is not None:
        reporter.message(run.init_report.summary())
    for note in run.notes:
        reporter.message(note)
    passed = run.subset.passed_over
    if passed:
        shown = [f"{printable(dataset.train.files[i])} ({reason})" for i, reason in sorted(passed.items())]
        reporter.warn(f"labeled subset: passed over {len(passed)} unreadable image(s) for the next of their class: "
                      f"{examples(shown, 5, quote=False)}")


def epochs_of(recipe: Recipe, numbers) -> str:
    return str(recipe.schedule.epochs) if recipe.schedule.epochs else f"{numbers.total_steps / numbers.steps_per_epoch:.2f}"


class UnreadableImages:
    """Unreadable training images: the end of the run at the first (`data.corrupt_images: fail`), or one
    warning per log window that counts them (`skip`), instead of a line per image."""

    def __init__(self, run: Run, reporter: Reporter):
        self.run, self.reporter, self.pending = run, reporter, []

    def add(self, corrupt: list[Corrupt]) -> None:
        if corrupt and self.run.recipe.data.corrupt_images == "fail":
            bad = corrupt[0]
            raise SemiclustError(
                f"unreadable training image '{bad.path}' ({bad.reason}). Replace or remove the file, or set "
                "data.corrupt_images: skip to skip unreadable images with a warning; `semiclust data check "
                "RECIPE --all` lists every one.", exit_code=1)
        self.pending.extend(corrupt)

    def report(self, done: int) -> None:
        """At the end of each log window: one line for the images skipped in it."""
        every, total = self.run.recipe.runtime.log_every_steps, self.run.numbers.total_steps
        if not self.pending or (done % every and done != total):
            return
        first = self.pending[0]
        self.reporter.warn(f"warning: skipped {len(self.pending)} unreadable image(s) by step {done} (e.g. "
                           f"'{first.path}': {first.reason}); {self.run.batches.corrupt_images} skipped so far")
        self.pending = []


def file_counts(run: Run) -> dict:
    """Extra figures of a training record: the unreadable images skipped so far (image-file datasets)."""
    return {"corrupt_images": run.batches.corrupt_images} if run.batches.files is not None else {}


def checkpoint_state(run: Run, step: int, skipped: int, evaluation: RunEvaluation | None = None) -> dict | None:
    """The checkpoint of `step` on rank 0 (every process's RNG and queue gathered), None elsewhere."""
    per_rank = dist.gather_objects(process_state(run.method, run.device))
    return training_state(run, step, evaluation, per_rank, skipped) if dist.is_main() else None


def save_periodic_checkpoint(run: Run, step: int, files: RunFiles, skipped: int) -> Path | None:
    """A periodic checkpoint, written only while the weights are finite (so that every checkpoint is one a
    run can continue from; the weights are the same on every process, so all agree)."""
    if not all(torch.isfinite(p).all() for p in run.method.parameters()):
        raise non_finite_error(step - 1, {"weights": float("nan")}, files, skipped, None, "the weights became non-finite")
    state = checkpoint_state(run, step, skipped)
    return written_or_failed(lambda: save_periodic(state, files.checkpoints, run.recipe.checkpoint.keep_last)
                             if state else None, run)


def skip_or_stop(run: Run, outcome: StepOutcome, step: int, skipped: int, files: RunFiles, reporter: Reporter,
                 hint: str | None = None) -> int:
    """A non-finite step: skipped (its buffer changes undone) while `runtime.skip_nonfinite_steps` allows,
    else the end of the run with the loss parts and the last good checkpoint."""
    parts = {k: float(v) for k, v in outcome.parts.items()}
    allowed = run.recipe.runtime.skip_nonfinite_steps
    if skipped >= allowed:
        raise non_finite_error(step, parts, files, skipped, hint)
    undo_buffers(run, outcome)
    reporter.warn(f"step {step}: non-finite loss ({parts}); step skipped ({skipped + 1}/{allowed} allowed)")
    return skipped + 1


def non_finite_error(step: int, parts: dict[str, float], files: RunFiles, skipped: int,
                     hint: str | None = None, what: str = "the loss became non-finite") -> SemiclustError:
    """The non-finite loss: its parts, the last checkpoint that loads, and a change --resume accepts."""
    shown = ", ".join(f"{k} {v:.4g}" for k, v in parts.items())
    last = last_good_checkpoint(files)
    where = f"The last good checkpoint is '{last}'" if last else "No checkpoint was written yet"
    also = f" after skipping {skipped} bad step(s)" if skipped else ""
    command = hint or f"semiclust train RECIPE --out {files.root} --resume"
    then = (f"and continue from it with the change, e.g.: {command} --set optim.lr=LOWER (--resume accepts "
            "changes to optim.lr, optim.clip_grad_norm, schedule.*, runtime.*, checkpoint.* and eval.*)"
            if last else "and start again")
    return SemiclustError(
        f"{what} at step {step}{also} ({shown}). {where}. Lower optim.lr, add warm-up "
        "(schedule.warmup_epochs), set optim.clip_grad_norm or use runtime.precision: fp32, " + then
        + "; runtime.skip_nonfinite_steps skips a bounded number of such steps.",
        exit_code=1,
    )


def stopped(stop: StopRequest, done: int, path: Path | None, hint: str, when: str = "") -> TrainingStopped:
    when = f" {when}" if when else ""
    return TrainingStopped(
        f"stopped by {stop.signal_name or 'a signal on another process'}{when} after step {done}; checkpoint '{path}' "
        f"written. Continue with: {hint}",
        exit_code=exit_code(stop.signal_name),
    )


def stopped_outside_steps(signal_name: str, files: RunFiles, hint: str) -> TrainingStopped:
    """A signal while the run was built, evaluated at its end or written: the newest checkpoint on disk (written
    atomically, so whole) and the command that continues from it."""
    newest = files.last_periodic() if files.checkpoints.is_dir() else None
    if files.final.is_file():
        where = f"the run had finished: '{files.final}' is written"
    elif newest is not None:
        where = f"the newest checkpoint is '{newest}'. Continue with: {hint}"
    else:
        where = f"no step was trained yet, so nothing is lost. Start it again with: {hint}"
    return TrainingStopped(f"stopped by {signal_name} outside a training step; {where}", exit_code=exit_code(signal_name))
