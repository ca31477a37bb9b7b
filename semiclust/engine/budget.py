"""A wall-time budget (`schedule.budget`): a short calibration at the start of a run measures the seconds
of a step, of an evaluation and of a checkpoint, and fixes the number of steps so that the whole command
ends inside the budget. The decision is recorded in RUN/budget.json and reused on resume, so the
schedules stay pure functions of the step and a budgeted run resumes exactly.

The calibration steps are real steps on the real data, taken from a snapshot of the run that is put back
afterwards (weights, optimiser, buffers, generators): training then starts from where it would have.
A few seconds of steps just after start-up are an unsteady sample of a run's pace (measured here: 3-4%
off either way), and the pace of a run's first minute is not that of the rest (5-minute runs: up to 8%), so the
length is decided again from the run's own steps at REPLAN_SHARES of it (6%, at least 40 steps in; 35%; 70%),
each time from the median step since the previous decision. budget.json records every decision
(`replans`: [step, length]) and the next point (`replan_at`): a resume from a checkpoint takes the length in force
at its step, then the recorded decisions at their steps (and makes the ones the first run did not reach), so that
it repeats what the first run did.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from semiclust.data.datasets import split_rows
from semiclust.data.eval_views import EvalViews
from semiclust.engine import dist
from semiclust.engine.checkpoint import Checkpoint, save_checkpoint
from semiclust.engine.metrics import MetricsLog
from semiclust.engine.run import Run
from semiclust.engine.run_dir import RunFiles
from semiclust.engine.signals import Stopped
from semiclust.engine.state import process_state, restore_run, run_checkpoint
from semiclust.engine.step import train_step
from semiclust.errors import SemiclustError
from semiclust.evaluation.metrics import features_and_scores, predict_scores
from semiclust.methods.label_propagation import knn_graph, propagate
from semiclust.storage.atomic import write_text

DRIFT = 0.02  # steps are planned 2% slower than measured, so that a slower stretch still ends inside the budget
REPLAN_DRIFT = 0.01  # the re-plan's margin: its pace comes from the run's own steps, and the guard catches the rest
REPLAN_SHARES = (0.06, 0.35, 0.70)  # the length is decided again this far into the run, each time from the median
REPLAN_MIN = 40                    # step since the previous decision, at least REPLAN_MIN steps after it (or in)
PACE_FROM = 10  # the re-plan times the steps after the first 10 (allocations and loader queues still settle there)
EXIT_S = 2.0  # the final messages, closing trackers and the process exit
CALIBRATION_SHARE = 0.03  # at most this share of the budget is spent measuring steps
CALIBRATION_STEPS = 203  # at most this many steps are measured (200 after three warm-up ones)


def process_started() -> float:
    """When this process started, on the time.time() clock (from /proc on Linux; now, elsewhere)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


