"""Checkpoints: plain dicts of tensors and Python values, written atomically, read with weights_only."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from semiclust.errors import SemiclustError

FORMAT = "semiclust-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A crash mid-write leaves the previous file at `path` intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
    if not path.is_file():
        raise SemiclustError(f"checkpoint '{path}' does not exist; pass a .pt file written by `semiclust train`.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise SemiclustError(
            f"checkpoint '{path}' could not be read ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            "It is truncated, corrupt or not a semiclust checkpoint; use another checkpoint of the run."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SemiclustError(f"'{path}' is a PyTorch file but not a semiclust checkpoint (no '{FORMAT}' marker).")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise SemiclustError(f"checkpoint '{path}' was written by a newer semiclust; upgrade semiclust to read it.")
    return state


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
    import warnings

    for path in reversed(periodic_checkpoints(folder)):
        try:
            return path, load_checkpoint(path, map_location)
        except SemiclustError as err:
            warnings.warn(f"skipping unreadable checkpoint: {err}", stacklevel=2)
    return None
