"""Label propagation (schedule.finetune.targets: propagated, issue 24): the sparse graph against a dense
construction, conjugate gradients against a direct solve, the propagated classes against the closed form, and a
run whose fine-tuning stage trains towards them."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from semiclust.data.datasets import build_dataset
from semiclust.engine.checkpoint import load_checkpoint
from semiclust.engine.trainer import train
from semiclust.methods.label_propagation import conjugate_gradients, knn_graph, propagate
from semiclust.config.loader import resolve
from tests.helpers import TINY_RECIPE


def dense_normalised(features: torch.Tensor, k: int, power: float) -> torch.Tensor:
    """D^-1/2 (W + W^T) D^-1/2 built densely, W the k most similar others of each row (cosine, cut at 0, ^power)."""
    unit = torch.nn.functional.normalize(features.double(), dim=1)
    similarity = unit @ unit.t()
    similarity.fill_diagonal_(-math.inf)
    top, index = similarity.topk(k, dim=1)
    w = torch.zeros_like(similarity).scatter_(1, index, top.clamp(min=0) ** power)
    w = w + w.t()
    scale = w.sum(dim=1).rsqrt()
    return scale[:, None] * w * scale[None, :]


def test_the_graph_is_the_dense_normalised_symmetric_matrix():
    torch.manual_seed(0)
    features, values = torch.randn(50, 6), torch.randn(50, 3)
    graph = knn_graph(features, k=5, chunk=16)  # chunks that do not divide the rows
    expected = dense_normalised(features, 5, 3.0) @ values.double()
    assert torch.allclose((graph @ values).double(), expected, atol=1e-5)


def test_conjugate_gradients_solve_each_column_as_a_direct_solve_does():
    torch.manual_seed(1)
    s = dense_normalised(torch.randn(40, 4), 6, 3.0).float()
    a = torch.eye(40) - 0.9 * s
    rhs = torch.randn(40, 3)
    rhs[:, 2] = 0  # a column with nothing to solve stays 0
    solved = conjugate_gradients(lambda z: a @ z, rhs, iterations=100, tolerance=1e-8)
    assert torch.allclose(solved, torch.linalg.solve(a.double(), rhs.double()).float(), atol=1e-4)
    assert solved[:, 2].abs().max() == 0


def test_propagated_classes_are_those_of_the_closed_form():
    """Z = (I - alpha S)^-1 Y, Y one-hot rows over each class's count, each column normalised to sum 1."""
    torch.manual_seed(2)
    centres = torch.randn(3, 8) * 3
    truth = torch.arange(60) % 3
    features = centres[truth] + torch.randn(60, 8)
    labeled = torch.tensor([0, 1, 2, 3, 6])  # classes 0, 1, 2, 0, 0: class 0 seeds 3 images
    graph = knn_graph(features, k=6)
    result = propagate(graph, labeled, truth[labeled], 3, alpha=0.99, iterations=200)
    y = torch.zeros(60, 3, dtype=torch.double)
    y[labeled, truth[labeled]] = 1.0 / torch.bincount(truth[labeled]).double()[truth[labeled]]
    z = torch.linalg.solve(torch.eye(60, dtype=torch.double) - 0.99 * dense_normalised(features, 6, 3.0), y)
    z = z.clamp(min=0) / z.clamp(min=0).sum(dim=0, keepdim=True)
    p = z / z.sum(dim=1, keepdim=True)
    expected = p.argmax(dim=1)
    expected[labeled] = truth[labeled]
    assert result.classes.tolist() == expected.tolist()
    assert (result.classes == truth).float().mean() > 0.95  # well-separated blobs: the labels reach their blob
    entropy = -(p * p.clamp(min=1e-30).log()).sum(dim=1)
    confidence = (1 - entropy / math.log(3)).float()
    confidence[labeled] = 1.0
    assert torch.allclose(result.confidence, confidence, atol=1e-3)
    assert result.confidence.min() >= 0 and result.confidence.max() <= 1


def test_a_class_without_labeled_images_takes_no_image():
    features = torch.randn(30, 4)
    labeled, labels = torch.tensor([0, 1]), torch.tensor([0, 0])
    result = propagate(knn_graph(features, 4), labeled, labels, num_classes=2)
    assert result.classes.tolist() == [0] * 30


def propagating_recipe(method: str = "suave") -> dict:
    raw = copy.deepcopy(TINY_RECIPE)
    raw["method"] = {"name": method}
    raw["schedule"] = {"epochs": 2, "finetune": {"share": 0.5, "lr": 0.01, "targets": "propagated", "neighbours": 5}}
    raw["runtime"]["log_every_steps"] = 1
    return raw


