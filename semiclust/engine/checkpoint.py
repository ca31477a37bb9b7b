"""Checkpoints: plain dicts of tensors and Python values, written atomically, read with weights_only.

The format only: what a checkpoint holds is assembled by engine/state.py; reading and writing go
through semiclust/storage/tensors.py like every tensor file.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from semiclust.errors import SemiclustError
from semiclust.models.network import Network, network_with_weights
from semiclust.schema import Recipe
from semiclust.storage.tensors import FileRole, looks_like_safetensors, read_torch, write_torch
from semiclust.validation import validate_saved

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
            f"export, use `semiclust predict --model {path} IMAGES`.")
    state = read_torch(path, CHECKPOINT, map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SemiclustError(f"'{path}' is a PyTorch file but not a semiclust checkpoint (no '{FORMAT}' marker).")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise SemiclustError(f"checkpoint '{path}' was written by a newer semiclust; upgrade semiclust to read it.")
    return state


NETWORKS = ("student", "teacher", "ema")


def with_network(state: dict[str, Any], network: str | None) -> dict[str, Any]:
    """The checkpoint's state with another of its networks as the classifier (`semiclust export --network`):
    the student, Daino's teacher or the weight average of method.ema; its test result replaces the classifier's."""
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
    """The evaluated network of a checkpoint (Daino's teacher) and its recipe, rebuilt from the state."""
    recipe = validate_saved(state["recipe"], "the checkpoint's recipe")
    info = state["classifier"]
    prefix = info["prefix"] + "."
    weights = {k[len(prefix):]: v for k, v in state["method"].items() if k.startswith(prefix)}
    network = network_with_weights(recipe.model, info["in_chans"], info["num_classes"], info["prototypes"], weights,
                                   "the checkpoint", "it was written by another version of semiclust")
    return network, recipe


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


def latest_usable(folder: Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
    """The newest periodic checkpoint that loads, skipping (and naming) unreadable ones."""
    for path in reversed(periodic_checkpoints(folder)):
        try:
            return path, load_checkpoint(path, map_location)
        except SemiclustError as err:
            warnings.warn(f"skipping unreadable checkpoint: {err}", stacklevel=2)
    return None
