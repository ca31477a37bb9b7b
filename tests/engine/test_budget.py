"""A wall-time budget: durations parse, the calibration fixes the steps (recorded, reused on resume), the plan leaves
room for evaluations and checkpoints, the command ends inside its budget, and a budgeted run resumes bit-identically.

The timed runs use one CPU thread: with two threads on a shared 2-core machine a step can take 50 times longer
whenever another process holds a core, and these tests are about the budget, not about that contention."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from semiclust.cli import main
from semiclust.engine import budget as budget_module
from semiclust.engine.budget import BudgetPlan, planned_steps
from semiclust.engine.checkpoint import load_checkpoint
from semiclust.engine.trainer import train
from semiclust.errors import SemiclustError
from semiclust.config.loader import resolve
from semiclust.config.schema import duration_seconds
from tests.helpers import TINY_RECIPE

ROOT = Path(__file__).resolve().parents[2]


def budgeted(budget: str = "20s", **changes) -> dict:
    raw = copy.deepcopy(TINY_RECIPE)
    raw["schedule"] = {"budget": budget}
    raw["checkpoint"] = {"every_steps": 5, "every_epochs": 0, "keep_last": 10}
    for key, value in changes.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


@pytest.fixture
def restore_threads():
    """The runs below set one torch thread (runtime.threads); the tests after them get the count back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def same(a, b, where: str = "checkpoint") -> None:
    """Equal nested checkpoint contents: tensors bit for bit (torch.equal), everything else with ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_durations_parse_and_bad_ones_are_named():
    """'90s', '10m', '1h30m' and friends are seconds; anything else is a ValueError naming it and showing the form."""
    assert [duration_seconds(t) for t in ("90s", "10m", "1h30m", "30m", "2h", "1.5h", " 1m30s ")] == [
        90, 600, 5400, 1800, 7200, 5400, 90]
    for bad in ("30 minutes", "m", "", "1x", "-5m", "1m30h", "1h 2d"):
        with pytest.raises(ValueError, match=rf"'{re.escape(bad)}' is not a duration; write e\.g\. 30m"):
            duration_seconds(bad)
    with pytest.raises(ValueError, match=r"'10' has no unit, so it is not a duration; write e\.g\. 10m"):
        duration_seconds("10")  # a bare number names what is missing


def test_recipes_take_epochs_or_a_budget_of_at_least_ten_seconds(capsys, tmp_path):
    """The schedule has one length (epochs or budget); a bad or too short --budget is a one-paragraph exit 2."""
    both = budgeted()
    both["schedule"]["epochs"] = 3
    with pytest.raises(SemiclustError, match="give schedule.epochs or schedule.budget"):
        resolve(both)
    with pytest.raises(SemiclustError, match="shorter than 10 seconds"):
        resolve(budgeted("9s"))
    assert resolve(budgeted("10m")).schedule.budget_seconds == 600
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY_RECIPE))
    for bad, says in (("ten minutes", "'ten minutes' is not a duration"), ("5s", "shorter than 10 seconds")):
        with pytest.raises(SystemExit) as info:
            main(["train", str(recipe), "--out", str(tmp_path / "run"), "--budget", bad])
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.startswith("error: --budget:") and says in err, err  # the option typed
        assert "Traceback" not in err and err.strip().count("\n\n") == 0
    assert not (tmp_path / "run").exists()


def test_planned_steps_leave_room_for_evaluations_checkpoints_and_the_exit():
    """The plan is the most steps that fit with their evaluations, checkpoints and the exit; none without room."""
    # an independent count: 100 s left after 10 s of start-up, 0.1 s steps, 6 an epoch, an evaluation (2 s) every
    # epoch, a checkpoint (1 s) every 2 epochs, steps planned 2% slower than measured
    recipe = resolve({**budgeted(), "eval": {"every_epochs": 1}, "checkpoint": {"every_epochs": 2, "every_steps": 0}})

    class Numbers:
        steps_per_epoch = 6

    run = type("R", (), {"recipe": recipe, "numbers": Numbers})()
    steps, evaluations, checkpoints = planned_steps(110.0, 10.0, 0.1, 2.0, 1.0, run)

    def total(n: int) -> float:
        return n * 0.1 * 1.02 + (n // 6) * 2.0 + (n // 12) * 1.0 + 2.0 + 1.0 + budget_module.EXIT_S

    assert total(steps) <= 100.0 < total(steps + 1)
    assert (evaluations, checkpoints) == (steps // 6, steps // 12) and evaluations > 0 and checkpoints > 0
    assert steps < (100.0 - 3.0 - budget_module.EXIT_S) / 0.1  # fewer than the steps alone would allow
    assert planned_steps(110.0, 105.0, 0.1, 2.0, 1.0, run) == (0, 0, 0)  # 5 s left: only the final ones and the exit


def test_planned_steps_count_step_and_minute_checkpoints():
    """every_steps and every_minutes checkpoints are counted in the plan, so they cannot push it past the budget."""
    recipe = resolve({**budgeted("10m"), "eval": {"every_epochs": 0},
                      "checkpoint": {"every_steps": 50, "every_epochs": 0, "every_minutes": 2}})

    class Numbers:
        steps_per_epoch = 6

    run = type("R", (), {"recipe": recipe, "numbers": Numbers})()
    steps, evaluations, checkpoints = planned_steps(600.0, 20.0, 0.5, 0.0, 3.0, run)
    assert evaluations == 0 and checkpoints == steps // 50 + 5

    def total(n: int) -> float:
        return n * 0.5 * 1.02 + (n // 50 + 5) * 3.0 + 3.0 + budget_module.EXIT_S

    assert total(steps) <= 580.0 < total(steps + 1)


def fake_clock(monkeypatch) -> dict:
    """budget.py's time.time and time.perf_counter both read clock["now"] (from 1000 s), which the test moves."""
    clock = {"now": 1000.0}
    monkeypatch.setattr(budget_module, "time", type("Clock", (), {"time": staticmethod(lambda: clock["now"]),
                                                                  "perf_counter": staticmethod(lambda: clock["now"])}))
    return clock


