"""Method parts whose state each process keeps for itself, declared by type (not found by name)."""
from __future__ import annotations

from torch import nn


class PerProcess(nn.Module):
    """Base of a method part whose state differs between processes (SwAV's queue holds this process's own
    embeddings): a checkpoint saves it for every rank and gives each rank its own back, never rank 0's. It is told
    when its buffers are replaced behind its back (a skipped step undone), so that a value it keeps on the host is
    read again."""

    def buffers_changed(self) -> None:
        """The buffers were replaced; nothing to do unless the part caches one of them on the host."""

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.buffers_changed()