@pytest.mark.parametrize("method", ["suave", "daino"])
def test_a_propagated_stage_fills_its_table_at_the_switch_and_trains_towards_it(tmp_path, method):
    summary = train(resolve(propagating_recipe(method)), tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    weights = {r["step"]: r.get("propagated_weight") for r in records if r["type"] == "train"}
    assert all(weights[s] is None for s in range(1, 7))  # records count finished steps: the stage is steps 6..11
    assert all(0 < weights[s] <= 1 for s in range(7, 13))
    final = load_checkpoint(summary.checkpoint)
    classes, filled = final.method["propagation.classes"], final.method["propagation.filled"]
    assert bool(filled) and classes.min() >= 0 and classes.max() < final.classifier.num_classes
    labeled = final.labeled_indices
    recipe = resolve(propagating_recipe(method))
    train_labels = build_dataset(recipe.data.dataset, recipe.data.options).train.labels
    assert classes[labeled].tolist() == train_labels[labeled].tolist()  # a labeled image keeps its label
    assert torch.all(final.method["propagation.confidence"][labeled] == 1)


def test_without_the_option_the_method_has_no_table(tmp_path):
    raw = propagating_recipe()
    raw["schedule"]["finetune"]["targets"] = "pseudo_labels"
    summary = train(resolve(raw), tmp_path / "run")
    assert not any(key.startswith("propagation.") for key in load_checkpoint(summary.checkpoint).method)


def test_a_budget_sets_the_propagation_aside_until_its_table_is_filled(tmp_path):
    """planned_steps keeps `once_s` out of the steps' time (an independent count), and a budgeted run that propagates
    records the estimate and still ends inside its budget, its table filled."""
    from semiclust.engine import budget as budget_module
    from semiclust.engine.budget import BudgetPlan, planned_steps
    from tests.engine.test_budget import budgeted

    recipe = resolve({**budgeted(), "eval": {"every_epochs": 0}, "checkpoint": {"every_epochs": 0, "every_steps": 0}})

    class Numbers:
        steps_per_epoch = 6

    run = type("R", (), {"recipe": recipe, "numbers": Numbers})()
    plain, _, _ = planned_steps(110.0, 10.0, 0.1, 0.0, 0.0, run)
    reserved, _, _ = planned_steps(110.0, 10.0, 0.1, 0.0, 0.0, run, once_s=20.0)

    def total(n: int, once: float) -> float:
        return n * 0.1 * 1.02 + budget_module.EXIT_S + once

    assert total(plain, 0) <= 100.0 < total(plain + 1, 0)
    assert total(reserved, 20.0) <= 100.0 < total(reserved + 1, 20.0) and reserved < plain
    raw = propagating_recipe()
    raw["schedule"] = {"budget": "20s", "finetune": {"share": 0.3, "lr": 0.01, "targets": "propagated",
                                                     "neighbours": 5}}
    summary = train(resolve(raw), tmp_path / "run")
    plan = BudgetPlan.load(tmp_path / "run" / "budget.json")
    assert plan.propagation_s > 0
    assert bool(load_checkpoint(summary.checkpoint).method["propagation.filled"])


@pytest.mark.parametrize("method", ["swav", "supervised"])
def test_a_method_without_both_streams_cannot_propagate(tmp_path, method):
    from semiclust.errors import SemiclustError

    raw = propagating_recipe(method)
    with pytest.raises(SemiclustError, match=f"method '{method}' trains on .* images only"):
        train(resolve(raw), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints" / "final.pt").exists()


def test_the_tables_readiness_follows_fill_and_every_load():
    """`ready` is kept on the host (no device read a step) and read again from `filled` whenever a state is loaded."""
    from semiclust.methods.label_propagation import Propagated, PropagatedTargets

    empty, table = PropagatedTargets(4), PropagatedTargets(4)
    assert not table.ready
    table.fill(torch.tensor([0, 2]), Propagated(torch.tensor([1, 3]), torch.tensor([0.5, 1.0])))
    assert table.ready and table.classes.tolist() == [1, 0, 3, 0] and table.confidence.tolist() == [0.5, 0, 1.0, 0]
    fresh = PropagatedTargets(4)
    assert not fresh.ready  # read (and kept) before the load
    fresh.load_state_dict(table.state_dict())
    assert fresh.ready and fresh.classes.tolist() == [1, 0, 3, 0]
    fresh.load_state_dict(empty.state_dict())
    assert not fresh.ready
