"""Where semiclust keeps what it can always recompute (folder listings, which image files decode), and reading
and writing those files. Nothing here ever decides what a run trains on: a cache file that is missing, damaged,
from another version or unreadable is ignored, and a folder that cannot be written is left alone.

The folder: $SEMICLUST_CACHE_DIR, else $XDG_CACHE_HOME/semiclust, else ~/.cache/semiclust (per user, so a shared
read-only dataset is cached too). SEMICLUST_CACHE_DIR=off turns every such cache off.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np

from semiclust.storage.atomic import WriteFailed, write_atomic

OFF = ("off", "none", "0", "false", "no")
# a directory or file whose times are this close to the moment it was read is not remembered: a change in the same
# clock tick could leave its times as they were ("racy git"; coarse file system clocks, FAT's 2 s)
RACY_NS = 3_000_000_000


def cache_folder() -> Path | None:
    """The cache folder, or None when SEMICLUST_CACHE_DIR turns caching off."""
    chosen = os.environ.get("SEMICLUST_CACHE_DIR", "").strip()
    if chosen.lower() in OFF:
        return None
    if chosen:
        return Path(chosen).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "semiclust"


def cache_file(kind: str, *identity: str) -> Path | None:
    """The cache file of `kind` for what `identity` names (hashed), or None when caching is off."""
    folder = cache_folder()
    if folder is None:
        return None
    digest = hashlib.sha256("\0".join(identity).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return folder / f"{kind}-{digest}.bin"


MAGIC = b"semiclust-cache\n"  # then the header's length (8 bytes, little-endian), the JSON header, the arrays


def load_arrays(path: Path | None) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file (read-only, each over a bytes object of its own: no copy is made), or None when
    it is absent or cannot be read as one (damaged, truncated, another format)."""
    if path is None:
        return None
    try:
        with path.open("rb") as file:
            if file.read(len(MAGIC)) != MAGIC:
                return None
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(length))
            arrays, position = {}, 0
            for name, (dtype, shape, offset, size) in header.items():
                if offset != position or size < 0:
                    return None
                raw = file.read(size)
                if len(raw) != size:
                    return None
                arrays[name] = np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)
                position += size
            return arrays
    except (OSError, ValueError, TypeError, AttributeError, struct.error, RecursionError, MemoryError):
        return None


def save_arrays(path: Path | None, arrays: dict[str, np.ndarray]) -> bool:
    """Write a cache file atomically (readers see the old file or the new one); False when it cannot be written."""
    if path is None:
        return False
    arrays = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
    header, offset = {}, 0
    for name, array in arrays.items():
        header[name] = [array.dtype.str, list(array.shape), offset, array.nbytes]
        offset += array.nbytes
    text = json.dumps(header).encode()

    def write(file) -> None:
        file.write(MAGIC + struct.pack("<Q", len(text)) + text)
        for array in arrays.values():
            if array.nbytes:
                file.write(memoryview(array.reshape(-1)).cast("B"))

    try:
        write_atomic(path, write)
    except (WriteFailed, OSError):
        return False
    return True


def text_array(text: str) -> np.ndarray:
    """A str as a uint8 array (cache files hold no pickled objects)."""
    return np.frombuffer(text.encode("utf-8", "surrogateescape"), dtype=np.uint8)


def array_text(array: np.ndarray) -> str:
    return array.tobytes().decode("utf-8", "surrogateescape")
