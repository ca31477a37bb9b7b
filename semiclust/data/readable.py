"""Which image files decode, remembered between runs, so that a start does not decode the labeled images again.

Training checks that every labeled image decodes before it draws or accepts the subset (128,116 files for the
SimCLR 10% list). A file's bytes are the same while its identity is: device, inode, size, modification and change
times in nanoseconds (the change time cannot be set back by any tool). So a file that decoded is remembered by
that identity, per decoder (semiclust, torch, torchvision and Pillow versions, data.max_image_pixels) and per
split root, and only files not remembered are decoded. Unreadable files are never remembered (they are decoded,
and named, every time), nor files whose times are within cache_dir.RACY_NS of the check. A file damaged in place
without its size or times changing (a failing disk) is not noticed at the start: the loader still finds it when
it reads it, replaces it and names it, and `semiclust data check` decodes for real.
"""
from __future__ import annotations

import os
import time

import numpy as np

import semiclust.data.cache_dir as cache_dir
from semiclust.data.datasets import FileSplit
from semiclust.data.loader import find_unreadable
from semiclust.config.schema import Loader
from semiclust.version import __version__

MAX_KEPT = 2_000_000  # identities kept per split root (40 bytes each)
MIX = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5, 0xFF51AFD7ED558CCD)


def decoder_identity(max_pixels: int | None) -> list[str]:
    """What a verdict depends on besides the file: the decoders and the pixel limit."""
    import PIL
    import torch
    import torchvision

    return [__version__, torch.__version__, torchvision.__version__, PIL.__version__, str(max_pixels)]


def identities(split: FileSplit, indices: list[int]) -> np.ndarray:
    """Each file's identity, one int64 row (device, inode, size, mtime_ns, ctime_ns; links followed: the file
    decoded is the target); a row of -1 where the file cannot be stat'ed (never remembered)."""
    rows = np.full((len(indices), 5), -1, dtype=np.int64)
    for row, location in enumerate(split.locations(indices)):
        try:
            info = os.stat(location)
        except OSError:
            continue
        rows[row] = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    return rows


def _keys(rows: np.ndarray) -> np.ndarray:
    """A 64-bit mix of each row's five numbers, to find rows by (equal rows have equal keys; rows found by key are
    then compared whole)."""
    keys = np.zeros(len(rows), dtype=np.uint64)
    for column, factor in zip(rows.astype(np.uint64).T, MIX):
        keys = (keys ^ column) * np.uint64(factor)  # modulo 2**64
    return keys


class Verdicts:
    """The identities of the files of one split root known to decode (with these decoders), sorted by key."""

    def __init__(self, split: FileSplit, max_pixels: int | None):
        self.path = cache_dir.cache_file("readable", *decoder_identity(max_pixels), os.path.realpath(split.root))
        arrays = cache_dir.load_arrays(self.path)
        rows = arrays.get("identities") if arrays else None
        ok = rows is not None and rows.dtype == np.int64 and rows.ndim == 2 and rows.shape[1] == 5
        self._set(rows if ok else np.zeros((0, 5), dtype=np.int64))

    def _set(self, rows: np.ndarray) -> None:
        keys = _keys(rows)
        order = np.argsort(keys, kind="stable")
        self.rows, self.keys = rows[order], keys[order]

    def known(self, rows: np.ndarray) -> np.ndarray:
        """Whether each row is remembered as readable."""
        keys = _keys(rows)
        found = np.zeros(len(rows), dtype=bool)
        first, last = np.searchsorted(self.keys, keys, "left"), np.searchsorted(self.keys, keys, "right")
        single = last - first == 1  # the usual case: one remembered row has the key; compare the rows whole
        found[single] = (self.rows[first[single]] == rows[single]).all(axis=1)
        for k in np.flatnonzero(last - first > 1):
            found[k] = bool((self.rows[first[k] : last[k]] == rows[k]).all(axis=1).any())
        return found

    def remember(self, rows: np.ndarray, started_ns: int) -> None:
        """Add the identities of files that decoded (except racy ones and rows of -1) and write them, when any is
        new; at most MAX_KEPT, the new ones first."""
        fresh = rows[(rows[:, 0] >= 0) & (rows[:, 3:].max(axis=1, initial=-1) < started_ns - cache_dir.RACY_NS)]
        fresh = np.unique(fresh[~self.known(fresh)], axis=0)
        if not len(fresh) or self.path is None:
            return
        kept = np.concatenate([fresh, self.rows[: max(0, MAX_KEPT - len(fresh))]])
        self._set(kept)
        cache_dir.save_arrays(self.path, {"identities": kept})


def unreadable_among(split: FileSplit, indices: list[int], spec: Loader, max_pixels: int | None) -> dict[int, str]:
    """The images at `indices` that cannot be decoded, with why: every file not remembered as readable is decoded
    in loader workers (data.loader.find_unreadable); those that decode are remembered."""
    started = time.time_ns()
    verdicts = Verdicts(split, max_pixels)
    if verdicts.path is None:  # caching off: decode them all, as before
        return {i: reason for _, i, reason in find_unreadable([(0, split, i) for i in indices], spec, max_pixels)}
    rows = identities(split, indices)
    known = verdicts.known(rows)
    todo = [index for index, seen in zip(indices, known.tolist()) if not seen]
    bad = {i: reason for _, i, reason in find_unreadable([(0, split, i) for i in todo], spec, max_pixels)}
    verdicts.remember(rows[[index not in bad for index in indices]], started)
    return bad


def remember_readable(split: FileSplit, indices: list[int], bad: set[int], max_pixels: int | None,
                      started_ns: int) -> None:
    """Record the files at `indices` decoded since `started_ns` (those not in `bad`) as readable (data check)."""
    verdicts = Verdicts(split, max_pixels)
    if verdicts.path is not None:
        verdicts.remember(identities(split, [index for index in indices if index not in bad]), started_ns)
