"""metrics.jsonl: one JSON object per line (training logs every N steps, every evaluation).

Each record is appended and fsynced; a record that cannot be written (a full disk) is taken back out,
so the file never ends in half a line (and a file that could not get its first line is removed)."""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semiclust.storage.atomic import write_error


class MetricsLog:
    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        line = (json.dumps(clean) + "\n").encode("utf-8")
        existed = self.path.exists()
        try:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as err:
            raise write_error(self.path, err) from None
        size = os.fstat(descriptor).st_size
        try:
            os.write(descriptor, line)
            os.fsync(descriptor)
        except OSError as err:
            os.ftruncate(descriptor, size)
            if not existed:
                self.path.unlink(missing_ok=True)
            raise write_error(self.path, err) from None
        finally:
            os.close(descriptor)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every readable record of a metrics.jsonl, damaged lines left out (`read_metrics_file` says which)."""
    return read_metrics_file(path).records


RECORD_START = re.compile(r'\{\s*"')
MAX_SCANNED_LINE = 65536  # characters; a record is a few hundred, a longer damaged line is not searched for glued ones


@dataclass
class MetricsFile:
    """A metrics.jsonl as read: its records, and its damaged lines (1-based), with the records recovered from them."""

    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    damaged: list[int] = field(default_factory=list)
    recovered: int = 0

    def warning(self) -> str | None:
        """One line naming the file, how many lines were damaged and the first, or None for a sound file."""
        if not self.damaged:
            return None
        count, first = len(self.damaged), self.damaged[0]
        where = f"{count} damaged line (line {first})" if count == 1 else f"{count} damaged lines (line {first}, the first)"
        kept = (f"{self.recovered} record{'s' * (self.recovered != 1)} recovered from {'it' if count == 1 else 'them'}, "
                "the rest left out" if self.recovered else "left out")
        return (f"'{self.path}' has {where}: a record cut short by a crash, or records glued on one line by a resume of "
                f"an older semiclust; {kept}; {len(self.records)} records read in all")


NUMBERS = ("loss", "loss_labeled", "loss_unlabeled", "lr", "img_per_s", "elapsed_s", "top1", "top5")  # read as numbers


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_record(value: Any) -> bool:
    """A record as semiclust writes it: a JSON object with a `type`, an integer `step` and numbers (or null) where
    plot and compare read numbers; an evaluation also has its top-1 / top-5 and its split."""
    if not isinstance(value, dict) or not isinstance(value.get("type"), str) or not is_number(value.get("step")):
        return False
    if not isinstance(value["step"], int) or not all(value.get(k) is None or is_number(value[k]) for k in NUMBERS):
        return False
    return value["type"] != "eval" or (is_number(value.get("top1")) and is_number(value.get("top5"))
                                        and isinstance(value.get("split"), str))


def line_records(text: str) -> tuple[list[dict[str, Any]], bool]:
    """The records of one line and whether the line was damaged: one whole record, or (damaged) the whole records
    found in it, such as a record appended by a resume after a line cut short."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        pass
    else:
        return ([value], False) if is_record(value) else ([], True)
    found: list[dict[str, Any]] = []
    if len(text) > MAX_SCANNED_LINE:
        return found, True
    decoder, position = json.JSONDecoder(), 0
    for start in RECORD_START.finditer(text):
        if start.start() < position:
            continue
        try:
            value, end = decoder.raw_decode(text, start.start())
        except (ValueError, RecursionError):
            continue
        if is_record(value):
            found.append(value)
            position = end
    return found, True


def read_metrics_file(path: Path) -> MetricsFile:
    """A metrics.jsonl read line by line, tolerating damage: a line that is not one whole record (cut short by a
    crash, glued to the next by a resume, not UTF-8, edited) is left out and counted, whole records in it kept."""
    read = MetricsFile(Path(path))
    for number, raw in enumerate(Path(path).read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            records, damaged = line_records(raw.decode("utf-8"))
        except UnicodeDecodeError:
            records, damaged = [], True
        read.records.extend(records)
        if damaged:
            read.damaged.append(number)
            read.recovered += len(records)
    return read
