"""The two index streams of a step, as pure functions of the global step.

Unlabeled: one epoch is one pass over the unlabeled set, shuffled per epoch and sharded across
processes like DistributedSampler (drop_last). Labeled: the labeled subset is re-shuffled on every
pass (never replayed in the same order, never restarted on resume). Because each batch depends
only on (seed, step, rank, world size), resuming at any step continues both streams exactly.
"""
from __future__ import annotations

import enum

import torch

from semiclust.errors import SemiclustError

_UNLABELED_STREAM = 1
_LABELED_STREAM = 2


class Stream(enum.Enum):
    """The two streams a step may draw from; each method declares the set it uses."""

    LABELED = "labeled"
    UNLABELED = "unlabeled"


BOTH = frozenset({Stream.LABELED, Stream.UNLABELED})


def _permutation(size: int, seed: int, stream: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed((seed * 1_000_003 + stream * 7_919 + epoch) % (2**63))
    return torch.randperm(size, generator=generator)


class IndexStream:
    """Batches of `batch` indices per process out of `pool`, reshuffled on each pass over it."""

    def __init__(self, pool: torch.Tensor, batch: int, seed: int, stream: int, rank: int = 0, world: int = 1):
        self.pool, self.batch, self.seed, self.stream = pool, batch, seed, stream
        self.rank, self.world = rank, world
        self.batches_per_pass = len(pool) // (batch * world)
        self._cached: tuple[int, torch.Tensor] | None = None

    def _pass_order(self, pass_index: int) -> torch.Tensor:
        if self._cached is None or self._cached[0] != pass_index:
            order = self.pool[_permutation(len(self.pool), self.seed, self.stream, pass_index)]
            usable = self.batches_per_pass * self.batch * self.world
            self._cached = (pass_index, order[:usable][self.rank :: self.world])
        return self._cached[1]

    def indices(self, step: int) -> torch.Tensor:
        """The batch this process uses at global step `step`."""
        pass_index, position = divmod(step, self.batches_per_pass)
        return self._pass_order(pass_index)[position * self.batch : (position + 1) * self.batch]


def unlabeled_pool(size: int, held_out: torch.Tensor | None = None) -> torch.Tensor:
    """The training indices the unlabeled stream draws from: all of them but a held-out validation split."""
    pool = torch.arange(size)
    if held_out is None or not len(held_out):
        return pool
    keep = torch.ones(size, dtype=torch.bool)
    keep[held_out] = False
    return pool[keep]


def unlabeled_stream(pool: int | torch.Tensor, batch: int, seed: int, rank: int = 0, world: int = 1) -> IndexStream:
    """The unlabeled stream over `pool` (training indices, or their number: all of them)."""
    pool = torch.arange(pool) if isinstance(pool, int) else pool
    if len(pool) < batch * world:
        raise SemiclustError(
            f"the unlabeled set has {len(pool)} images, fewer than the {batch * world} one batch draws ({batch} on each of "
            f"{world} process(es)); lower data.batch.unlabeled."
        )
    return IndexStream(pool, batch, seed, _UNLABELED_STREAM, rank, world)


def labeled_stream(indices: torch.Tensor, batch: int, seed: int, rank: int = 0, world: int = 1) -> IndexStream:
    if len(indices) < batch * world:
        raise SemiclustError(
            f"the labeled subset has {len(indices)} images, fewer than the {batch * world} one labeled batch draws "
            f"({batch} on each of {world} process(es)); lower data.batch.labeled (it is the batch over all processes)."
        )
    return IndexStream(indices, batch, seed, _LABELED_STREAM, rank, world)
