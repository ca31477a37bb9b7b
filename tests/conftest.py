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
