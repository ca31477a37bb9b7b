"""The file names of a split as two flat arrays: every name's bytes in one buffer, and where each begins.

A Python list of a million `str` is a million objects; reading one touches its reference count, so each loader
worker forked from the main process copies every page of names it reads (copy-on-write), about 100 MB per
worker for ImageNet's. `FileNames` holds the same names in two objects (a bytes buffer and a numpy array of
offsets) that are only ever read: workers share their pages with the main process for good, and the whole
index costs about 45 MB for ImageNet's 1.28 million names instead of 125 MB.

Names are `str` as the file system gives them: bytes that are not UTF-8 are kept as surrogate escapes
(`os.fsdecode`), so every name round-trips exactly; the buffer holds the original bytes.
"""
from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator

import numpy as np

CHUNK = 65_536  # names turned into Python objects at a time when all of them are read


def encode(name: str) -> bytes:
    """A name's bytes as the file system holds them (surrogate escapes back to their bytes)."""
    return name.encode("utf-8", "surrogateescape")


def decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


class FileNames:
    """An immutable sequence of names (str): `names[i]`, `len`, iteration, `index`, equality with a list, `take`.

    `data` is every name's bytes back to back, `offsets` (int64, len + 1) where name i starts and ends."""

    __slots__ = ("data", "offsets")

    def __init__(self, data: bytes, offsets: np.ndarray):
        offsets = np.asarray(offsets, dtype=np.int64)
        if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(data) or (
                len(offsets) > 1 and (np.diff(offsets) < 0).any()):
            raise ValueError("offsets must rise from 0 to the length of the data")
        self.data, self.offsets = bytes(data), offsets

    @classmethod
    def of(cls, names: Iterable[str]) -> "FileNames":
        """The names given as str (or a FileNames, returned as it is)."""
        if isinstance(names, FileNames):
            return names
        return cls.of_bytes([encode(name) for name in names])

    @classmethod
    def of_bytes(cls, names: list[bytes]) -> "FileNames":
        offsets = np.zeros(len(names) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, names), dtype=np.int64, count=len(names)), out=offsets[1:])
        return cls(b"".join(names), offsets)

    @classmethod
    def join(cls, parts: list["FileNames"]) -> "FileNames":
        """The names of `parts`, one after the other."""
        data = b"".join(part.data for part in parts)
        starts = np.cumsum([0] + [len(part.data) for part in parts[:-1]], dtype=np.int64)
        offsets = [np.zeros(1, dtype=np.int64)] + [part.offsets[1:] + start for part, start in zip(parts, starts)]
        return cls(data, np.concatenate(offsets))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def raw(self, index: int) -> bytes:
        """Name `index` as bytes."""
        index = operator.index(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"name {index} of {len(self)}")
        index %= len(self)
        return self.data[self.offsets[index] : self.offsets[index + 1]]

    def __getitem__(self, index) -> str:
        if isinstance(index, slice):  # as a list would: a list of the names
            return [self[i] for i in range(*index.indices(len(self)))]
        return decode(self.raw(index))

    def __iter__(self) -> Iterator[str]:
        return map(decode, self.raw_names())

    def raw_at(self, indices: Iterable[int]) -> list[bytes]:
        """The names at `indices` as bytes, in one pass (no per-name method call)."""
        where = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64)
        if len(where) and (where.min() < -len(self) or where.max() >= len(self)):
            raise IndexError(f"a name index outside 0..{len(self) - 1}")
        where %= max(len(self), 1)
        data = self.data
        return [data[a:b] for a, b in zip(self.offsets[where].tolist(), self.offsets[where + 1].tolist())]

    def names_at(self, indices: Iterable[int]) -> list[str]:
        """The names at `indices`, in one pass."""
        return [decode(raw) for raw in self.raw_at(indices)]

    def base_starts(self, first: int = 0, stop: int | None = None) -> np.ndarray:
        """Where the base name (after the last "/") of each of names first .. stop - 1 starts in `data`."""
        bounds = self.offsets[first : (len(self) if stop is None else min(stop, len(self))) + 1]
        if len(bounds) < 2:
            return np.zeros(0, dtype=np.int64)
        head = int(bounds[0])
        text = np.frombuffer(self.data, dtype=np.uint8, count=int(bounds[-1]) - head, offset=head)
        slashes = np.flatnonzero(text == ord("/")) + head
        if not len(slashes):
            return bounds[:-1].copy()
        last = np.searchsorted(slashes, bounds[1:]) - 1  # the last slash before each name's end
        after = np.where(last >= 0, slashes[np.maximum(last, 0)] + 1, 0)
        return np.maximum(after, bounds[:-1])

    def raw_names(self) -> Iterator[bytes]:
        """Every name as bytes, in order."""
        data = self.data
        for start, end in self.bounds():
            yield data[start:end]

    def bounds(self, chunk: int | None = None) -> Iterator[tuple[int, int]]:
        """(start, end) of every name in `data`, read `chunk` (CHUNK) names at a time, not a million Python ints at
        once."""
        chunk = chunk or CHUNK
        for first in range(0, len(self), chunk):
            part = self.offsets[first : first + chunk + 1].tolist()
            yield from zip(part, part[1:])

    def slice(self, start: int, stop: int) -> "FileNames":
        """Names start .. stop - 1."""
        first, last = int(self.offsets[start]), int(self.offsets[stop])
        return FileNames(self.data[first:last], self.offsets[start : stop + 1] - first)

    def prefixed(self, prefix: str) -> "FileNames":
        """Every name with `prefix` in front (no name is made a Python object)."""
        head = np.frombuffer(encode(prefix), dtype=np.uint8)
        count = len(self)
        offsets = self.offsets + len(head) * np.arange(count + 1, dtype=np.int64)
        joined = np.empty(int(offsets[-1]), dtype=np.uint8)
        is_head = np.zeros(len(joined), dtype=bool)
        for k in range(len(head)):
            is_head[offsets[:-1] + k] = True
        joined[is_head] = np.tile(head, count)
        joined[~is_head] = np.frombuffer(self.data, dtype=np.uint8)
        return FileNames(joined.tobytes(), offsets)

    def take(self, indices: Iterable[int]) -> "FileNames":
        """The names at `indices`, in their order."""
        return FileNames.of_bytes(self.raw_at(indices))

    def index(self, name: str) -> int:
        wanted = encode(name)
        for i, raw in enumerate(self.raw_names()):
            if raw == wanted:
                return i
        raise ValueError(f"{name!r} is not in the names")

    def __eq__(self, other) -> bool:
        if isinstance(other, FileNames):
            return self.data == other.data and np.array_equal(self.offsets, other.offsets)
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # equal to a list of the same names, so not hashable (as a list is not)

    def __repr__(self) -> str:
        shown = ", ".join(repr(self[i]) for i in range(min(3, len(self))))
        return f"FileNames({len(self)} names: {shown}{', ...' if len(self) > 3 else ''})"

    def __reduce__(self):
        return FileNames, (self.data, self.offsets)

    @property
    def nbytes(self) -> int:
        """Memory the names take (buffer and offsets)."""
        return len(self.data) + self.offsets.nbytes
