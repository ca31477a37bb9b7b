"""The release's remaining recipe parts, each against an independent calculation: Suave's unlabeled mixup
(the mixed view's target, its weight in the row-count total, and its absence from the targets), Daino's
prototype magnitude g in the decayed group, and drop path off in the Daino recipes as the release ran them."""
import copy

import pytest
import torch

from semiclust.engine.optim import parameter_groups
from tests.methods.test_methods import B, K, bn_free_raw, build, make_batch, recorded_targets


def by_hand_cross_entropy(target: torch.Tensor, scores: torch.Tensor, tau: float) -> float:
    """mean over rows of -sum_k target_k log softmax(scores / tau)_k, in float64 on plain lists."""
    total = 0.0
    for t_row, s_row in zip(target.double().tolist(), scores.double().tolist()):
        peak = max(s / tau for s in s_row)
        log_norm = peak + torch.tensor([s / tau - peak for s in s_row]).double().exp().sum().log().item()
        total += -sum(t * (s / tau - log_norm) for t, s in zip(t_row, s_row))
    return total / len(target)


def mixed_batch(lam: float = 0.3):
    batch = make_batch(seed=1)
    batch.mixed = lam * batch.unlabeled[0] + (1 - lam) * batch.unlabeled[1].flip(0)
    batch.mixed_lambda = lam
    return batch


