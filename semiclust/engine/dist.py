"""torch.distributed behind a few functions that are no-ops for a single process (no group needed).

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; `init_from_env` starts the process group (NCCL on
GPUs, gloo on CPU). Everything else here works unchanged at world size 1.
"""
from __future__ import annotations

import gc
import os
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def launched_world_size() -> int:
    """The world size torchrun asked for (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launcher() -> list[str]:
    """The command that starts semiclust the way this process was started, for the commands a run prints: plain
    `semiclust`, or torchrun with this launch's processes per node (and, over several nodes, its node count and
    rendezvous endpoint, MASTER_ADDR:MASTER_PORT, to be run on every node)."""
    world, local = launched_world_size(), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return ["semiclust"]
    nodes = max(1, world // max(local, 1))
    where = ["--standalone"] if nodes == 1 else [
        "--nnodes", str(nodes), "--rdzv-backend", "c10d",
        "--rdzv-endpoint", f"{os.environ.get('MASTER_ADDR', 'HOST')}:{os.environ.get('MASTER_PORT', 'PORT')}"]
    return ["torchrun", *where, "--nproc_per_node", str(local), "-m", "semiclust"]


def init_from_env(use_cuda: bool) -> None:
    """Join the process group torchrun describes, once; nothing to do for a single process."""
    if launched_world_size() <= 1 or is_distributed():
        return
    if use_cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if use_cuda else "gloo")


def shutdown(together: bool = True) -> None:
    """Leave the process group. `together` (a run that ended well on every process): wait for the others first,
    so that none closes its connections while another still uses them. The group is then destroyed and its objects
    freed now, while the interpreter is whole: a gloo group freed during interpreter exit can abort the process
    ("terminate called without an active exception"), which torchrun reports as a failed run."""
    if is_distributed():
        if together:
            try:
                dist.barrier()
            except RuntimeError:  # another process left first (its own error stopped it): nobody to wait for
                pass
        dist.destroy_process_group()
        gc.collect()


def _all_reduce(tensor: torch.Tensor, op) -> torch.Tensor:
    """`op` over processes into a new tensor (the input is untouched); the input itself for one process."""
    if not is_distributed():
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=op)
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (returns a new tensor; the input is untouched)."""
    return _all_reduce(tensor, dist.ReduceOp.SUM)


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum over processes (returns a new tensor)."""
    return _all_reduce(tensor, dist.ReduceOp.MAX)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(tensor) / world_size()


def any_process(flag: bool, device: torch.device) -> bool:
    """True on every process if `flag` is true on any (for coordinated stops)."""
    if not is_distributed():
        return flag
    return bool(all_reduce_max(torch.tensor([float(flag)], device=device)).item())


def gather_objects(value: Any) -> list[Any]:
    """Every process's `value`, in rank order (picklable Python objects)."""
    if not is_distributed():
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def broadcast_object(value: Any) -> Any:
    """Rank 0's `value` on every process (picklable Python objects)."""
    if not is_distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()
