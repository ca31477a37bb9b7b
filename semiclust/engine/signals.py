"""SIGTERM / SIGINT over a training process's whole lifetime: a request to checkpoint and stop at the end of
the current step while steps run, and an immediate, clean unwinding everywhere else.

A Slurm time limit or a Ctrl-C can arrive at any moment: while the run is built, during a budget's
calibration, a step, a checkpoint write, the final evaluation or the final checkpoint. Inside `deferred()`
(the steps, the calibration) the signal is only recorded and the loop acts on it at the end of the step.
Elsewhere the handler raises `Stopped`, a BaseException like KeyboardInterrupt, so that it passes through the
`except Exception` of decoders and trackers: every `finally` runs (a file being written is removed, the run
directory's lock released) and the trainer turns it into one paragraph naming the last checkpoint.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Iterator

from semiclust.errors import SemiclustError

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(SemiclustError):
    """Raised after a signal: a checkpoint was written and the run can be resumed."""


class Stopped(BaseException):
    """A signal outside the steps: unwinds the process at once (see the module docstring)."""

    def __init__(self, signal_name: str):
        super().__init__(f"stopped by {signal_name}")
        self.signal_name = signal_name


def exit_code(signal_name: str | None) -> int:
    """The shell's convention for a process ended by a signal: 130 for SIGINT, 143 for SIGTERM."""
    return 130 if signal_name == "SIGINT" else 143


class StopRequest:
    """Context manager installing the handlers for its whole block. The first signal is recorded (and raised as
    `Stopped` outside `deferred()`); a second one restores the default behaviour, so a double Ctrl-C kills."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        self._deferred = 0

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.signal_name is not None:
            signal.signal(number, signal.SIG_DFL)
            signal.raise_signal(number)
            return
        self.signal_name = signal.Signals(number).name
        if not self._deferred:
            raise Stopped(self.signal_name)

    @contextmanager
    def deferred(self) -> Iterator["StopRequest"]:
        """Inside this block a signal is only recorded: the caller checks `requested` at safe points."""
        self._deferred += 1
        try:
            yield self
        finally:
            self._deferred -= 1

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
