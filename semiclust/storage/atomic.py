"""Atomic file writes: a reader never sees half a file, and a crash or a full disk leaves the previous
file (or none) where a reader looks. Every file semiclust writes goes through `write_atomic`, and a
failed write is one `WriteFailed` paragraph naming the file and the free space, never a traceback."""
from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from semiclust.errors import SemiclustError

TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")  # what write_atomic leaves if the process is killed


class WriteFailed(SemiclustError):
    """A file could not be written (full disk, read-only or missing place); `path` names it."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"could not write '{path}': {reason}", exit_code=1)
        self.path = path


def human_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def mount_point(path: Path) -> Path:
    path = existing_ancestor(path)
    while not os.path.ismount(path):
        path = path.parent
    return path


def write_error(path: Path, err: OSError) -> WriteFailed:
    """The one wording of a failed write: what the system said, and the free space where it happened."""
    place = existing_ancestor(path.parent)
    free = f"{human_bytes(shutil.disk_usage(place).free)} free on {mount_point(place)}"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return WriteFailed(path, f"no space left on the device ({free})")
    return WriteFailed(path, f"{err.strerror or err} ({free})")


class _Recording:
    """A file whose failed writes are remembered: torch.save turns them into a RuntimeError, and the
    OSError behind it is what says why (no space left, a read-only device, ...)."""

    def __init__(self, file: BinaryIO):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


def write_atomic(path: Path | str, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(file)` on a temporary file beside `path`, fsync it, rename it over `path`, fsync the folder.

    The temporary file is `.NAME.XXXX.tmp` in the same folder (so the rename is atomic) and is
    removed if anything fails, whatever the exception; an OSError becomes a WriteFailed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(handle, file_mode(path))
    except OSError as err:
        raise write_error(path, err) from None
    recording = None
    try:
        with os.fdopen(handle, "wb") as file:
            recording = _Recording(file)
            write(recording)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        sync_folder(path.parent)
    except OSError as err:
        Path(temporary).unlink(missing_ok=True)
        raise write_error(path, err) from None
    except BaseException as err:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(err, RuntimeError) and recording is not None and recording.error is not None:
            raise write_error(path, recording.error) from None
        raise
    return path


def process_umask() -> int:
    """This process's umask, read without changing it (Linux's /proc), else set and put back at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode(path: Path) -> int:
    """The permissions a written file gets: those of the file it replaces, else what open() would give
    (0666 less the umask). mkstemp's 0600 made every recipe, checkpoint and export private to its writer, so that
    teammates on a shared cluster could not read a run."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~process_umask()


def sync_folder(folder: Path) -> None:
    """fsync a folder, so that a rename into it survives a crash (not every filesystem allows it)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(descriptor)


def write_text(path: Path | str, text: str) -> Path:
    return write_atomic(path, lambda file: file.write(text.encode("utf-8")))


def write_bytes(path: Path | str, data: bytes) -> Path:
    return write_atomic(path, lambda file: file.write(data))


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files a killed write_atomic left in `folder` (not recursive); returns them."""
    removed = []
    for path in sorted(Path(folder).glob(".*.tmp")) if Path(folder).is_dir() else []:
        if path.is_file() and TEMPORARY.match(path.name):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def check_writable(path: Path | str, what: str, fix: str) -> Path:
    """Refuse, before any work, an output path that cannot be written: an existing folder, a place under a
    file, or a folder that refuses new files (read-only, /proc, no permission)."""
    path = Path(path)
    if path.is_dir():
        raise SemiclustError(f"{what} '{path}' is a folder; give a file path. {fix}")
    place = existing_ancestor(path.parent)
    if not place.is_dir():
        raise SemiclustError(f"{what} '{path}' cannot be written: '{place}' is a file, not a folder. {fix}")
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=place)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise SemiclustError(f"{what} '{path}' cannot be written ({err.strerror or err} in '{place}'). {fix}") from None
    return path
