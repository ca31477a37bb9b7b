"""The training loop, read top to bottom: processes and device, run directory, the run's objects
(engine/setup.py), resume, then the steps with their evaluation and checkpoint policy, and the end. The loop's
working state is one object, `LoopState` (litgpt's `state`): the step, the skipped steps, the files, the resume
command, the reporter, the stop request, the best validation result, the budget's guard and the policy; its
checkpoints save and restore it with the run's objects.

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
from semiclust.engine.budget import BudgetGuard, BudgetPlan, plan_budget
from semiclust.engine.checkpoint import Checkpoint, latest_usable, periodic_path, save_checkpoint, save_periodic
from semiclust.engine.device import resolve_device
from semiclust.engine.finetune_targets import fill_propagated_targets, propagation_due
from semiclust.engine.policy import Policy
from semiclust.engine.numbers import lr_description
from semiclust.engine.reporter import Reporter, trim_for_resume
from semiclust.engine.run import Run
from semiclust.engine.run_dir import Claim, RunFiles, begin_files, claim_run_dir, record_changes, resumable_keys
from semiclust.engine.setup import build_run
from semiclust.engine.loggers import check_installed
from semiclust.engine.signals import Stopped, StopRequest, TrainingStopped, exit_code
from semiclust.engine.disk import needed_space
from semiclust.engine.state import misfit, process_state, restore_run, run_checkpoint
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


@dataclass
class LoopState:
    """The loop's working state, and what its checkpoints save of it with the run's objects (litgpt's `state`): a
    new piece of state is one field here (and, when a resume must see it, one in engine/checkpoint.py)."""

    run: Run
    files: RunFiles
    hint: str  # the command that resumes the run, with the user's --set overrides
    stop: StopRequest
    step: int = 0  # the steps done: the index of the next step, the step a checkpoint records
    skipped: int = 0  # non-finite steps skipped so far (runtime.skip_nonfinite_steps)
    reporter: Reporter | None = None
    best: BestSoFar | None = None  # data.validation: the best validation top-1 so far (best.pt)
    guard: BudgetGuard | None = None  # a budgeted run's guard and re-plans
    policy: Policy | None = None  # when to evaluate and write periodic checkpoints

    def checkpoint(self, evaluation: RunEvaluation | None = None) -> Checkpoint | None:
        """The checkpoint of the steps done, on rank 0 (every process's RNG and queue gathered); None elsewhere."""
        per_rank = dist.gather_objects(process_state(self.run.method, self.run.device))
        return run_checkpoint(self.run, self.step, self.skipped, per_rank, evaluation) if dist.is_main() else None

    def restore(self, checkpoint: Checkpoint) -> None:
        """The run's objects and the loop's counters as the checkpoint saved them."""
        restore_run(checkpoint, self.run)
        self.step, self.skipped = checkpoint.step, checkpoint.skipped_steps


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
            return fit(claim, files, device, console or Console(), hint, started, stop)
        except WriteFailed as err:
            raise write_failed(err, files, hint) from None
        except Stopped as interrupted:
            raise stopped_outside_steps(interrupted.signal_name, files, hint) from None
        finally:
            if lock is not None:
                lock.release()


def fit(claim: Claim, files: RunFiles, device: torch.device, console: Console, hint: str, started: float,
        stop: StopRequest) -> TrainSummary:
    """The run in a claimed folder: its objects, resume, its files (only once the start is built), its length (a
    budget's calibration), the steps, a checkpoint of the last step, the final evaluation and checkpoint."""
    loop = LoopState(build_run(claim.recipe, files, device, claim.resume), files, hint, stop)
    run, passed_over = loop.run, resume_from(loop) if claim.resume else []
    start_step = loop.step
    check_free_space(run, files, claim.resume)
    notes = begin_files(files, claim, lambda: save_subsets(run, files))
    notes += trim_for_resume(files.metrics, start_step) if claim.resume and dist.is_main() else []
    plan = budget_or_stop(loop, claim.resume, started)
    check_the_end(loop)
    record_changes(files, claim, start_step)
    loop.guard = BudgetGuard(plan, started, start_step) if plan else None
    loop.best = BestSoFar.of(files.best, claim.resume) if run.validation_views is not None else None
    with Reporter(files, claim.recipe, console, run.numbers, start_step, claim.resume) as reporter:
        loop.reporter = reporter
        announce(loop, passed_over + claim.notes + notes + budget_notes(plan, run))
        run_steps(loop)
        last = save_last_step(loop, start_step)
        if stop.requested:  # a signal during the last step: its checkpoint is written, the evaluation is not begun
            raise stopped(loop, last)
        evaluation = evaluate_run(run, loop.step, reporter)
        keep_if_best(loop, evaluation)
        seconds = reporter.elapsed()
        save_final(loop, evaluation)
        if reporter.tracking and dist.is_main():
            reporter.files(final_figures(run, files, evaluation.result, evaluation.confusion))
    if last is not None and dist.is_main():
        last.unlink(missing_ok=True)  # final.pt holds the same step: the folder keeps the files it always had
    return TrainSummary(files.root, files.final, evaluation.result, loop.step - start_step, seconds, dist.is_main(),
                        budget_used(plan, started), evaluation.beside, loop.best)


def budget_used(plan: BudgetPlan | None, started: float) -> str | None:
    """How much of a budget the whole command took (None without a budget)."""
    if plan is None:
        return None
    used = time.time() - started
    return f"{used / 60:.1f} of {plan.budget_s / 60:.1f} minutes ({used / plan.budget_s:.1%})"


def budget_or_stop(loop: LoopState, resumed: bool, started: float) -> BudgetPlan | None:
    """The budget's plan (engine/budget.py); a signal during its calibration puts the run back as it was and
    writes it as a checkpoint of its first step, so that the printed command resumes it."""
    run, stop = loop.run, loop.stop
    try:
        with stop.deferred():
            return plan_budget(run, loop.files, resumed, started, loop.step,
                               lambda: dist.any_process(stop.requested, run.device))
    except Stopped:
        path = save_periodic_checkpoint(loop) if not resumed else loop.files.last_periodic()
        raise stopped(loop, path, "during the budget's calibration") from None


def save_last_step(loop: LoopState, start_step: int) -> Path | None:
    """A checkpoint of the last step before the final evaluation (removed once final.pt holds it), so that a signal
    during the evaluation, or a failed final.pt, loses no training; none when the run resumed at its end, whose
    checkpoint is there already."""
    if loop.step == start_step:
        return loop.files.last_periodic()
    path = periodic_path(loop.files.checkpoints, loop.step)
    if path.exists():  # the periodic policy wrote it (a checkpoint every step)
        return None
    checkpoint = loop.checkpoint()
    written_or_failed(lambda: save_checkpoint(checkpoint, path) if checkpoint is not None else None, loop.run)
    return path


def keep_if_best(loop: LoopState, evaluation: RunEvaluation) -> None:
    """checkpoints/best.pt, rewritten when the validation top-1 improves (data.validation)."""
    if loop.best is not None and loop.best.improved_by(evaluation, loop.step):
        checkpoint = loop.checkpoint(evaluation)
        written_or_failed(lambda: save_checkpoint(checkpoint, loop.files.best) if checkpoint is not None else None,
                          loop.run)


def save_final(loop: LoopState, evaluation: RunEvaluation) -> None:
    """checkpoints/final.pt (of the last step), written by rank 0; every process learns whether it could be written."""
    checkpoint = loop.checkpoint(evaluation)
    written_or_failed(lambda: save_checkpoint(checkpoint, loop.files.final) if checkpoint is not None else None,
                      loop.run)


def run_steps(loop: LoopState) -> None:
    """The optimiser steps from the loop's step to the run's length (which a budget's re-plan may change on the
    way), each followed by what the policy says is due (evaluation, a periodic checkpoint, the stop a signal asked
    for); the run ends earlier than planned only if a budget would otherwise be overrun."""
    run, reporter = loop.run, loop.reporter
    loop.policy = Policy(run.recipe, run.numbers, run.eval_views is not None, run.device)
    unreadable = UnreadableImages(run, reporter)
    run.batches.on_corrupt = unreadable.add
    run.method.train()
    with loop.stop.deferred():
        try:
            while loop.step < run.numbers.total_steps:
                index = loop.step  # the step being taken; once done, loop.step counts it
                if propagation_due(run, index):
                    reporter.message(fill_propagated_targets(run))
                outcome = train_step(run, index)
                loop.step = index + 1
                if not outcome.finite:
                    skip_or_stop(loop, outcome, index)
                    continue  # the next step starts by zeroing the discarded gradients
                reporter.step_done(index, outcome, run.schedules.lr(index), run.schedules.weight_decay(index),
                                   file_counts(run))
                if run.finite_watch is not None and finite_watch_due(loop):
                    check_finite_watch(loop, outcome)
                unreadable.report(loop.step)
                after_step(loop)
                if loop.guard is not None and out_of_time(loop):
                    return
        finally:
            reporter.stop_display()


def finite_watch_due(loop: LoopState) -> bool:
    """Whether the device's note of non-finite losses is read after this step: at the end of each log window,
    before an evaluation, and at the last step."""
    done, run = loop.step, loop.run
    return (done % run.recipe.runtime.log_every_steps == 0 or loop.policy.evaluates_after(done)
            or done == run.numbers.total_steps)


def check_finite_watch(loop: LoopState, outcome: StepOutcome) -> None:
    """The device's note of non-finite losses, read once per log window (CUDA): the run ends at the first bad
    step as it would have at once, only up to a window later."""
    bad = loop.run.finite_watch.first()
    if bad is not None:
        raise non_finite_error(bad, {k: float(v) for k, v in outcome.parts.items()}, loop.files, loop.skipped, loop.hint)


def out_of_time(loop: LoopState) -> bool:
    """Checked every few seconds, agreed by every process: the run ends here rather than past its budget."""
    guard, done, run = loop.guard, loop.step, loop.run
    if not guard.due(done) or not dist.any_process(guard.over(done), run.device):
        return False
    loop.reporter.warn(f"warning: the steps ran slower than the calibration measured; the run ends at step {done} of "
                       f"{run.numbers.total_steps} to stay inside its budget of {run.recipe.schedule.budget}")
    return True


def after_step(loop: LoopState) -> None:
    """Evaluation (and best.pt) and periodic checkpoints when due; after a signal (on any process), a checkpoint
    and the stop. A budget's re-plan, when due, comes before the checkpoint, which then records the new length."""
    run, done, policy = loop.run, loop.step, loop.policy
    if policy.evaluates_after(done):
        evaluation = evaluate_run(run, done, loop.reporter)
        keep_if_best(loop, evaluation)
        shown, what = (evaluation.result, "") if evaluation.result else (evaluation.validation, "validation ")
        loop.reporter.message(f"epoch {run.schedules.epoch(done)}: {what}top-1 {shown.top1:.2f}%  "
                              f"top-5 {shown.top5:.2f}%" + (evaluation.line() if evaluation.result else ""))
    stopping = stop_agreed(run, done, loop.stop)
    if loop.guard is not None:
        loop.guard.step_done(done)
        if loop.guard.replan_due(done):
            replan(loop)
    if policy.saves_after(done, stopping):
        path = save_periodic_checkpoint(loop)
        policy.saved()
        if stopping:
            raise stopped(loop, path or loop.files.last_periodic())


def replan(loop: LoopState) -> None:
    """The budget's length decided again from the run's own pace: it changes the run's numbers, which the loop,
    the policy, the schedules and the display read."""
    run = loop.run
    before = run.numbers.total_steps
    length, pace = loop.guard.replan(run, loop.files, loop.step)
    loop.reporter.warn(replan_note(run.recipe.schedule.budget, loop.step, before, length, pace))


def resume_from(loop: LoopState) -> list[str]:
    """Restore the newest periodic checkpoint that loads and fits the run's networks (an older one when the newest
    is damaged) into the run and the loop; returns a note for each checkpoint passed over."""
    run, files, passed_over = loop.run, loop.files, []
    found = latest_usable(files.checkpoints, map_location=run.device,
                          fits=lambda checkpoint: misfit(checkpoint, run.method), skipped=passed_over)
    notes = [f"warning: {note}" for note in passed_over]
    if found is None:
        if passed_over:
            raise SemiclustError(f"--resume: no checkpoint of '{files.checkpoints}' can be used "
                                 f"({'; '.join(passed_over)}). Start a new run with --overwrite or another --out.")
        return notes
    loop.restore(found[1])
    return notes


def check_the_end(loop: LoopState) -> None:
    """A resume past the run's end is refused; at its very end (a stop during the final evaluation) the run goes
    straight to the final evaluation."""
    total = loop.run.numbers.total_steps
    if loop.step > total:
        raise SemiclustError(f"--resume: the run is at step {loop.step} but the schedule now ends at step "
                             f"{total}; give schedule.epochs (or a budget) that reach past it.")


def announce(loop: LoopState, notes: list[str] = ()) -> None:
    """The start-up line: data, labeled subset, parameters, steps, lr, processes and device; the notes of
    the run directory and of the labeled draw."""
    run, reporter = loop.run, loop.reporter
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
        + (f"; resuming at step {loop.step}" if loop.step else "")
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


def save_periodic_checkpoint(loop: LoopState) -> Path | None:
    """A periodic checkpoint, written only while the weights are finite (so that every checkpoint is one a
    run can continue from; the weights are the same on every process, so all agree)."""
    run = loop.run
    if not all(torch.isfinite(p).all() for p in run.method.parameters()):
        raise non_finite_error(loop.step - 1, {"weights": float("nan")}, loop.files, loop.skipped, loop.hint,
                               "the weights became non-finite")
    checkpoint = loop.checkpoint()
    return written_or_failed(lambda: save_periodic(checkpoint, loop.files.checkpoints, run.recipe.checkpoint.keep_last)
                             if checkpoint else None, run)


def skip_or_stop(loop: LoopState, outcome: StepOutcome, index: int) -> None:
    """A non-finite step `index`: skipped (its buffer changes undone) while `runtime.skip_nonfinite_steps` allows,
    else the end of the run with the loss parts and the last good checkpoint."""
    parts = {k: float(v) for k, v in outcome.parts.items()}
    allowed = loop.run.recipe.runtime.skip_nonfinite_steps
    if loop.skipped >= allowed:
        raise non_finite_error(index, parts, loop.files, loop.skipped, loop.hint)
    undo_buffers(loop.run, outcome)
    loop.skipped += 1
    loop.reporter.warn(f"step {index}: non-finite loss ({parts}); step skipped ({loop.skipped}/{allowed} allowed)")


def non_finite_error(step: int, parts: dict[str, float], files: RunFiles, skipped: int, hint: str,
                     what: str = "the loss became non-finite") -> SemiclustError:
    """The non-finite loss: its parts, the last checkpoint that loads, and a change --resume accepts, in the
    command that resumes the run (`hint`, with the user's --set overrides)."""
    shown = ", ".join(f"{k} {v:.4g}" for k, v in parts.items())
    last = last_good_checkpoint(files)
    where = f"The last good checkpoint is '{last}'" if last else "No checkpoint was written yet"
    also = f" after skipping {skipped} bad step(s)" if skipped else ""
    then = (f"and continue from it with the change, e.g.: {hint} --set optim.lr=LOWER (--resume accepts "
            f"changes to {resumable_keys()})" if last else "and start again")
    return SemiclustError(
        f"{what} at step {step}{also} ({shown}). {where}. Lower optim.lr, add warm-up "
        "(schedule.warmup_epochs), set optim.clip_grad_norm or use runtime.precision: fp32, " + then
        + "; runtime.skip_nonfinite_steps skips a bounded number of such steps.",
        exit_code=1,
    )


def stopped(loop: LoopState, path: Path | None, when: str = "") -> TrainingStopped:
    """A signal's stop after the loop's steps: the checkpoint written and the command that continues."""
    stop, when = loop.stop, f" {when}" if when else ""
    return TrainingStopped(
        f"stopped by {stop.signal_name or 'a signal on another process'}{when} after step {loop.step}; checkpoint "
        f"'{path}' written. Continue with: {loop.hint}",
        exit_code=exit_code(stop.signal_name),
    )


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
