"""Method invariants: the queue, no label leakage into targets, prototype norms, Daino's trainable g."""
import copy

import pytest
import torch
import torch.nn.functional as F

from semiclust.assign.sinkhorn import sinkhorn
from semiclust.engine.optim import build_optimizer
from semiclust.engine.setup import build_method
from semiclust.methods import StepBatch
from tests.helpers import TINY_RECIPE, make_recipe

B, K = 16, 4


def bn_free_raw() -> dict:
    raw = copy.deepcopy(TINY_RECIPE)
    raw["model"]["backbone"]["kwargs"]["norm"] = "none"
    raw["model"]["head"]["batchnorm"] = False
    return raw


def build(name: str, raw: dict | None = None, **method_changes):
    torch.manual_seed(0)
    recipe = make_recipe(raw, name=name, **method_changes)
    return build_method(recipe, num_classes=K, in_chans=1, steps_per_epoch=3)


def make_batch(seed: int = 0, labeled_seed: int = 100) -> StepBatch:
    g = torch.Generator().manual_seed(seed)
    unlabeled = [torch.randn(B, 1, 8, 8, generator=g) for _ in range(2)]
    unlabeled += [torch.randn(B, 1, 4, 4, generator=g) for _ in range(2)]
    gl = torch.Generator().manual_seed(labeled_seed)
    labeled = torch.randn(8, 1, 8, 8, generator=gl) + 3.0
    targets = F.one_hot(torch.randint(K, (8,), generator=gl), K).float()
    return StepBatch(unlabeled=unlabeled, labeled=labeled, labeled_targets=targets)


def recorded_targets(method, batch, step=0):
    captured = {}
    original = method.targets

    def spy(*args, **kwargs):
        captured["targets"] = original(*args, **kwargs)
        return captured["targets"]

    method.targets = spy
    method.training_step(batch, step)
    return captured["targets"]


@pytest.mark.parametrize("name, raw", [("suave", bn_free_raw()), ("daino", bn_free_raw()), ("daino", None)])
def test_perturbing_labeled_images_leaves_unlabeled_targets_unchanged(name, raw):
    """Labeled images never produce targets. (Suave shares BatchNorm statistics between labeled and
    unlabeled crops, as the release does, so its check uses a BatchNorm-free network; Daino's
    targets come from the teacher, which never sees labeled images, so BatchNorm is fine there.)"""
    method = build(name, raw, **({"queue": {"length": 32}} if name == "suave" else {}))
    twin = copy.deepcopy(method)
    batch = make_batch()
    perturbed = make_batch(labeled_seed=999)
    perturbed.labeled = perturbed.labeled * -5.0
    for step in range(3):  # three steps, so the Suave queue fills and is used
        first, second = recorded_targets(method, batch, step), recorded_targets(twin, perturbed, step)
        for a, b in zip(first, second):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    if name == "suave":
        torch.testing.assert_close(method.queue.embeddings, twin.queue.embeddings, rtol=0, atol=0)
    else:
        torch.testing.assert_close(method.assigner.center, twin.assigner.center, rtol=0, atol=0)


def test_queue_is_used_only_once_full():
    method = build("suave", bn_free_raw(), queue={"length": 32})
    prototypes = method.student.prototypes.unit_weight().detach()
    expected_filled = [16, 32, 32]
    for step in range(3):
        batch = make_batch(seed=step)  # different images each step, so the queue adds information
        queue_before = method.queue.embeddings.clone()
        full_before = method.queue.full
        targets = recorded_targets(method, batch, step)
        embeddings, scores = method.student.forward_groups(batch.unlabeled[:1])
        alone = sinkhorn(scores.detach(), 0.05, 3)
        if full_before:
            with_queue = sinkhorn(torch.cat([queue_before[0] @ prototypes.t(), scores.detach()]), 0.05, 3)[-B:]
            torch.testing.assert_close(targets[0], with_queue)
            assert not torch.allclose(targets[0], alone)
        else:
            torch.testing.assert_close(targets[0], alone)
        assert int(method.queue.filled) == expected_filled[step]
    assert method.queue.full


def test_queue_holds_only_unlabeled_target_crop_embeddings():
    method = build("suave", bn_free_raw(), queue={"length": 48})
    batch = make_batch()
    method.training_step(batch, 0)
    with torch.no_grad():
        unlabeled = [method.student.embed_groups([crop]) for crop in batch.unlabeled[:2]]
        labeled = method.student.embed_groups([batch.labeled])
    stored = method.queue.embeddings[:, :B]
    for crop in range(2):
        torch.testing.assert_close(stored[crop], unlabeled[crop], rtol=1e-5, atol=1e-6)
    everything = method.queue.embeddings.reshape(-1, labeled.shape[1])
    distance = torch.cdist(labeled, everything)
    assert distance.min() > 1e-3


