import math

import pytest

from semiclust.engine.numbers import scaled_lr
from semiclust.engine.schedules import cosine, warmup_cosine


def test_warmup_is_linear_then_cosine_to_final():
    values = [warmup_cosine(s, 100, 10, peak=0.4, final=0.001) for s in range(101)]
    assert values[0] == 0.0
    assert values[5] == pytest.approx(0.2)
    assert values[10] == pytest.approx(0.4)
    midpoint = 10 + 45
    assert values[midpoint] == pytest.approx(0.001 + 0.5 * (0.4 - 0.001))
    assert values[100] == pytest.approx(0.001)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


def test_cosine_end_points_and_clamping():
    assert cosine(0, 10, 0.04, 0.4) == pytest.approx(0.04)
    assert cosine(10, 10, 0.04, 0.4) == pytest.approx(0.4)
    assert cosine(20, 10, 0.04, 0.4) == pytest.approx(0.4)


def test_linear_scaling_by_the_global_batch():
    assert scaled_lr(0.00024, 1024, 256) == pytest.approx(9.6e-4)
    assert scaled_lr(0.3, 999, None) == 0.3


def test_teacher_momentum_is_a_per_step_cosine_from_0_990_to_1():
    teacher_momentum = lambda step, total, start: cosine(step, total, start, 1.0)  # what Daino.momentum computes
    assert teacher_momentum(0, 1000, 0.990) == pytest.approx(0.990)
    assert teacher_momentum(500, 1000, 0.990) == pytest.approx(0.995)
    assert teacher_momentum(1000, 1000, 0.990) == pytest.approx(1.0)
    assert teacher_momentum(250, 1000, 0.990) == pytest.approx(1 - 0.005 * (1 + math.cos(math.pi / 4)))
