"""The fine-tuning stage inside one run (`schedule.finetune`, issue 24): the first stage's cosine ends where the
stage starts, the stage restarts the lr at its own peak and decays it to its own end, its labeled weight applies
from its first step, and a budgeted run stopped before and after the switch resumes bit for bit."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from semiclust.engine import budget as budget_module
from semiclust.engine import signals
from semiclust.engine.budget import BudgetPlan
from semiclust.engine.checkpoint import load_checkpoint
from semiclust.engine.numbers import run_numbers
from semiclust.engine.schedules import Schedules
from semiclust.engine.trainer import train
from semiclust.config.loader import resolve
from tests.engine.test_budget import budgeted, same
from tests.helpers import TINY_RECIPE


def cosine(step, total, start, end):
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(step / total, 1.0)))


def test_the_stage_restarts_the_lr_and_sets_its_labeled_weight():
    raw = copy.deepcopy(TINY_RECIPE)
    raw["schedule"] = {"epochs": 10, "warmup_epochs": 1, "final_lr": 0.001,
                       "finetune": {"share": 0.2, "lr": 0.01, "final_lr": 0.0001, "labeled_weight": 0.5}}
    recipe = resolve(raw)
    numbers = run_numbers(recipe, 96, 1, frozenset())
    schedules = Schedules(recipe, numbers)
    total, warmup, peak = numbers.total_steps, numbers.warmup_steps, numbers.peak_lr
    assert (total, warmup, peak) == (60, 6, 0.05) and schedules.finetune_start == 48
    for step in range(total):
        if step < warmup:
            expected = peak * step / warmup
        elif step < 48:
            expected = cosine(step - warmup, 48 - warmup, peak, 0.001)
        else:
            expected = cosine(step - 48, 12, 0.01, 0.0001)  # lr 0.01 for no reference batch: not scaled
        assert schedules.lr(step) == pytest.approx(expected, abs=1e-12), step
        assert schedules.labeled_weight(step) == (0.5 if step >= 48 else None)
    assert schedules.lr(47) == pytest.approx(0.001, abs=1e-4)  # the first stage has about ended its decay


def test_without_a_stage_the_schedule_is_the_one_it_was():
    raw = copy.deepcopy(TINY_RECIPE)
    raw["schedule"] = {"epochs": 10, "warmup_epochs": 1, "final_lr": 0.001}
    recipe = resolve(raw)
    numbers = run_numbers(recipe, 96, 1, frozenset())
    schedules = Schedules(recipe, numbers)
    from semiclust.engine.schedules import warmup_cosine

    assert schedules.finetune_start == numbers.total_steps
    assert all(schedules.lr(s) == warmup_cosine(s, numbers.total_steps, numbers.warmup_steps, numbers.peak_lr, 0.001)
               for s in range(numbers.total_steps))
    assert all(schedules.labeled_weight(s) is None for s in range(numbers.total_steps))


def test_the_stage_weighs_the_labeled_loss_as_it_says(tmp_path):
    raw = copy.deepcopy(TINY_RECIPE)
    raw["schedule"] = {"epochs": 2, "finetune": {"share": 0.5, "lr": 0.01, "labeled_weight": 1.0}}
    raw["runtime"]["log_every_steps"] = 1
    train(resolve(raw), tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    weights = {r["step"]: r["labeled_weight"] for r in records if r["type"] == "train"}
    assert all(weights[s] == pytest.approx(1.0) for s in range(7, 13))  # steps 6..11 (records count finished steps)
    # before: the row share, 16 labeled rows (8 images and their mixed copies) against 4 crops x 16 unlabeled
    assert all(weights[s] == pytest.approx(16 / (16 + 64)) for s in range(1, 7))


@pytest.mark.parametrize("stage", [{"labeled_weight": 0.5}, {"targets": "propagated", "neighbours": 5}],
                         ids=["labeled_weight", "propagated"])
def test_a_budgeted_run_resumes_bit_identically_across_the_switch(tmp_path, monkeypatch, stage):
    """36 steps (fixed here, so that the runs compare), the stage from step 27: stopped at 20 (before the switch) and
    at 30 (after it), each resumed run ends with the weights, optimiser and generators of the uninterrupted one (and,
    propagating, the same table of targets: made at the switch, or read back from the checkpoint)."""
    threads = torch.get_num_threads()
    recipe = resolve(budgeted("20s", runtime={"threads": 1}, checkpoint={"every_steps": 0},
                              schedule={"finetune": {"share": 0.25, "lr": 0.01, **stage}}))
    monkeypatch.setattr(budget_module, "planned_steps", lambda *a, **k: (36, 0, 0))
    try:
        full = train(recipe, tmp_path / "full")
        plan = BudgetPlan.load(tmp_path / "full" / "budget.json")
        assert plan.total_steps == 36 and not plan.replans
        real = signals.StopRequest.requested
        monkeypatch.setattr(budget_module, "calibrate", lambda run, *a, **k: plan)  # the same length, no polling
        for stop_at in (20, 30):
            calls = {"n": 0}

            def stop_here(self, stop_at=stop_at):
                calls["n"] += 1
                return calls["n"] == stop_at or real.fget(self)

            monkeypatch.setattr(signals.StopRequest, "requested", property(stop_here))
            split = tmp_path / f"split{stop_at}"
            with pytest.raises(Exception, match=f"stopped by .* after step {stop_at}"):
                train(recipe, split)
            monkeypatch.setattr(signals.StopRequest, "requested", real)
            monkeypatch.setattr(budget_module, "calibrate", lambda *a, **k: pytest.fail("a resume must not calibrate"))
            resumed = train(recipe, split, resume=True)
            a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
            assert a.step == b.step == 36 and resumed.steps == 36 - stop_at
            a_dict, b_dict = a.as_dict(), b.as_dict()
            for key in ("method", "optimizer", "augment_rng", "per_rank", "eval"):
                same(a_dict[key], b_dict[key], key)
            monkeypatch.setattr(budget_module, "calibrate", lambda run, *a, **k: plan)
    finally:
        torch.set_num_threads(threads)


def test_pseudo_labels_are_the_confident_classes_of_the_mean_prediction():
    from semiclust.methods.losses import pseudo_label_loss, pseudo_labels

    a = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 3.0]])
    b = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.2], [0.0, 0.0, 5.0]])
    labels, keep = pseudo_labels([a, b], 0.8)
    mean = (a.softmax(1) + b.softmax(1)) / 2
    assert labels.tolist() == mean.argmax(1).tolist() == [0, 2, 2]
    assert keep.tolist() == (mean.max(1).values >= 0.8).tolist() == [True, False, True]
    crops = [torch.randn(3, 3), torch.randn(3, 3)]
    nll = [-torch.log_softmax(c, 1)[torch.arange(3), labels] for c in crops]
    expected = torch.stack([(n * keep.float()).sum() / 2 for n in nll]).mean()
    assert torch.allclose(pseudo_label_loss(crops, labels, keep), expected)
    assert pseudo_label_loss(crops, labels, torch.zeros(3, dtype=torch.bool)).item() == 0.0


@pytest.mark.parametrize("method", ["suave", "daino"])
def test_a_pseudo_label_stage_trains_and_logs_the_share_it_keeps(tmp_path, method):
    raw = copy.deepcopy(TINY_RECIPE)
    raw["method"] = {"name": method}
    raw["schedule"] = {"epochs": 2, "finetune": {"share": 0.5, "lr": 0.01, "targets": "pseudo_labels",
                                                 "threshold": 0.3}}
    raw["runtime"]["log_every_steps"] = 1
    summary = train(resolve(raw), tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    shares = {r["step"]: r.get("pseudo_label_share") for r in records if r["type"] == "train"}
    assert all(shares[s] is None for s in range(1, 7)) and all(0 <= shares[s] <= 1 for s in range(7, 13))
    assert any(shares[s] > 0 for s in range(7, 13)) and summary.result is not None