def test_the_guard_ends_a_run_whose_steps_slow_down_with_time_for_the_final_work(monkeypatch):
    """Steps 5x slower than planned: the guard stops with time left for the final work; at pace it never stops."""
    clock = fake_clock(monkeypatch)
    plan = BudgetPlan(100.0, 1000, 0.1, 1.0, 1.0, 0, 0, 0.0, 98.0)
    guard = budget_module.BudgetGuard(plan, 1000.0, 0)
    assert guard.every == 20 and not guard.due(19) and guard.due(20)
    done, stopped_at = 0, None
    while done < plan.total_steps:
        done += 1
        clock["now"] += 0.1 if done <= 20 else 0.5
        if guard.due(done) and guard.over(done):
            stopped_at = clock["now"] - 1000.0
            break
    final_work = plan.eval_s + plan.checkpoint_s + budget_module.EXIT_S
    window = 1.05 * 0.5 * guard.every
    assert stopped_at is not None and plan.budget_s - window - 10.0 < stopped_at <= plan.budget_s - final_work
    clock["now"] = 1000.0
    steady = budget_module.BudgetGuard(plan, 1000.0, 0)
    for done in range(20, 900, 20):  # at the planned pace, up to 88 s of the 100 s budget
        clock["now"] = 1000.0 + 0.1 * done
        assert not steady.over(done), done


@pytest.mark.slow
def test_a_budgeted_command_ends_inside_its_budget(tmp_path):
    """A `semiclust train --budget 20s` process ends inside its budget, by its own record and the clock around it, and
    prints each re-plan."""
    recipe = tmp_path / "small.yaml"
    raw = copy.deepcopy(TINY_RECIPE)
    raw["data"]["options"].update({"size": 16, "train_per_class": 100})
    raw["data"]["unlabeled"]["crops"][0]["size"], raw["data"]["unlabeled"]["crops"][1]["size"] = 16, 8
    raw["data"].update({"labeled": {"size": 16, "flip": 0.0}, "eval": {"size": 16},
                        "batch": {"unlabeled": 64, "labeled": 8}})
    raw["runtime"].update({"log_every_steps": 20, "threads": 1})
    raw.update({"eval": {"every_epochs": 20}, "checkpoint": {"every_steps": 100, "every_epochs": 0}})
    recipe.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "semiclust", "train", str(recipe), "--out", str(tmp_path / "run"),
                           "--budget", "20s"], env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    plan = BudgetPlan.load(tmp_path / "run" / "budget.json")
    assert plan.budget_s == 20 and plan.total_steps > 0 and plan.step_s > 0
    used = re.search(r"budget: [\d.]+ of [\d.]+ minutes \(([\d.]+)%\)", done.stdout)
    assert used and float(used.group(1)) <= 100.0, done.stdout[-1000:]  # the run's own clock, from the process start
    # around the subprocess: the budget, plus 3% for what the process's own clock cannot see (fork and exec before
    # its recorded start, the interpreter's exit after the last message; EXIT_S inside the budget is for those)
    assert took <= 1.03 * plan.budget_s, (took, plan)
    assert plan.planned_end_s >= 0.85 * plan.budget_s and plan.planned_end_s <= plan.budget_s, plan
    # every decision is shown, with runtime.progress none too (the length changes under the user's eyes)
    assert plan.replans and all(f"re-planned at step {at} " in done.stdout for at, _ in plan.replans), done.stdout
    final = load_checkpoint(tmp_path / "run" / "checkpoints" / "final.pt").step
    cut = "to stay inside its budget" in done.stdout + done.stderr
    assert final == plan.total_steps or (cut and 0 < final < plan.total_steps), (final, plan, done.stdout[-1000:])


