"""Every tensor file semiclust reads or writes: PyTorch files (read with `weights_only=True` and a short
allow-list, so no pickled code ever runs) and safetensors files, with one vocabulary of errors.

Each caller names the file's role (a checkpoint, an init checkpoint, a model file) and what the user
can do about a missing or damaged one; the messages are otherwise the same everywhere.
"""
from __future__ import annotations

import argparse
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from semiclust.errors import SemiclustError
from semiclust.storage.atomic import write_atomic


@dataclass(frozen=True)
class FileRole:
    """How messages name a kind of file and what they tell the user to do about it."""

    name: str  # e.g. "checkpoint", "init checkpoint", "model file"
    missing: str  # the fix when the file does not exist
    damaged: str  # the fix when it cannot be read


def allowed_globals() -> list[Any]:
    """The only non-tensor objects a file may hold beyond torch's defaults (plain containers, numbers,
    strings, tensors, OrderedDict, torch.Size, dtypes). Each is inert when unpickled:

    - argparse.Namespace: DINO's full checkpoints (and timm's train.py) store `args`; unpickling makes
      an empty Namespace and fills its __dict__ with values that must themselves be allowed.
    - numpy's scalar constructor (under its numpy 1 and numpy 2 module names), numpy.dtype and the
      numeric dtype classes: training scripts often store metrics as numpy scalars; these only
      build a number from raw bytes and a dtype from a type code.
    """
    allowed: list[Any] = [argparse.Namespace]
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency of torchvision
        return allowed
    multiarray = getattr(np, "_core", None) or np.core
    scalar = multiarray.multiarray.scalar
    allowed += [np.dtype, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25: the class of each dtype instance
    names = [f"{kind}{bits}DType" for kind in ("Float", "Int", "UInt") for bits in (8, 16, 32, 64)] + ["BoolDType"]
    allowed += [getattr(dtypes, name) for name in names if hasattr(dtypes, name)]
    return allowed


def first_line(err: Exception) -> str:
    """The informative line of an error (for weights_only failures, the unpickler's own words)."""
    text = str(err).split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:200] if lines else "no message"


def shown(value: Any, limit: int = 60) -> str:
    """A value read from a file, as a message shows it: its repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def require_file(path: Path, role: FileRole) -> Path:
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise SemiclustError(f"{role.name} '{path}' {what}; {role.missing}.")
    return path


def looks_like_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte header length followed by a JSON object."""
    with open(path, "rb") as file:
        head = file.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return struct.unpack("<Q", head[:8])[0] < path.stat().st_size


LEGACY_TORCH_START = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # torch.save's legacy format: pickle protocol 2, its magic


def is_torch_file(path: Path) -> bool:
    """torch.save's zip container, or its legacy format (a protocol-2 pickle of torch's magic number first)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as file:
        return file.read(len(LEGACY_TORCH_START)) == LEGACY_TORCH_START


def is_plain_pickle(path: Path) -> bool:
    """A file `pickle.dump` wrote (protocol 2 to 5: 0x80 and the protocol first), not torch.save."""
    with open(path, "rb") as file:
        head = file.read(len(LEGACY_TORCH_START))
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and head != LEGACY_TORCH_START


def refuse_plain_pickle(path: Path, role: FileRole) -> None:
    """A plain pickle is named as one (torch.load would only call it corrupt): semiclust never unpickles it."""
    if is_plain_pickle(path):
        raise SemiclustError(
            f"{role.name} '{path}' is a plain Python pickle (written by pickle.dump), not a torch.save file: semiclust "
            "never unpickles arbitrary objects, since unpickling can run any code. In a Python session you trust, "
            "load it and save its tensors with torch.save (a dict of tensors) or as safetensors, and use that file.")


def refused_global(err: Exception) -> str | None:
    """The object `weights_only` loading refused to build (pickled code), if that is why it failed."""
    found = re.search(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", str(err))
    return (found.group(1) or found.group(2)) if found else None


def read_torch(path: Path | str, role: FileRole, map_location: str | torch.device = "cpu") -> Any:
    """A PyTorch file's content without executing pickled code; a refused object and a damaged file are
    named. Zip-format files are memory-mapped (a DINO checkpoint's optimiser state is never copied)."""
    path = require_file(Path(path), role)
    refuse_plain_pickle(path, role)
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # UnpicklingError for refused globals and foreign files, RuntimeError for bad zips, ...
        refused = refused_global(err)
        if refused:
            raise SemiclustError(
                f"{role.name} '{path}' contains {refused}, which is not on semiclust's allow-list of harmless objects; "
                "semiclust never executes pickled code. Convert the file to a plain dict of tensors (or to "
                "safetensors) in a Python session you trust, and use the result."
            ) from None
        raise SemiclustError(
            f"{role.name} '{path}' could not be read ({type(err).__name__}: {first_line(err)}): it is truncated, "
            f"corrupt or not a PyTorch file; {role.damaged}."
        ) from None


def read_safetensors(path: Path | str, role: FileRole) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor and the metadata of a safetensors file, in one pass (nothing in it can execute)."""
    from safetensors import safe_open

    path = require_file(Path(path), role)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
    except Exception as err:  # SafetensorError, OSError, ... for truncated or foreign files
        raise SemiclustError(
            f"{role.name} '{path}' could not be read as safetensors ({type(err).__name__}: {first_line(err)}): it is "
            f"truncated, corrupt or not a safetensors file; {role.damaged}."
        ) from None


def write_torch(content: Any, path: Path | str) -> Path:
    """torch.save atomically (temporary file, fsync, rename)."""
    return write_atomic(path, lambda file: torch.save(content, file))


def write_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path | str) -> Path:
    """A safetensors file written atomically, with string metadata."""
    from safetensors.torch import save

    return write_atomic(path, lambda file: file.write(save(tensors, metadata=metadata)))

