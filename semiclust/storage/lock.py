"""One live run per folder: an OS-level lock (fcntl.flock) on FOLDER/.lock, whose content names the
holder (host, PID, start time). The kernel releases it when the holder dies, so a lock file left by a
killed run is taken over, with a warning that says whose it was."""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from pathlib import Path

from semiclust.errors import SemiclustError
from semiclust.storage.atomic import write_error

LOCK_NAME = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(text: str) -> dict:
    try:
        found = json.loads(text)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


class FolderLock:
    """The lock of one folder; `acquire` refuses a folder another live run holds."""

    def __init__(self, folder: Path):
        self.folder, self.path = Path(folder), Path(folder) / LOCK_NAME
        self._descriptor: int | None = None

    def acquire(self) -> str | None:
        """Take the lock (creating the folder); returns a warning when a dead run's lock was taken over. A folder
        or lock file that cannot be written (a full disk) is one paragraph, and leaves no lock file behind."""
        existed = self.path.exists()
        try:
            return self._acquire()
        except OSError as err:
            held, self._descriptor = self._descriptor, None
            if held is not None:
                os.close(held)
            if held is not None or not existed:  # a lock file this process made or held: never left half-written
                self.path.unlink(missing_ok=True)
            raise write_error(self.path, err) from None

    def _acquire(self) -> str | None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # the file may be replaced between open and lock by a run releasing it
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(os.read(descriptor, 4096).decode("utf-8", "replace"))
                os.close(descriptor)
                raise self._in_use(holder) from None
            if os.path.exists(self.path) and os.fstat(descriptor).st_ino == os.stat(self.path).st_ino:
                self._descriptor = descriptor
                return self._take_over(_holder(os.read(descriptor, 4096).decode("utf-8", "replace")))
            os.close(descriptor)
        raise SemiclustError(f"could not lock '{self.path}': it kept changing; is another run starting in it?")

    def _in_use(self, holder: dict) -> SemiclustError:
        who = f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}, since {holder.get('started', '?')}"
        return SemiclustError(
            f"run directory '{self.folder}' is in use: it is still training ({who}). A folder holds one run at a "
            f"time: wait for it to finish or stop it (`kill {holder.get('pid', 'PID')}` on {holder.get('host', 'its host')}), "
            "or choose another --out.")

    def _take_over(self, previous: dict) -> str | None:
        """Write this process as the holder; say whose lock it was if a killed run left one."""
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(self._descriptor, 0)
        os.pwrite(self._descriptor, json.dumps(me).encode(), 0)
        os.fsync(self._descriptor)
        if not previous.get("pid"):
            return None
        if previous.get("host") == me["host"]:
            state = "no longer running" if not _alive(int(previous["pid"])) else "not holding it any more"
            return f"took over the lock of PID {previous['pid']} ({state}) in '{self.folder}'"
        return f"took over the lock of PID {previous['pid']} on host {previous.get('host')}, which no longer holds it"

    def release(self) -> None:
        """Remove the lock file and free the lock (the file goes first, while the lock is still held)."""
        if self._descriptor is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)
            os.close(self._descriptor)
            self._descriptor = None