def test_a_budgeted_run_resumes_bit_identically(tmp_path, monkeypatch, restore_threads):
    """Stopped at step 12 (before its first re-plan, at step 40), 60 (before the second, at 84) and 100 (before the
    third, at 126) and resumed, a budgeted run ends bit-identical to one run uninterrupted: every resume runs the
    length in force at its step and makes the decisions its run did not reach; a resume whose budget.json holds
    decisions past its checkpoint (a run that stopped between a re-plan and its next checkpoint) takes them."""
    # The uninterrupted run calibrates with real steps, the interrupted ones take none (their plan is given): equal
    # weights, optimiser and generators also show that the calibration steps leave no trace.
    recipe = resolve(budgeted("20s", runtime={"threads": 1}, checkpoint={"every_steps": 0}))
    calibration_steps, decided = [], {}
    real_step, real_plan = budget_module.train_step, budget_module.planned_steps
    lengths = {0: 60, 40: 240, 84: 180, 126: 180}  # 35% of 240, then 70% of 180; the third keeps the length

    def counted_step(run, step):
        calibration_steps.append(step)
        return real_step(run, step)

    def fixed_lengths(*args, **kwargs):  # the real decisions, then fixed lengths: the test must not depend on the speed
        done = kwargs.get("done", 0)
        decided[done] = real_plan(*args, **kwargs)[0]
        return lengths[done] - done, 0, 0

    monkeypatch.setattr(budget_module, "train_step", counted_step)
    monkeypatch.setattr(budget_module, "planned_steps", fixed_lengths)
    full = train(recipe, tmp_path / "full")
    plan = BudgetPlan.load(tmp_path / "full" / "budget.json")
    assert (plan.first_total_steps, plan.replans, plan.replan_at, plan.total_steps) == (
        60, [[40, 240], [84, 180], [126, 180]], None, 180)
    assert decided.keys() == lengths.keys() and decided[0] > 60 and len(calibration_steps) >= 13
    first_plan = dataclasses.replace(plan, total_steps=60, replans=[], replan_at=40, replan_share=0)

    from semiclust.engine import signals

    real = signals.StopRequest.requested
    for stop_at in (12, 60, 100):
        calls = {"n": 0}

        def stop_here(self, stop_at=stop_at):
            calls["n"] += 1
            return calls["n"] == stop_at or real.fget(self)

        monkeypatch.setattr(signals.StopRequest, "requested", property(stop_here))
        monkeypatch.setattr(budget_module, "calibrate", lambda run, *a, **k: first_plan)  # the same length, again
        monkeypatch.setattr(budget_module, "planned_steps", fixed_lengths)
        split = tmp_path / f"split{stop_at}"
        with pytest.raises(SemiclustError, match=f"stopped by .* after step {stop_at}"):
            train(recipe, split)
        assert load_checkpoint(split / "checkpoints" / f"step_{stop_at:09d}.pt").step == stop_at
        before = BudgetPlan.load(split / "budget.json")
        assert [at for at, _ in before.replans] == [at for at in (40, 84, 126) if at <= stop_at]
        monkeypatch.setattr(signals.StopRequest, "requested", real)
        if stop_at == 12:  # the decisions are recorded past the checkpoint: taken as they are, never decided again
            (split / "budget.json").write_text((tmp_path / "full" / "budget.json").read_text())
            monkeypatch.setattr(budget_module, "planned_steps", lambda *a, **k: pytest.fail("recorded: not re-decided"))
        monkeypatch.setattr(budget_module, "calibrate", lambda *a, **k: pytest.fail("a resume must not calibrate again"))
        resumed = train(recipe, split, resume=True)
        a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
        assert a.step == b.step == 180 and resumed.steps == 180 - stop_at
        assert a.method.keys() == b.method.keys() and len(a.method) > 0
        for key, value in a.method.items():
            assert torch.equal(value, b.method[key]), key
        a_dict, b_dict = a.as_dict(), b.as_dict()
        for key in ("optimizer", "augment_rng", "per_rank", "eval"):
            same(a_dict[key], b_dict[key], key)
        after = BudgetPlan.load(split / "budget.json")  # the decisions not reached before the stop: made by the resume
        assert after == plan or dataclasses.replace(after, step_s=plan.step_s, planned_end_s=plan.planned_end_s,
                                                    started_s=plan.started_s) == plan


