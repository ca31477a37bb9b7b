"""SIGTERM / SIGINT become a request to checkpoint and stop at the end of the current step."""
from __future__ import annotations

import signal
import threading
from types import FrameType

from semiclust.errors import SemiclustError


class TrainingStopped(SemiclustError):
    """Raised after a signal: a checkpoint was written and the run can be resumed."""


class StopRequest:
    """Context manager installing handlers that record the first signal instead of dying mid-step.

    A second signal of the same kind restores the default behaviour (so a double Ctrl-C kills).
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.signal_name is not None:
            signal.signal(number, signal.SIG_DFL)
            signal.raise_signal(number)
            return
        self.signal_name = signal.Signals(number).name

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGTERM, signal.SIGINT):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
