"""Atomic file writes: a reader never sees half a file, and a crash or a full disk leaves the previous
file (or none) where a reader looks. Every file semiclust writes goes through `write_atomic`."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomic(path: Path | str, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(file)` on a temporary file beside `path`, fsync it, then rename it over `path`.

    The temporary file is `.NAME.XXXX.tmp` in the same folder (so the rename is atomic) and is
    removed if anything fails, whatever the exception."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path | str, text: str) -> Path:
    return write_atomic(path, lambda file: file.write(text.encode("utf-8")))


def write_bytes(path: Path | str, data: bytes) -> Path:
    return write_atomic(path, lambda file: file.write(data))
