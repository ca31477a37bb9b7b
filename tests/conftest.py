"""Shared fixtures; the helpers themselves are in tests/helpers.py."""
from __future__ import annotations

import atexit
import copy
import os
import shutil
import tempfile

import pytest
import torch

from tests.helpers import TINY_RECIPE, timm_recipe

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)
_CACHE = tempfile.mkdtemp(prefix="semiclust-test-cache-")  # listings and readable verdicts of the test trees:
os.environ["SEMICLUST_CACHE_DIR"] = _CACHE  # never in the user's ~/.cache (subprocesses inherit it)
atexit.register(shutil.rmtree, _CACHE, True)


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """A test that trains with `runtime.threads` (or sets torch's threads itself) changes them for the whole
    process: each test gets the count back, so that a later one comparing with a fresh process (2 threads)
    computes with the same number of threads."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_raw() -> dict:
    """A raw (unvalidated) recipe dict; tests change it and validate it themselves."""
    return copy.deepcopy(TINY_RECIPE)


def train_once(tmp_path_factory, name: str, raw: dict):
    from semiclust.engine.trainer import train
    from semiclust.config.loader import resolve as validate

    return train(validate(raw), tmp_path_factory.mktemp(name) / "run")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One short Suave run with a timm backbone on 3-channel synthetic data, shared by the eval, export
    and predict tests (training once keeps the suite fast)."""
    return train_once(tmp_path_factory, "trained", timm_recipe("test_resnet"))


@pytest.fixture(scope="session")
def vit_run(tmp_path_factory):
    """The same short run with a tiny timm ViT (4-px patches on 16-px images, any crop size)."""
    return train_once(tmp_path_factory, "vit", timm_recipe("test_vit", {"img_size": 16, "patch_size": 4,
                                                                      "dynamic_img_size": True}))


@pytest.fixture(scope="session")
def tinyconv_run(tmp_path_factory):
    """One epoch of the tiny recipe: semiclust's own `tinyconv` backbone on 1-channel images."""
    raw = copy.deepcopy(TINY_RECIPE)
    raw["schedule"]["epochs"] = 1
    return train_once(tmp_path_factory, "tinyconv", raw)