@pytest.mark.parametrize("weight, mixed_rows", [("views", 1), ("rows", B)])
def test_mixed_view_target_and_weight_match_an_independent_calculation(weight, mixed_rows):
    """Target lam * q1 + (1 - lam) * reversed(q2), prediction at tau; counted as 1 row (views, the release) or B."""
    method = build("suave", bn_free_raw(), unlabeled_mixup={"enabled": True, "weight": weight})
    batch, tau = mixed_batch(), method.spec.temperature
    captured, original = {}, method.targets
    method.targets = lambda *a, **k: captured.setdefault("q", original(*a, **k))
    result = method.training_step(batch, 0)
    targets = captured["q"]
    with torch.no_grad():  # BatchNorm-free, so the mixed view's scores do not depend on its batch neighbours
        _, scores = method.student([batch.mixed])
    target = 0.3 * targets[0] + 0.7 * targets[1].flip(0)
    expected_mixed = by_hand_cross_entropy(target, scores, tau)
    assert result.parts["loss_mixed"].item() == pytest.approx(expected_mixed, rel=1e-5)
    n_labeled, n_unlabeled = len(batch.labeled), B * len(batch.unlabeled)
    unlabeled = (n_unlabeled * result.parts["loss_unlabeled"].item() + mixed_rows * expected_mixed) / (
        n_unlabeled + mixed_rows)
    w = n_labeled / (n_labeled + n_unlabeled + mixed_rows)
    expected = w * result.parts["loss_labeled"].item() + (1 - w) * unlabeled
    assert result.parts["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_mixed_view_never_makes_targets_nor_enters_the_queue_or_the_swapped_loss():
    """With and without the mixed view (BatchNorm-free network): the same targets, queue and swapped loss."""
    with_mix = build("suave", bn_free_raw(), unlabeled_mixup={"enabled": True}, queue={"length": 32})
    without = build("suave", bn_free_raw(), queue={"length": 32})
    without.load_state_dict(with_mix.state_dict())
    for step in range(3):
        batch = mixed_batch()
        plain = copy.copy(batch)
        plain.mixed = None
        first, second = recorded_targets(with_mix, batch, step), recorded_targets(without, plain, step)
        for a, b in zip(first, second):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(with_mix.queue.embeddings, without.queue.embeddings, rtol=0, atol=0)
    a, b = with_mix.training_step(mixed_batch(), 3), without.training_step(make_batch(seed=1), 3)
    torch.testing.assert_close(a.parts["loss_unlabeled"], b.parts["loss_unlabeled"], rtol=0, atol=0)
    assert "loss_mixed" in a.parts and "loss_mixed" not in b.parts


def test_the_mixed_view_shares_the_backbone_call_after_the_target_crops():
    """The crop groups of the single backbone pass: labeled, the target crops, the mixed view, the others."""
    from semiclust.methods.base import GroupLayout

    batch = mixed_batch()
    layout = GroupLayout.of(batch, labels=True, unlabeled=True, target_crops=2)
    expected = [batch.labeled, *batch.unlabeled[:2], batch.mixed, *batch.unlabeled[2:]]
    assert len(layout.groups) == len(expected) and all(g is e for g, e in zip(layout.groups, expected))
    sizes = [len(g) for g in expected]
    pieces = layout.split(torch.arange(sum(sizes)).float()[:, None], torch.arange(sum(sizes)).float()[:, None])
    assert pieces.mixed.flatten().tolist() == list(range(8 + 2 * B, 8 + 3 * B))
    assert [p[0].item() for p in pieces.scores] == [8, 8 + B, 8 + 3 * B, 8 + 4 * B]


def weight_decay_of(groups: list[dict], parameter: torch.nn.Parameter) -> float | None:
    return next(g.get("weight_decay") for g in groups if any(p is parameter for p in g["params"]))


@pytest.mark.parametrize("decayed", [False, True])
def test_daino_prototype_magnitude_is_decayed_only_when_asked(decayed):
    """The release's weight_g has shape (K, 1) and falls in the decayed group; semiclust's default keeps it out."""
    from tests.helpers import TINY_RECIPE, make_recipe
    from semiclust.engine.setup import build_method

    raw = copy.deepcopy(TINY_RECIPE)
    raw["optim"]["decay_prototype_magnitude"] = decayed
    raw["optim"]["weight_decay"] = 0.04
    recipe = make_recipe(raw, name="daino")
    method = build_method(recipe, num_classes=K, in_chans=1, steps_per_epoch=3)
    g = dict(method.student.named_parameters())["prototypes.g"]
    groups = parameter_groups(method.student, recipe.optim)
    assert weight_decay_of(groups, g) == (None if decayed else 0.0)  # None: the optimiser's own (0.04) applies
    bias = next(p for n, p in method.student.named_parameters() if n.endswith("bias"))
    assert weight_decay_of(groups, bias) == 0.0  # biases stay undecayed either way


@pytest.mark.parametrize("name", ["daino_vits_in1k_1pct", "daino_vits_in1k_10pct", "dino_vits_in1k_10pct"])
def test_daino_imagenet_recipes_compute_what_the_release_computed(name):
    """The release's student runs in eval mode, so its DropPath 0.1 never acts: the recipes say drop path 0, name
    the documented 0.1 in a comment, and decay g as the release does."""
    from semiclust.config.loader import find_recipe, load_recipe

    recipe = load_recipe(name, [])
    assert recipe.model.backbone.kwargs.get("drop_path_rate") == 0.0
    assert recipe.optim.decay_prototype_magnitude is True
    text = find_recipe(name).read_text()
    assert "eval mode" in text and "0.1" in text


def test_prototype_magnitude_changes_under_weight_decay_alone():
    """A zero-gradient SGD step with weight decay shrinks g only when it is in the decayed group."""
    from tests.helpers import TINY_RECIPE, make_recipe
    from semiclust.engine.optim import build_optimizer
    from semiclust.engine.setup import build_method

    moved = {}
    for decayed in (False, True):
        raw = copy.deepcopy(TINY_RECIPE)
        raw["optim"].update(decay_prototype_magnitude=decayed, weight_decay=0.5, momentum=0.0)
        recipe = make_recipe(raw, name="daino")
        torch.manual_seed(0)
        method = build_method(recipe, num_classes=K, in_chans=1, steps_per_epoch=3)
        g = dict(method.student.named_parameters())["prototypes.g"]
        optimizer = build_optimizer(method.student, recipe.optim, lr=0.1)
        before = g.detach().clone()
        for p in method.student.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        moved[decayed] = g.detach()
        if decayed:
            torch.testing.assert_close(g.detach(), before * (1 - 0.1 * 0.5))
        else:
            assert torch.equal(g.detach(), before)
    assert not torch.equal(moved[False], moved[True])


def test_unlabeled_mixup_needs_two_target_crops_and_the_unlabeled_stream():
    from semiclust.errors import SemiclustError
    from tests.helpers import make_recipe

    with pytest.raises(SemiclustError, match="unlabeled_mixup"):
        make_recipe(name="supervised", unlabeled_mixup={"enabled": True})
    with pytest.raises(SemiclustError, match="unlabeled_mixup"):
        make_recipe(name="suave", unlabeled_mixup={"enabled": True}, target_crops=1)
