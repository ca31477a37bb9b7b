"""Checkpoints: plain dicts of tensors and Python values, written atomically, read with weights_only.

The format only: what a checkpoint holds is assembled by engine/state.py; reading and writing go
through semiclust/storage/tensors.py like every tensor file.
"""
from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any, Callable

import torch

from semiclust.errors import SemiclustError
from semiclust.models.network import (MAX_CLASSES, MAX_IN_CHANS, PROTOTYPE_KINDS, Network, mismatch_fix,
                                      network_with_weights)
from semiclust.config.schema import Recipe
from semiclust.storage.tensors import FileRole, looks_like_safetensors, read_torch, shown, write_torch
from semiclust.config.validation import validate_saved

FORMAT = "semiclust-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT = FileRole("checkpoint", "pass a .pt file written by `semiclust train` (or its run directory)",
                      "use another checkpoint of the run")


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A crash mid-write leaves the previous file at `path` intact.
    """
    write_torch({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, path)


def checkpoint_file(path: Path | str) -> Path:
    """The checkpoint a path names: the file itself, or a run directory's checkpoints/final.pt."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / "final.pt"
        if not candidate.is_file():
            raise SemiclustError(f"'{path}' is a folder without checkpoints/final.pt; pass the checkpoint file itself.")
        return candidate
    return path


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a semiclust checkpoint without executing pickled code; clear errors for bad files."""
    path = checkpoint_file(path)
    if path.is_file() and looks_like_safetensors(path):
        raise SemiclustError(
            f"'{path}' is a safetensors export (written by `semiclust export`), not a training checkpoint: this command "
            "reads the .pt files `semiclust train` writes (e.g. RUN/checkpoints/final.pt). To classify images with the "
            f"export, use `{shlex.join(['semiclust', 'predict', '--model', str(path)])} IMAGES`.")
    state = read_torch(path, CHECKPOINT, map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SemiclustError(f"'{path}' is a PyTorch file but not a semiclust checkpoint (no '{FORMAT}' marker).")
    version = state.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise SemiclustError(f"checkpoint '{path}' is damaged or was edited: its format_version is {shown(version)} "
                             f"(a {type(version).__name__}), where semiclust writes a whole number; {CHECKPOINT.damaged}.")
    if version > FORMAT_VERSION:
        raise SemiclustError(f"checkpoint '{path}' was written by a newer semiclust; upgrade semiclust to read it.")
    return state



NETWORKS = ("student", "teacher", "ema")


def with_network(state: dict[str, Any], network: str | None) -> dict[str, Any]:
    """The checkpoint's state with another of its networks as the classifier (`semiclust export --network`):
    the student, Daino's teacher or the weight average of method.ema; its test result replaces the classifier's."""
    checked_classifier(state)
    if network is None or network == state["classifier"]["prefix"]:
        return state
    held = [name for name in NETWORKS if any(k.startswith(name + ".") for k in state["method"])]
    if network not in held:
        raise SemiclustError(f"--network {network}: this checkpoint holds the networks {', '.join(held)}; choose one "
                             "of them (method.ema.enabled: true keeps a weight average named ema).")
    chosen = {**state, "classifier": {**state["classifier"], "prefix": network}}
    chosen.pop("eval", None)
    beside = state.get("eval_beside", {}).get("online" if network == "student" else network)
    if beside is not None:
        chosen["eval"] = beside
    return chosen


def classifier_network(state: dict[str, Any]) -> tuple[Network, Recipe]:
    """The evaluated network of a checkpoint (Daino's teacher) and its recipe, rebuilt from the state; tensors that
    do not fit are named, as damage when this version of semiclust wrote the file."""
    info = checked_classifier(state)
    recipe = validate_saved(state["recipe"], "the checkpoint's recipe")
    prefix = info["prefix"] + "."
    weights = {k[len(prefix):]: v for k, v in state["method"].items() if k.startswith(prefix)}
    fix = mismatch_fix(state.get("semiclust_version"), CHECKPOINT.damaged)
    network = network_with_weights(recipe.model, info["in_chans"], info["num_classes"], info["prototypes"], weights,
                                   "the checkpoint", fix, recipe.method.temperature)
    return network, recipe


def whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def numbers(value: Any, length: int) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == length and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)


def checked_classifier(state: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's description of its classifier (which network, its sizes, classes, normalisation), each
    value checked before a network of that size is built: a damaged or edited file is one paragraph naming the
    field, its value and what semiclust writes there."""
    info = state.get("classifier")
    info = info if isinstance(info, dict) else {}
    chans, classes = info.get("in_chans"), state.get("classes")
    fields = [
        ("recipe", state.get("recipe"), isinstance(state.get("recipe"), dict), "the recipe as a mapping"),
        ("method", state.get("method"), isinstance(state.get("method"), dict), "the tensors of the networks, by name"),
        ("classifier.prefix", info.get("prefix"), info.get("prefix") in NETWORKS, f"one of {', '.join(NETWORKS)}"),
        ("classifier.prototypes", info.get("prototypes"), info.get("prototypes") in PROTOTYPE_KINDS,
         f"one of {', '.join(PROTOTYPE_KINDS)}"),
        ("classifier.in_chans", chans, whole(chans, 1, MAX_IN_CHANS), f"a whole number from 1 to {MAX_IN_CHANS}"),
        ("classifier.num_classes", info.get("num_classes"), whole(info.get("num_classes"), 1, MAX_CLASSES),
         f"a whole number from 1 to {MAX_CLASSES:,}"),
        ("classes", classes, isinstance(classes, list) and len(classes) == info.get("num_classes")
         and all(isinstance(c, str) for c in classes), "a list of classifier.num_classes class names"),
        ("mean", state.get("mean"), numbers(state.get("mean"), chans), "one number per input channel (in_chans)"),
        ("std", state.get("std"), numbers(state.get("std"), chans) and all(v > 0 for v in state["std"]),
         "one number above 0 per input channel (in_chans)"),
        ("step", state.get("step"), whole(state.get("step"), 0, 2**62), "a whole number"),
    ]
    for name, value, ok, expected in fields:
        if not ok:
            raise SemiclustError(f"the checkpoint is damaged or edited: its {name} is {shown(value)}, where semiclust "
                                 f"writes {expected}; {CHECKPOINT.damaged}.")
    return info


def periodic_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"step_{step:09d}.pt"


def periodic_checkpoints(folder: Path) -> list[Path]:
    """The periodic checkpoints in a folder, oldest first."""
    return sorted(Path(folder).glob("step_*.pt"))


def save_periodic(state: dict[str, Any], folder: Path, keep_last: int) -> Path:
    """Write step_<step>.pt atomically, then delete all but the newest `keep_last` periodic ones."""
    path = periodic_path(folder, state["step"])
    save_checkpoint(state, path)
    for old in periodic_checkpoints(folder)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def latest_usable(folder: Path, map_location: str | torch.device = "cpu",
                  fits: Callable[[dict[str, Any]], str | None] = lambda state: None,
                  skipped: list[str] | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The newest periodic checkpoint that loads and that `fits` (None, or why it cannot be used: a tensor of
    the wrong shape), falling back to older ones; each one passed over is added to `skipped` with its reason, for
    the run's start-up lines (not a Python warning with a source path)."""
    for path in reversed(periodic_checkpoints(folder)):
        try:
            state = load_checkpoint(path, map_location)
        except SemiclustError as err:
            reason = str(err)
        else:
            reason = fits(state)
            if reason is None:
                return path, state
        if skipped is not None:
            skipped.append(f"passed over checkpoint '{path}': {reason}")
    return None
