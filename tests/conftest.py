"""Shared fixtures; the helpers themselves are in tests/helpers.py."""
from __future__ import annotations

import copy
import os

import pytest
import torch

from tests.helpers import TINY_RECIPE

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture
def tiny_raw() -> dict:
    """A raw (unvalidated) recipe dict; tests change it and validate it themselves."""
    return copy.deepcopy(TINY_RECIPE)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One short Suave run with a timm backbone on 3-channel synthetic data, shared by the eval, export
    and predict tests (training once keeps the suite fast)."""
    from semiclust.engine.trainer import train
    from semiclust.recipe import resolve as validate

    raw = copy.deepcopy(TINY_RECIPE)
    raw["data"]["options"].update({"channels": 3, "size": 16})
    raw["data"]["unlabeled"]["crops"][0]["size"] = 16
    raw["data"]["unlabeled"]["crops"][1]["size"] = 8
    raw["data"]["labeled"]["size"] = 16
    raw["data"]["eval"] = {"size": 16}
    raw["model"]["backbone"] = {"name": "test_resnet", "kwargs": {}}
    raw["schedule"]["epochs"] = 1
    run = tmp_path_factory.mktemp("trained") / "run"
    summary = train(validate(raw), run)
    return summary
