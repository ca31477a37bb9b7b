import math

import pytest
import torch

from semiclust.assign import CenterSharpenAssigner
from semiclust.assign.center_sharpen import center_sharpen, teacher_temperature, updated_center
from semiclust.assign import CenterSharpenSpec


def test_center_sharpen_is_a_centered_tempered_softmax():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    center = torch.tensor([[0.5, 0.0, 1.0]])
    q = center_sharpen(logits, center, 0.04)
    for row in range(2):
        z = [(logits[row, k].item() - center[0, k].item()) / 0.04 for k in range(3)]
        peak = max(z)
        expected = [math.exp(v - peak) / sum(math.exp(u - peak) for u in z) for v in z]
        assert q[row].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_lower_temperature_sharpens():
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    zero = torch.zeros(1, 5)
    entropy = lambda q: -(q * q.clamp_min(1e-12).log()).sum(1).mean()
    assert entropy(center_sharpen(logits, zero, 0.04)) < entropy(center_sharpen(logits, zero, 0.07))


def test_center_update_is_an_ema_of_the_batch_mean():
    center = torch.tensor([[1.0, -1.0]])
    logits = torch.tensor([[2.0, 0.0], [4.0, 2.0]])
    new = updated_center(center, logits, 0.9)
    torch.testing.assert_close(new, torch.tensor([[0.9 * 1 + 0.1 * 3, 0.9 * -1 + 0.1 * 1]]))


def test_teacher_temperature_warms_per_epoch_like_dino():
    """DINO: linspace(0.04, 0.07, 10) for epochs 0..9, then 0.07."""
    expected = [0.04 + (0.07 - 0.04) * e / 9 for e in range(10)]
    assert [teacher_temperature(e, 0.04, 0.07, 10) for e in range(10)] == pytest.approx(expected)
    assert teacher_temperature(10, 0.04, 0.07, 10) == 0.07
    assert teacher_temperature(55, 0.04, 0.07, 10) == 0.07
    assert teacher_temperature(0, 0.04, 0.07, 0) == 0.07


def test_assigner_uses_the_old_center_then_updates_it():
    assigner = CenterSharpenAssigner(CenterSharpenSpec(warmup_epochs=0, temperature=0.1, center_momentum=0.5), 3)
    first = torch.tensor([[3.0, 0.0, 0.0]])
    q = assigner([first], epoch=0)[0]
    torch.testing.assert_close(q, torch.softmax(first / 0.1, dim=1))  # center was zero
    torch.testing.assert_close(assigner.center, 0.5 * first)
    q2 = assigner([first], epoch=0)[0]
    torch.testing.assert_close(q2, torch.softmax((first - 0.5 * first) / 0.1, dim=1))
