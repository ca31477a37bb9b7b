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
from collections.abc import Iterable

import numpy as np

import semiclust.data.cache_dir as cache_dir
from semiclust.data.datasets import FileSplit
from semiclust.data.loader import find_unreadable
from semiclust.schema import Loader
from semiclust.version import __version__

MAX_KEPT = 2_000_000  # identities kept per split root (40 bytes each)
Row = tuple[int, int, int, int, int]


def decoder_identity(max_pixels: int | None) -> list[str]:
    """What a verdict depends on besides the file: the decoders and the pixel limit."""
    import PIL
    import torch
    import torchvision

    return [__version__, torch.__version__, torchvision.__version__, PIL.__version__, str(max_pixels)]


def identities(split: FileSplit, indices: Iterable[int]) -> list[Row | None]:
    """Each file's identity (links followed: the file decoded is the target), None when it cannot be stat'ed."""
    rows = []
    for location in split.locations(indices):
        try:
            info = os.stat(location)
        except OSError:
            rows.append(None)
            continue
        rows.append((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns))
    return rows


class Verdicts:
    """The identities of the files of one split root known to decode (with these decoders)."""

    def __init__(self, split: FileSplit, max_pixels: int | None):
        self.path = cache_dir.cache_file("readable", *decoder_identity(max_pixels), os.path.realpath(split.root))
        arrays = cache_dir.load_arrays(self.path)
        rows = arrays.get("identities") if arrays else None
        ok = rows is not None and rows.dtype == np.int64 and rows.ndim == 2 and rows.shape[1] == 5
        self.known: set[Row] = set(map(tuple, rows.tolist())) if ok else set()

    def remember(self, rows: list[Row], started_ns: int) -> None:
        """Add the identities of files that decoded (except racy ones) and write them, when any is new."""
        fresh = list(dict.fromkeys(row for row in rows if row is not None and row not in self.known
                                   and max(row[3], row[4]) < started_ns - cache_dir.RACY_NS))
        if not fresh or self.path is None:
            return
        kept = fresh + list(self.known)[: max(0, MAX_KEPT - len(fresh))]
        self.known.update(fresh)
        cache_dir.save_arrays(self.path, {"identities": np.array(kept, dtype=np.int64).reshape(-1, 5)})


def unreadable_among(split: FileSplit, indices: list[int], spec: Loader, max_pixels: int | None) -> dict[int, str]:
    """The images at `indices` that cannot be decoded, with why: every file not remembered as readable is decoded
    in loader workers (data.loader.find_unreadable); those that decode are remembered."""
    started = time.time_ns()
    verdicts = Verdicts(split, max_pixels)
    rows = identities(split, indices)
    todo = [index for index, row in zip(indices, rows) if row is None or row not in verdicts.known]
    bad = {i: reason for _, i, reason in find_unreadable([(0, split, i) for i in todo], spec, max_pixels)}
    verdicts.remember([row for index, row in zip(indices, rows) if index not in bad], started)
    return bad


def remember_readable(split: FileSplit, indices: list[int], bad: set[int], max_pixels: int | None,
                      started_ns: int) -> None:
    """Record the files at `indices` decoded since `started_ns` (those not in `bad`) as readable (data check)."""
    decoded = [index for index in indices if index not in bad]
    Verdicts(split, max_pixels).remember(identities(split, decoded), started_ns)
