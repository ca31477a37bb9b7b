"""Image files under folders, listed once and remembered between runs (in data/cache_dir.py's folder).

Listing ImageNet's 1,000 class folders reads 1.28 million directory entries at every start. A listing is a
function of the directories' entries only (names and file types: no file is opened or stat'ed), and adding,
removing or renaming an entry changes its directory's modification and change times. So the listing of a
folder is kept with the identity and times of every directory it visited (device, inode, mtime and ctime in
nanoseconds), and reused only while each of them stats the same; any difference lists that folder again.

Two cases are never remembered, and are listed at every start:
- a folder holding a symbolic link anywhere in it: whether a link is listed depends on its target, which can
  change without any directory of the folder changing;
- a folder one of whose directories changed within cache_dir.RACY_NS (3 s) of the listing (by the directories'
  own times): a change in the same clock tick as the listing could leave the times as they were ("racy git");
  such a folder is remembered at a later start, once its times are old enough to tell.
A folder that could not be read whole is not remembered either. The file depends on the folder's real path, the
image extensions and VERSION: anything else is ignored, as is a damaged file.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import semiclust.data.cache_dir as cache_dir
from semiclust.data.cache_dir import array_text, cache_file, load_arrays, save_arrays, text_array
from semiclust.data.decode import IMAGE_EXTENSIONS, is_image_file
from semiclust.data.names import FileNames, encode

VERSION = "1"  # of the rules below and of the file's layout: a cache from another version is ignored


def _listed_file(entry: os.DirEntry) -> bool:
    """Whether a folder entry with an image name is listed: a regular file or a symbolic link to one (no extra stat
    for a plain file), or a broken link (listed so that decoding says what it points to); never a FIFO, a socket
    or a device, which no decoder can read and which can block a reader."""
    try:
        return entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path))
    except OSError:  # a link loop: listed, decoding names it
        return entry.is_symlink()


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a link loop is no folder
        return False


Identity = tuple[int, int, int, int]  # a directory's device, inode, mtime and ctime (ns)


def _identity(info: os.stat_result) -> Identity:
    return info.st_dev, info.st_ino, info.st_mtime_ns, info.st_ctime_ns


@dataclass
class Walk:
    """What listing one folder found: image paths relative to it (sorted), the directories it read (path relative
    to the folder, identity), whether it met a symbolic link and whether every directory could be read."""

    found: list[str]
    directories: list[tuple[str, Identity]]
    linked: bool
    complete: bool = True


def walk(folder: Path | str) -> Walk:
    """Image files anywhere under `folder`, as sorted POSIX paths relative to it (hidden entries skipped; links
    followed, each folder listed once). Names are kept as the file system holds them (not UTF-8 bytes included)."""
    found, seen, directories, linked, complete = [], set(), [], False, True
    pending = [(os.fspath(folder), "")]
    while pending:  # depth first, in sorted order: the first path to a folder reached twice is the one listed
        current, prefix = pending.pop()
        try:
            info = os.stat(current)
            if (info.st_dev, info.st_ino) in seen:  # a symbolic link back to a folder already listed
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(current) as scan:
                entries = sorted((e for e in scan if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError:  # a folder that vanished or cannot be read is skipped, as os.walk does
            complete = False  # never remembered: it may be readable next time
            continue
        directories.append((prefix, _identity(info)))
        folders = []
        for entry in entries:
            linked = linked or entry.is_symlink()
            if _is_folder(entry):
                folders.append((entry.path, f"{prefix}{entry.name}/"))
            elif is_image_file(entry.name) and _listed_file(entry):
                found.append(prefix + entry.name)
        pending.extend(reversed(folders))
    return Walk(sorted(found), directories, linked, complete)


@dataclass
class Listed:
    """The image files under some folders of a root: `files` (paths relative to the root, folder after folder in
    the order asked, sorted within each), how many each folder holds, and which folders hold a symbolic link."""

    files: FileNames
    counts: list[int]
    linked: list[bool]


class _Remembered:
    """A root's cache file, read: every folder's images in one FileNames, where each folder's run of them starts
    and ends, and the directories each folder's listing depends on."""

    def __init__(self, path: Path | None, real: str):
        self.files, self.ranges, self.directories = FileNames.of([]), {}, {}
        arrays = load_arrays(path)
        try:
            if arrays is not None and array_text(arrays["root"]) == real:
                self._read(arrays)
        except (KeyError, ValueError, IndexError):
            self.files, self.ranges, self.directories = FileNames.of([]), {}, {}

    def _read(self, arrays: dict[str, np.ndarray]) -> None:
        names = FileNames(_as_bytes(arrays["names"]), arrays["name_offsets"])
        files = FileNames(_as_bytes(arrays["images"]), arrays["image_offsets"])
        directories = FileNames(_as_bytes(arrays["directories"]), arrays["directory_offsets"])
        image_ends, directory_ends = np.cumsum(arrays["image_counts"]), np.cumsum(arrays["directory_counts"])
        identities = arrays["identities"].reshape(-1, 4).tolist()
        if not (len(names) == len(image_ends) == len(directory_ends) and image_ends[-1:].sum() == len(files)
                and directory_ends[-1:].sum() == len(directories) == len(identities)):
            raise ValueError("an inconsistent listing cache")
        ranges, needs = {}, {}
        for k, name in enumerate(names):
            ranges[name] = (int(image_ends[k - 1]) if k else 0, int(image_ends[k]))
            first = int(directory_ends[k - 1]) if k else 0
            needs[name] = [(directories[d], tuple(identities[d])) for d in range(first, int(directory_ends[k]))]
        self.files, self.ranges, self.directories = files, ranges, needs

    def still_valid(self, name: str, folder: Path) -> bool:
        """Whether `name` is remembered and every directory of its listing stats as it did (one stat each)."""
        if name not in self.ranges:
            return False
        for relative, expected in self.directories[name]:
            try:
                if _identity(os.stat(os.path.join(folder, relative) if relative else folder)) != expected:
                    return False
            except OSError:
                return False
        return True


