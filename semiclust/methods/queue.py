"""SwAV's queue of past unlabeled embeddings: more columns for Sinkhorn when batches are small; its recipe
section (`method.queue`, which Suave and SwAV take) and how a method's queue is made from it."""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from semiclust.config.schema import Strict
from semiclust.errors import SemiclustError
from semiclust.methods.per_process import PerProcess


class Queue(Strict):
    """Suave/SwAV queue of past unlabeled embeddings, used by Sinkhorn once full (0 = off)."""

    length: Annotated[int, Field(ge=0)] = Field(0,
        description="embeddings kept in total over processes (0 = no queue); used only once full")
    start_epoch: Annotated[int, Field(ge=0)] = Field(0, description="epoch from which the queue is filled and used")


def queue_per_process(total: int, processes: int) -> int:
    """Each process's share of `method.queue.length` (a total over processes, so it must divide)."""
    if total % processes:
        raise SemiclustError(
            f"method.queue.length {total} is the total over processes and must be divisible by the "
            f"{processes} processes; use e.g. {total // processes * processes or processes}."
        )
    return total // processes


def queue_for(spec: Queue, target_crops: int, dim: int, processes: int) -> EmbeddingQueue | None:
    """This process's queue of `method.queue` (its share of the total length), or None when the length is 0."""
    length = queue_per_process(spec.length, processes) if spec.length else 0
    return EmbeddingQueue(target_crops, length, dim) if length else None


class EmbeddingQueue(PerProcess):
    """The last `length` L2-normalised embeddings of each target crop (never labeled samples).

    Newest first. Its contents and fill level are buffers, so they are checkpointed with the method, for each
    process apart (it holds this process's own embeddings).
    """

    def __init__(self, crops: int, length: int, dim: int):
        super().__init__()
        self.register_buffer("embeddings", torch.zeros(crops, length, dim))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self._filled_here: int | None = 0  # the fill level on the host: read back once after a load, then tracked

    @property
    def length(self) -> int:
        return self.embeddings.shape[1]

    @property
    def fill_level(self) -> int:
        """How many embeddings the queue holds, without reading the device buffer each step."""
        if self._filled_here is None:
            self._filled_here = int(self.filled)
        return self._filled_here

    @property
    def full(self) -> bool:
        return self.fill_level >= self.length

    def buffers_changed(self) -> None:
        """The buffers were replaced (a checkpoint loaded, a skipped step undone): read the fill level again."""
        self._filled_here = None

    @torch.no_grad()
    def push(self, per_crop: list[torch.Tensor]) -> None:
        """Shift the queue and put the newest batch (one tensor per target crop) in front."""
        batch = len(per_crop[0])
        if batch >= self.length:
            self.embeddings.copy_(torch.stack([e[:self.length] for e in per_crop]).float())
        else:
            self.embeddings[:, batch:] = self.embeddings[:, :-batch].clone()
            self.embeddings[:, :batch] = torch.stack(per_crop).float()
        self._filled_here = min(self.fill_level + batch, self.length)
        self.filled.fill_(self._filled_here)
