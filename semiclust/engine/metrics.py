"""metrics.jsonl: one JSON object per line (training logs every N steps, every evaluation).

Each record is appended and fsynced; a record that cannot be written (a full disk) is taken back out,
so the file never ends in half a line (and a file that could not get its first line is removed)."""
from __future__ import annotations

import json
import math
import os
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
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