def _as_bytes(array: np.ndarray) -> bytes:
    """A cache file's uint8 array as bytes, without a copy when it was read as bytes."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return base if isinstance(base, bytes) and len(base) == array.nbytes else array.tobytes()


def list_folders(root: Path | str, names: list[str]) -> Listed:
    """The image files under root/name for each of `names` ("" = root itself), from the cache where every
    directory of a folder is as it was, else listed (`walk`) and remembered for the next start."""
    root = Path(root)
    real = os.path.realpath(root)
    path = cache_file("listing", VERSION, repr(IMAGE_EXTENSIONS), real)
    remembered = _Remembered(path, real)
    folders = [root / name if name else root for name in names]
    valid = [remembered.still_valid(name, folder) for name, folder in zip(names, folders)]
    if all(valid) and names == list(remembered.ranges):  # everything as it was: the remembered names, as read
        counts = [last - first for first, last in remembered.ranges.values()]
        return Listed(remembered.files, counts, [False] * len(names))
    data, lengths, linked, kept = bytearray(), [], [], {}
    for name, folder, is_valid in zip(names, folders, valid):
        if is_valid:
            first, last = remembered.ranges[name]
            bounds = remembered.files.offsets
            data += memoryview(remembered.files.data)[bounds[first] : bounds[last]]
            lengths.append(np.diff(bounds[first : last + 1]))
            linked.append(False)
            kept[name] = remembered.directories[name]
            continue
        started, listed = time.time_ns(), walk(folder)
        encoded = [encode(f"{name}/{found}" if name else found) for found in listed.found]
        data += b"".join(encoded)
        lengths.append(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
        linked.append(listed.linked)
        times = [t for _, identity in listed.directories for t in identity[2:]]
        if listed.complete and not listed.linked and all(t < started - cache_dir.RACY_NS for t in times):
            kept[name] = listed.directories
    offsets = np.zeros(sum(map(len, lengths)) + 1, dtype=np.int64)
    np.cumsum(np.concatenate(lengths) if lengths else np.zeros(0, np.int64), out=offsets[1:])
    result = Listed(FileNames(bytes(data), offsets), [len(n) for n in lengths], linked)
    del data
    _remember(path, real, names, result, kept)
    return result


def _remember(path: Path | None, real: str, names: list[str], listed: Listed, kept: dict) -> None:
    """Write the listing of the folders that can be remembered (all of them, in the usual case) to the cache."""
    keep = [k for k, name in enumerate(names) if name in kept]
    if path is None or not keep:
        return
    files = listed.files
    if len(keep) < len(names):
        ends = np.cumsum(listed.counts)
        files = FileNames.join([files.slice(int(ends[k] - listed.counts[k]), int(ends[k])) for k in keep])
    directories = [(relative, identity) for k in keep for relative, identity in kept[names[k]]]
    folder_names = FileNames.of(names[k] for k in keep)
    relatives = FileNames.of(relative for relative, _ in directories)
    save_arrays(path, {
        "root": text_array(real), "names": _bytes(folder_names.data), "name_offsets": folder_names.offsets,
        "images": _bytes(files.data), "image_offsets": files.offsets,
        "image_counts": np.array([listed.counts[k] for k in keep], dtype=np.int64),
        "directories": _bytes(relatives.data), "directory_offsets": relatives.offsets,
        "directory_counts": np.array([len(kept[names[k]]) for k in keep], dtype=np.int64),
        "identities": np.array([identity for _, identity in directories], dtype=np.int64).reshape(-1, 4)})


def _bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)