def fake_run(total_steps: int, steps_per_epoch: int = 1000, every_epochs: int = 0):
    """The parts of a Run that planning reads: recipe.eval/checkpoint and numbers (no evaluations, no checkpoints)."""
    from types import SimpleNamespace

    recipe = SimpleNamespace(eval=SimpleNamespace(every_epochs=every_epochs),
                             checkpoint=SimpleNamespace(every_epochs=0, every_steps=0, every_minutes=0))
    numbers = SimpleNamespace(steps_per_epoch=steps_per_epoch, total_steps=total_steps, warmup_steps=0)
    return SimpleNamespace(recipe=recipe, numbers=numbers)


def test_the_re_plan_fits_the_steps_to_the_runs_own_pace(monkeypatch, tmp_path):
    """The calibration measured 0.2 s a step, the run takes 0.1 (and 1 s for three early steps): after `replan_at` the
    length is decided again from the run's own pace, the median step, and fills the budget (within REPLAN_DRIFT);
    budget.json records both lengths."""
    clock = fake_clock(monkeypatch)
    retargeted = []
    monkeypatch.setattr(budget_module, "retarget", lambda run, total: retargeted.append(total))
    run = fake_run(total_steps=480)
    plan = BudgetPlan(100.0, 480, 0.2, 0.0, 0.0, 0, 0, 2.0, 100.0, replan_at=budget_module.replan_step(0, 480),
                      first_total_steps=480)
    assert plan.replan_at == 40 and plan.length_from(0) == 480
    guard = budget_module.BudgetGuard(plan, 1000.0, 0)
    clock["now"] = 1002.0
    for done in range(1, plan.replan_at + 1):
        clock["now"] += 1.0 if 12 <= done <= 14 else 0.1
        guard.step_done(done)
        assert guard.replan_due(done) == (done >= 40)
    files = type("Files", (), {"budget": tmp_path / "budget.json"})()
    length, pace = guard.replan(run, files, 40)
    assert not guard.replan_due(41)  # once here; the next point is 35% into the new length
    left = 100.0 - (clock["now"] - 1000.0) - budget_module.EXIT_S
    decided = guard.plan
    assert decided.replanned and decided.first_total_steps == 480 and retargeted == [length] == [decided.total_steps]
    assert pace == decided.step_s == pytest.approx(0.1)
    assert (length - 40) == int(left / (0.1 * (1 + budget_module.REPLAN_DRIFT)))
    assert decided.replans == [[40, length]] and decided.replan_at == round(0.35 * length)
    recorded = BudgetPlan.load(tmp_path / "budget.json")
    assert recorded == decided and recorded.length_from(10) == 480 and recorded.length_from(40) == length