def test_queue_does_not_fill_before_its_start_epoch():
    method = build("suave", bn_free_raw(), queue={"length": 32, "start_epoch": 1})
    batch = make_batch()
    for step in range(3):  # epoch 0 (3 steps per epoch)
        method.training_step(batch, step)
    assert int(method.queue.filled) == 0
    method.training_step(batch, 3)
    assert int(method.queue.filled) == B


@pytest.mark.parametrize("name", ["suave", "supervised"])
def test_unit_prototypes_are_unit_norm_after_each_step(name):
    method = build(name)
    optimizer = build_optimizer(method.student, make_recipe(name=name).optim, lr=0.5)
    for step in range(3):
        out = method.training_step(make_batch(step), step)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        assert not torch.allclose(method.student.prototypes.weight.norm(dim=1), torch.ones(K), atol=1e-4)
        method.after_optimizer_step(step)
        torch.testing.assert_close(method.student.prototypes.weight.norm(dim=1), torch.ones(K))


def test_daino_magnitude_g_is_trainable_and_teacher_follows_by_ema():
    method = build("daino")
    g = method.student.prototypes.g
    assert g.requires_grad and any(p is g for p in method.trainable_parameters())
    before = g.detach().clone()
    teacher_before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    optimizer = build_optimizer(method.student, make_recipe(name="daino").optim, lr=0.5)
    out = method.training_step(make_batch(), 0)
    out.loss.backward()
    assert g.grad is not None and g.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(g.detach(), before)
    m = method.momentum(0)
    assert m == pytest.approx(0.990)
    method.after_optimizer_step(0)
    student = dict(method.student.named_parameters())
    for name, value in method.teacher.named_parameters():
        torch.testing.assert_close(value, m * teacher_before[name] + (1 - m) * student[name].detach())
    assert not any(p.requires_grad for p in method.teacher.parameters())


def test_daino_evaluates_the_teacher_and_suave_the_student():
    daino, suave = build("daino"), build("suave")
    assert daino.classifier is daino.teacher
    assert suave.classifier is suave.student


def test_row_count_weighting_in_a_real_step():
    method = build("suave")
    out = method.training_step(make_batch(), 0)
    n_l, n_u = 8, B * 4
    assert float(out.parts["labeled_weight"]) == pytest.approx(n_l / (n_l + n_u))
    expected = (n_l * out.parts["loss_labeled"] + n_u * out.parts["loss_unlabeled"]) / (n_l + n_u)
    torch.testing.assert_close(out.loss.detach(), expected)


def test_special_cases_use_one_stream_each():
    supervised, swav = build("supervised"), build("swav")
    batch = make_batch()
    out = supervised.training_step(batch, 0)
    assert set(out.parts) == {"loss_labeled", "loss"} and supervised.assigner is None
    out = swav.training_step(StepBatch(unlabeled=batch.unlabeled), 0)
    assert set(out.parts) == {"loss_unlabeled", "loss"}


def test_queue_length_is_a_total_split_evenly_over_processes():
    from semiclust.errors import SemiclustError
    from semiclust.methods.queue import queue_per_process

    assert queue_per_process(256, 4) == 64
    with pytest.raises(SemiclustError, match="must be divisible by the 3 processes; use e.g. 255"):
        queue_per_process(256, 3)


def test_a_per_process_part_inside_another_part_is_saved_per_process():
    """A `PerProcess` part one level down (inside the assigner) was told when its buffers were replaced but not
    saved per process, so a resume gave every process rank 0's copy: both now find parts at any depth."""
    from torch import nn

    from semiclust.methods.per_process import PerProcess

    class Tally(PerProcess):
        def __init__(self):
            super().__init__()
            self.register_buffer("seen", torch.tensor([3.0]))
            self.told = 0

        def buffers_changed(self) -> None:
            self.told += 1

    method = build_method(make_recipe(), num_classes=K, in_chans=1, steps_per_epoch=3)
    assert isinstance(method.assigner, nn.Module)
    method.assigner.tally = Tally()
    state = method.per_process_state()
    assert torch.equal(state["assigner.tally.seen"], torch.tensor([3.0]))
    method.buffers_replaced()
    assert method.assigner.tally.told == 1