@dataclasses.dataclass
class BudgetPlan:
    """What the calibration measured and decided (all seconds), as budget.json records it."""

    budget_s: float
    total_steps: int
    step_s: float
    eval_s: float
    checkpoint_s: float
    evaluations: int
    checkpoints: int
    started_s: float  # seconds after the process started at which the steps began
    planned_end_s: float
    replan_at: int | None = None  # the step after which the length is decided next (None: no more)
    first_total_steps: int | None = None  # the calibration's decision, the length before the first re-plan
    replans: list = dataclasses.field(default_factory=list)  # [step, length] of each re-plan, in order
    start_step: int = 0  # the step the calibration counted from (a resume with a new budget starts later)
    replan_share: int = 0  # the index in REPLAN_SHARES of `replan_at` (each share is used once)
    propagation_s: float = 0.0  # the fine-tuning stage's label propagation, once (schedule.finetune.targets)

    @property
    def replanned(self) -> bool:
        """Whether the length was decided again at least once (total_steps is then the latest decision)."""
        return bool(self.replans)

    def length_from(self, step: int) -> int:
        """The length in force for a run at `step` (a checkpoint after it): the calibration's, then each re-plan's
        from its step on."""
        length = self.total_steps if self.first_total_steps is None else self.first_total_steps
        for at, decided in self.replans:
            if step >= at:
                length = decided
        return length

    def upcoming(self, step: int) -> list[int]:
        """The re-plan points still ahead of a run at `step`: recorded decisions after it, then the next one."""
        points = [at for at, _ in self.replans if at > step]
        return points + ([self.replan_at] if self.replan_at is not None and self.replan_at > step else [])

    def save(self, path: Path) -> None:
        write_text(path, json.dumps(dataclasses.asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> "BudgetPlan":
        fields = json.loads(path.read_text())
        if fields.pop("replanned", False) and "replans" not in fields and fields.get("replan_at") is not None:
            fields["replans"], fields["replan_at"] = [[fields["replan_at"], fields["total_steps"]]], None  # one re-plan
        return cls(**fields)


def snapshot(run: Run) -> Checkpoint:
    """Everything a step changes, as a checkpoint holds it (this process's own entry of per_rank only), copied so
    that the calibration steps cannot reach it."""
    per_rank: list = [None] * dist.world_size()
    per_rank[dist.rank()] = process_state(run.method, run.device)
    return copy.deepcopy(run_checkpoint(run, 0, 0, per_rank))


def put_back(run: Run, snapshot_of_run: Checkpoint) -> None:
    """The snapshot back into the live objects, as a resume puts a checkpoint back, the batches restarted, and the
    non-finite steps noted on the device forgotten (the measured steps are not the run's)."""
    restore_run(snapshot_of_run, run)
    run.batches.restart()
    if run.finite_watch is not None:
        run.finite_watch.clear()


def seconds_per_step(run: Run, budget_s: float, stopping: Callable[[], bool] = lambda: False) -> float:
    """The median time of real steps after three warm-up ones (the median: loader workers still filling their
    queue make a few early steps slow): at least 10 of them and 1% of the budget (25 for steps so short that
    their time varies most), at most 3% of it (or 200 steps)."""
    times: list[float] = []
    for step in range(CALIBRATION_STEPS):
        started = time.perf_counter()
        train_step(run, step)
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        if step >= 3:
            times.append(time.perf_counter() - started)
        spent = sum(times)
        enough = 25 if statistics.fmean(times or [1.0]) < 0.05 else 10
        if (len(times) >= enough and spent > 0.01 * budget_s) or (len(times) >= 3 and spent > CALIBRATION_SHARE * budget_s):
            break
        if stopping():
            raise Stopped("a signal")
    return statistics.median(times)


def seconds_per_evaluation(run: Run) -> float:
    """One evaluation of the whole split: timed on all of it (up to 4,096 images), else on 1,024 and scaled."""
    if run.eval_views is None:
        return 0.0
    test, views = run.dataset.test, run.eval_views
    rows = torch.arange(len(test) if len(test) <= 4096 else 1024)
    sample = views if len(rows) == len(test) else EvalViews(
        split_rows(test, rows), views.view, views.mean, views.std, views.batch_size, run.device,
        run.recipe.data.loader, run.recipe.data.max_image_pixels)
    started = time.perf_counter()
    predict_scores(run.method.classifier, sample)
    return (time.perf_counter() - started) * len(test) / len(rows)


def seconds_of_propagation(run: Run) -> float:
    """The fine-tuning stage's label propagation, estimated (0 when the run has none): its pass over the training
    images at the pace of a pass over up to 1,024 of them, and its graph timed on up to 4,096 random features of the
    backbone's width, scaled by the square of the images (every image is compared with every other)."""
    if run.method.propagation is None:
        return 0.0
    train = run.dataset.train
    rows = torch.arange(min(len(train), 1024))
    sample = EvalViews(split_rows(train, rows), run.recipe.data.eval, run.dataset.mean, run.dataset.std,
                       run.recipe.eval.batch_size, run.device, run.recipe.data.loader, run.recipe.data.max_image_pixels)
    started = time.perf_counter()
    features, _, _ = features_and_scores(run.method.classifier, sample)
    pass_s = (time.perf_counter() - started) * len(train) / len(rows)
    drawn = torch.randn(min(len(train), 4096), features.shape[1], generator=torch.Generator().manual_seed(0))
    drawn = drawn.to(run.device)  # where the stage makes its graph
    started = time.perf_counter()
    propagate(knn_graph(drawn, run.recipe.schedule.finetune.neighbours), torch.arange(1), torch.zeros(1, dtype=torch.long),
              run.dataset.num_classes)
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    return pass_s + (time.perf_counter() - started) * (len(train) / len(drawn)) ** 2


def seconds_per_checkpoint(run: Run, files: RunFiles) -> float:
    """A real checkpoint of the run written where checkpoints go (state, serialisation, fsync), then removed."""
    per_rank = dist.gather_objects(process_state(run.method, run.device))
    started = time.perf_counter()
    if dist.is_main():
        probe = files.checkpoints / ".calibration.pt"
        save_checkpoint(run_checkpoint(run, 0, 0, per_rank), probe)
        probe.unlink(missing_ok=True)
    return time.perf_counter() - started


def seconds_of_bookkeeping(run: Run, files: RunFiles) -> float:
    """What the loop adds to each step: a metrics.jsonl record (appended and fsynced) every log_every_steps."""
    probe = MetricsLog(files.root / ".calibration.jsonl")
    started = time.perf_counter()
    for _ in range(3):
        probe.write({"type": "train", "step": 0, **{f"figure_{i}": 0.5 for i in range(12)}})
    probe.path.unlink(missing_ok=True)
    return (time.perf_counter() - started) / 3 / run.recipe.runtime.log_every_steps


def planned_steps(budget_s: float, now_s: float, step_s: float, eval_s: float, checkpoint_s: float, run: Run,
                  done: int = 0, drift: float = DRIFT, once_s: float = 0.0) -> tuple:
    """The most steps after step `done` whose time, with the periodic evaluations and checkpoints they bring, the
    final ones, the exit and the work still to come once (`once_s`: a fine-tuning stage's propagation), fits what is
    left of the budget (steps planned `drift` slower than measured); and how many periodic evaluations and
    checkpoints that makes. The time grows with the steps, so a bisection finds it."""
    recipe, spe = run.recipe, run.numbers.steps_per_epoch
    left = budget_s - now_s - eval_s - checkpoint_s - EXIT_S - once_s
    every = spe * recipe.eval.every_epochs

    def counts(steps: int) -> tuple[int, int]:
        evaluations = (done + steps) // every - done // every if recipe.eval.every_epochs else 0
        return evaluations, periodic_checkpoints(steps, spe, recipe, budget_s)

    def fits(steps: int) -> bool:
        evaluations, checkpoints = counts(steps)
        return steps * step_s * (1 + drift) + evaluations * eval_s + checkpoints * checkpoint_s <= left

    low, high = 0, max(int(left / step_s) + 1, 1)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return (low, *counts(low))


def periodic_checkpoints(steps: int, spe: int, recipe, budget_s: float) -> int:
    ckpt = recipe.checkpoint
    count = steps // (spe * ckpt.every_epochs) if ckpt.every_epochs else 0
    count += steps // ckpt.every_steps if ckpt.every_steps else 0
    count += math.floor(budget_s / (60 * ckpt.every_minutes)) if ckpt.every_minutes else 0
    return count


def calibrate(run: Run, files: RunFiles, budget_s: float, started: float, start_step: int = 0,
              stopping: Callable[[], bool] = lambda: False) -> BudgetPlan:
    """Measure (on a snapshot, put back afterwards) and decide the number of steps, counting from
    `start_step` (a resumed run); rank 0's decision on all processes. When `stopping()` turns true (a signal,
    asked after each measured step and each measurement) the run is put back as it was and `Stopped` raised."""
    before, length = snapshot(run), run.numbers.total_steps
    # the file loader's positions cover every measured step, and the measured steps stay in the first stage (a
    # fine-tuning stage takes at most half the run: its propagated targets are made when the real run reaches it)
    run.numbers.retarget(max(length, 2 * CALIBRATION_STEPS))
    run.batches.restart()  # (before the plan the length stands at one epoch, which a small folder takes in a step)
    try:
        step_s = seconds_per_step(run, budget_s, stopping) + seconds_of_bookkeeping(run, files)
        eval_s = seconds_per_evaluation(run)
        propagation_s = seconds_of_propagation(run)
    finally:
        put_back(run, before)  # the evaluation's loader drew from the global generator too
        run.numbers.retarget(length)
    checkpoint_s = seconds_per_checkpoint(run, files)
    if stopping():
        raise Stopped("a signal")
    now_s = time.time() - started
    once_s = propagation_s if run.method.propagation_pending else 0.0
    steps, evaluations, checkpoints = planned_steps(budget_s, now_s, step_s, eval_s, checkpoint_s, run, once_s=once_s)
    plan = BudgetPlan(budget_s, start_step + steps, step_s, eval_s, checkpoint_s, evaluations, checkpoints, now_s,
                      planned_end(now_s, steps, step_s, evaluations, eval_s, checkpoints, checkpoint_s) + once_s,
                      replan_step(start_step, steps), start_step + steps, start_step=start_step,
                      propagation_s=propagation_s)
    plan = dist.broadcast_object(plan)
    if plan.total_steps <= start_step:
        raise SemiclustError(
            f"the budget of {run.recipe.schedule.budget} leaves no time to train: {now_s:.0f}s went to starting up and "
            f"measuring, a step takes {step_s:.2f}s and an evaluation {eval_s:.1f}s. Give a longer schedule.budget, "
            "or make steps cheaper (smaller crops or batches, a narrower backbone).")
    return plan


def planned_end(now_s: float, steps: int, step_s: float, evaluations: int, eval_s: float, checkpoints: int,
                checkpoint_s: float) -> float:
    """When a plan's run ends (seconds after the process start): its steps, its periodic and final evaluations and
    checkpoints, and the exit."""
    return now_s + steps * step_s + (evaluations + 1) * eval_s + (checkpoints + 1) * checkpoint_s + EXIT_S


def replan_step(start_step: int, steps: int, after: int | None = None, shares_from: int = 0) -> int | None:
    """Where the length is decided next (`next_replan` without the share's index)."""
    return next_replan(start_step, steps, after, shares_from)[0]


def next_replan(start_step: int, steps: int, after: int | None = None, shares_from: int = 0) -> tuple[int | None, int]:
    """The next re-plan point and the index of its share: the first of REPLAN_SHARES[shares_from:] of the run's
    `steps` (counted from `start_step`) at least REPLAN_MIN steps after `after`, the previous decision (the first:
    REPLAN_MIN steps in), before the end; (None, len) where none is. Each share is used once, however the length
    moves. (An evaluation inside a timed stretch is one slow step, which the median leaves out.)"""
    earliest = (start_step if after is None else after) + REPLAN_MIN
    for index in range(shares_from, len(REPLAN_SHARES)):
        at = start_step + round(REPLAN_SHARES[index] * steps)
        at = max(at, earliest) if after is None else at  # the first comes at least REPLAN_MIN steps in
        if at >= earliest:
            return (at, index) if at < start_step + steps - 1 else (None, len(REPLAN_SHARES))
    return None, len(REPLAN_SHARES)


def replanned(plan: BudgetPlan, run: Run, done: int, pace_s: float | None, started: float) -> BudgetPlan:
    """The plan decided again after step `done` from the run's own pace (seconds a step, bookkeeping included; None:
    too few steps were timed, the length stays), recorded with the next point; rank 0's decision on all processes."""
    length = plan.length_from(done)
    now_s = time.time() - started
    decided = plan
    if pace_s is not None:
        once_s = plan.propagation_s if plan.propagation_s and run.method.propagation_pending else 0.0
        steps, evaluations, checkpoints = planned_steps(plan.budget_s, now_s, pace_s, plan.eval_s, plan.checkpoint_s,
                                                        run, done=done, drift=REPLAN_DRIFT, once_s=once_s)
        steps = max(steps, 1, run.numbers.warmup_steps + 1 - done)  # the guard ends a run that is still too slow
        end_s = planned_end(now_s, steps, pace_s, evaluations, plan.eval_s, checkpoints, plan.checkpoint_s) + once_s
        length = done + steps
        decided = dataclasses.replace(plan, step_s=pace_s, evaluations=evaluations, checkpoints=checkpoints,
                                      planned_end_s=end_s)
    replans = [*plan.replans, [done, length]]
    following, share = next_replan(plan.start_step, length - plan.start_step, done, plan.replan_share + 1)
    decided = dataclasses.replace(decided, total_steps=length, replans=replans, replan_at=following,
                                  replan_share=share)
    return dist.broadcast_object(decided)


def retarget(run: Run, total_steps: int) -> None:
    """Give the run its decided length: one change, to the run's numbers, which the schedules, the method, the
    policy, the reporter and the batches read; the file loader restarts to cover the new end."""
    if run.numbers.warmup_steps >= total_steps:
        raise SemiclustError(
            f"the budget of {run.recipe.schedule.budget} allows {total_steps} steps "
            f"({total_steps / run.numbers.steps_per_epoch:.2f} epochs), fewer than the warm-up of "
            f"schedule.warmup_epochs {run.recipe.schedule.warmup_epochs}; shorten the warm-up or give a longer budget.")
    run.numbers.retarget(total_steps)
    run.batches.restart()


def plan_budget(run: Run, files: RunFiles, resumed: bool, started: float, start_step: int,
                stopping: Callable[[], bool] = lambda: False) -> BudgetPlan | None:
    """A budgeted run's length: the one budget.json recorded (a resumed run with the same budget), or a new
    calibration (saved to budget.json by rank 0; `stopping` as in `calibrate`); None without a budget. The run is
    retargeted to it."""
    budget_s = run.recipe.schedule.budget_seconds
    if budget_s is None:
        return None
    plan = BudgetPlan.load(files.budget) if resumed and files.budget.is_file() else None
    if plan is None or plan.budget_s != budget_s:
        plan = calibrate(run, files, budget_s, started, start_step, stopping)
        if dist.is_main():
            plan.save(files.budget)
    retarget(run, plan.length_from(start_step))
    return plan


class BudgetGuard:
    """Watches a budgeted run: if the steps turn out slower than measured, the run ends at the last check
    that still leaves time for its final evaluation and checkpoint, rather than past its budget."""

    def __init__(self, plan: BudgetPlan, started: float, start_step: int):
        self.plan, self.started = plan, started
        self.every = max(1, round(2.0 / max(plan.step_s, 1e-6)))  # a check about every 2 seconds
        self.last_time, self.last_done = time.time(), start_step
        self.pace_from = start_step + PACE_FROM  # the re-plans time the steps after this one
        self.ahead = plan.upcoming(start_step)  # a resume after a re-plan has its length
        self.step_times: list[float] = []
        self.last_step_at: float | None = None

    def step_done(self, done: int) -> None:
        """Called after every step: the time of each step since the previous re-plan (the work between steps
        included: records, checks)."""
        if not self.ahead or done < self.pace_from:
            return
        now = time.perf_counter()
        if self.last_step_at is not None:
            self.step_times.append(now - self.last_step_at)
        self.last_step_at = now

    def replan_due(self, done: int) -> bool:
        """Whether the length is to be decided again (or a recorded re-plan taken) after this step: at the next
        point, or at the next finite step if that one was skipped."""
        return bool(self.ahead) and done >= self.ahead[0]

    def replan(self, run: Run, files: RunFiles, done: int) -> tuple[int, float | None]:
        """The length from here on and the pace it was decided from (None: taken as recorded, or kept). A resume
        takes the recorded decision; else it comes from the median of the steps timed since the previous one (the
        mean of a 5-minute run's steps 10-46 was 7% above the pace of the rest of it), and is recorded in
        budget.json with the next point. Fewer than 3 timed steps keep the length."""
        recorded = [length for at, length in self.plan.replans if at >= self.ahead[0]]
        pace = None
        if recorded:
            length = recorded[0]
        else:
            pace = statistics.median(self.step_times) if len(self.step_times) >= 3 else None
            self.plan = replanned(self.plan, run, done, pace, self.started)
            length = self.plan.total_steps
            if dist.is_main():
                self.plan.save(files.budget)
        if length != run.numbers.total_steps:
            retarget(run, length)
        self.ahead = self.plan.upcoming(done)
        self.step_times, self.last_step_at = [], None
        self.pace_from = done + PACE_FROM  # the next stretch is timed afresh (a retargeted loader refills first)
        return length, pace

    def due(self, done: int) -> bool:
        return done % self.every == 0

    def over(self, done: int) -> bool:
        """Whether another window of checks, at the last window's pace, and the final evaluation and
        checkpoint would no longer fit the budget."""
        now = time.time()
        pace = (now - self.last_time) / max(done - self.last_done, 1)
        self.last_time, self.last_done = now, done
        needed = 1.05 * pace * self.every + self.plan.eval_s + self.plan.checkpoint_s + EXIT_S
        return self.plan.budget_s - (now - self.started) < needed
