"""Tiny recipes on generated data, so the suite stays fast on 2 CPU cores."""
from __future__ import annotations

import copy
import os
import subprocess
import sys

TINY_RECIPE = {
    "name": "tiny",
    "seed": 0,
    "data": {
        "dataset": "synthetic",
        "options": {"num_classes": 4, "size": 8, "channels": 1, "train_per_class": 24, "test_per_class": 8},
        "labels": {"per_class": 2},
        "unlabeled": {"crops": [{"count": 2, "size": 8, "scale": [0.5, 1.0], "flip": 0.0},
                               {"count": 2, "size": 4, "scale": [0.2, 0.5], "flip": 0.0}]},
        "labeled": {"size": 8, "scale": [0.5, 1.0], "flip": 0.0},
        "eval": {"size": 8},
        "batch": {"unlabeled": 16, "labeled": 8},
    },
    "model": {"backbone": {"name": "tinyconv", "kwargs": {"widths": [8, 16]}}, "head": {"hidden": 16, "out": 8}},
    "method": {"name": "suave"},
    "optim": {"name": "sgd", "lr": 0.05, "lr_reference_batch": None},
    "schedule": {"epochs": 2},
    "runtime": {"device": "cpu", "progress": "none", "log_every_steps": 2},
    "checkpoint": {"every_epochs": 1},
}


def timm_recipe(backbone: str, kwargs: dict | None = None) -> dict:
    """The tiny recipe on 3-channel 16-px images with a timm backbone, for one epoch (the shared trained runs)."""
    raw = copy.deepcopy(TINY_RECIPE)
    raw["data"]["options"].update({"channels": 3, "size": 16})
    raw["data"]["unlabeled"]["crops"][0]["size"] = 16
    raw["data"]["unlabeled"]["crops"][1]["size"] = 8
    raw["data"]["labeled"]["size"] = 16
    raw["data"]["eval"] = {"size": 16}
    raw["model"]["backbone"] = {"name": backbone, "kwargs": kwargs or {}}
    raw["schedule"]["epochs"] = 1
    return raw


def make_recipe(raw: dict | None = None, **method_changes):
    from semiclust.config.loader import resolve as validate

    raw = copy.deepcopy(raw or TINY_RECIPE)
    raw["method"].update(method_changes)
    return validate(raw, "test recipe")


def run_python(code: str, cwd) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python process (only what it imports is imported), offline; its output captured."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def wandb_records(path) -> list:
    """Every record of a W&B run file (`run-ID.wandb`), decoded with W&B's own protobuf `Record`.

    The file is W&B's transaction log: a 7-byte header (":W&B", magic, version), then LevelDB-log framing
    in 32 KiB blocks (a 7-byte header per piece: CRC, length, type; FULL = 1 or FIRST/MIDDLE/LAST = 2/3/4,
    a block's tail shorter than a header is padding). wandb >= 0.2x has no public Python reader for it."""
    import struct
    from pathlib import Path

    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:
            position += block - position % block
            continue
        length, kind = struct.unpack("<HB", data[position + 4:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def poison_loss_at(monkeypatch, bad_step: int) -> None:
    """Make every method's loss (and its logged `loss` part) NaN at `bad_step`, as a diverging step would."""
    import torch

    from semiclust.methods.base import Method, StepResult

    original = Method.training_step

    def poisoned(self, batch, step, student=None):
        out = original(self, batch, step, student)
        if step == bad_step:
            return StepResult(out.loss * float("nan"), {**out.parts, "loss": torch.tensor(float("nan"))})
        return out

    monkeypatch.setattr(Method, "training_step", poisoned)