def test_later_re_plans_follow_the_pace_since_the_previous_one(monkeypatch, tmp_path):
    """The steps slow from 0.1 s to 0.12 s after the first re-plan and speed up again after the second: each re-plan
    (6%, 35%, 70% in) fits the length to the pace since the previous one, and the run fills its budget; a re-plan
    with too few timed steps keeps the length."""
    clock = fake_clock(monkeypatch)
    monkeypatch.setattr(budget_module, "retarget", lambda run, total: None)
    run, files = fake_run(total_steps=900), type("Files", (), {"budget": tmp_path / "budget.json"})()
    plan = BudgetPlan(100.0, 900, 0.1, 0.0, 0.0, 0, 0, 2.0, 100.0, replan_at=54, first_total_steps=900)
    guard = budget_module.BudgetGuard(plan, 1000.0, 0)
    clock["now"] = 1002.0
    for done in range(1, 1000):
        clock["now"] += 0.12 if 54 < done <= 333 else 0.1
        guard.step_done(done)
        if guard.replan_due(done):
            run.numbers.total_steps, _ = guard.replan(run, files, done)
        if done >= run.numbers.total_steps:
            break
    (first_at, first), (second_at, second), (third_at, third) = guard.plan.replans
    assert (first_at, second_at, third_at) == (54, round(0.35 * first), round(0.70 * second)) == (54, 333, 563)
    assert guard.plan.step_s == pytest.approx(0.1) and guard.plan.replan_at is None
    slow_end = 2.0 + 54 * 0.1 + (333 - 54) * 0.12
    assert second - 333 == int((100.0 - slow_end - budget_module.EXIT_S) / (0.12 * (1 + budget_module.REPLAN_DRIFT)))
    fast_end = slow_end + (563 - 333) * 0.1
    assert third - 563 == int((100.0 - fast_end - budget_module.EXIT_S) / (0.1 * (1 + budget_module.REPLAN_DRIFT)))
    assert 98.0 <= fast_end + (third - 563) * 0.1 + budget_module.EXIT_S <= 100.0
    run.numbers.total_steps = 900
    untimed = budget_module.BudgetGuard(dataclasses.replace(plan, replans=[]), 1000.0, 50)  # resumed at 50, no step
    assert untimed.replan_due(54) and untimed.replan(run, files, 54) == (900, None)
    assert untimed.plan.replans == [[54, 900]] and untimed.plan.replan_at == round(0.35 * 900)


def test_each_re_plan_says_what_it_decided_and_from_what():
    """The line of a re-plan: the new length or the kept one, and the pace it came from or why there was none."""
    from semiclust.engine.trainer import replan_note

    assert replan_note("5m", 49, 813, 855, 0.3456) == (
        "budget 5m: re-planned at step 49 from the run's own pace (0.346s a step): 855 steps instead of 813 (budget.json)")
    assert replan_note("30m", 1675, 4787, 4787, 0.301).endswith("(0.301s a step): keeps its 4787 steps (budget.json)")
    assert "at step 54 as budget.json recorded it or with too few timed steps" in replan_note("1m", 54, 900, 900, None)


def test_a_budget_json_of_one_re_plan_reads_as_its_record(tmp_path):
    """budget.json written before later re-plans existed (`replan_at` + `replanned`) keeps its lengths on resume."""
    old = {"budget_s": 300.0, "total_steps": 896, "step_s": 0.3, "eval_s": 0.8, "checkpoint_s": 0.01, "evaluations": 0,
           "checkpoints": 0, "started_s": 9.0, "planned_end_s": 297.0, "replan_at": 42, "replanned": True,
           "first_total_steps": 702}
    (tmp_path / "budget.json").write_text(json.dumps(old))
    plan = BudgetPlan.load(tmp_path / "budget.json")
    assert (plan.replans, plan.replan_at, plan.length_from(41), plan.length_from(42)) == ([[42, 896]], None, 702, 896)
    assert plan.upcoming(10) == [42] and plan.upcoming(42) == []


def test_the_re_plans_come_6_35_and_70_percent_in_and_not_in_tiny_runs():
    assert budget_module.replan_step(0, 2000) == 120 and budget_module.replan_step(300, 2000) == 420
    assert [budget_module.replan_step(0, 2000, after) for after in (120, 700, 1400)] == [700, 1400, None]
    assert budget_module.replan_step(0, 2000, after=680) == 1400  # 35% in is too close after a decision at 680
    assert budget_module.next_replan(0, 150, after=60, shares_from=1) == (105, 2)  # 35% of 150 is before 60 + 40
    assert budget_module.replan_step(0, 900, after=563, shares_from=3) is None  # each share once: the run grew to 900
    assert budget_module.replan_step(0, 100) == 40  # at least 40 steps in
    assert budget_module.replan_step(0, 41) is None  # 40 steps in would leave no step to re-plan
