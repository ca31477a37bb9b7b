"""SwAV's queue of past unlabeled embeddings: more columns for Sinkhorn when batches are small."""
from __future__ import annotations

import torch
from torch import nn

from semiclust.errors import SemiclustError


def queue_per_process(total: int, processes: int) -> int:
    """Each process's share of `method.queue.length` (a total over processes, so it must divide)."""
    if total % processes:
        raise SemiclustError(
            f"method.queue.length {total} is the total over processes and must be divisible by the "
            f"{processes} processes; use e.g. {total // processes * processes or processes}."
        )
    return total // processes


class EmbeddingQueue(nn.Module):
    """The last `length` L2-normalised embeddings of each target crop (never labeled samples).

    Newest first. Its contents and fill level are buffers, so they are checkpointed with the method.
    """

    def __init__(self, crops: int, length: int, dim: int):
        super().__init__()
        self.register_buffer("embeddings", torch.zeros(crops, length, dim))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def length(self) -> int:
        return self.embeddings.shape[1]

    @property
    def full(self) -> bool:
        return int(self.filled) >= self.length

    @torch.no_grad()
    def push(self, per_crop: list[torch.Tensor]) -> None:
        """Shift the queue and put the newest batch (one tensor per target crop) in front."""
        batch = len(per_crop[0])
        if batch >= self.length:
            self.embeddings.copy_(torch.stack([e[:self.length] for e in per_crop]).float())
        else:
            self.embeddings[:, batch:] = self.embeddings[:, :-batch].clone()
            self.embeddings[:, :batch] = torch.stack(per_crop).float()
        self.filled.fill_(min(int(self.filled) + batch, self.length))
