"""The CPU all-reduce BatchNorm: two processes with half a batch each equal one BatchNorm on all of it."""
from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch import nn

from semiclust.engine.syncbn import AllReduceBatchNorm, convert_sync_batchnorm

pytestmark = pytest.mark.slow


def batch() -> torch.Tensor:
    return torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 2 + 1


def worker(rank: int, init_file: str, out_dir: str) -> None:
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), use_cuda=False)
    assert isinstance(model[0], AllReduceBatchNorm)
    x = batch()[rank * 4 : (rank + 1) * 4].requires_grad_(True)
    y = model(x)
    (y * torch.arange(y.numel()).view_as(y).float()[:, :, :, :] / 100).sum().backward()
    torch.save({"y": y.detach(), "grad": x.grad, "weight_grad": model[0].weight.grad,
                "running_mean": model[0].running_mean, "running_var": model[0].running_var},
               os.path.join(out_dir, f"rank{rank}.pt"))
    torch_dist.destroy_process_group()


def test_two_processes_match_one_batchnorm_over_the_whole_batch():
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(worker, args=(os.path.join(folder, "init"), folder), nprocs=2, join=True)
        parts = [torch.load(os.path.join(folder, f"rank{r}.pt"), weights_only=True) for r in range(2)]
    reference = nn.BatchNorm2d(3)
    x = batch().requires_grad_(True)
    y = reference(x)
    weights = torch.cat([torch.arange(4 * 75).view(4, 3, 5, 5).float() / 100] * 2)
    (y * weights).sum().backward()
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([p["grad"] for p in parts]), x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(parts[0]["weight_grad"] + parts[1]["weight_grad"], reference.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(parts[0]["running_mean"], reference.running_mean)
    torch.testing.assert_close(parts[0]["running_var"], reference.running_var)


def test_single_process_is_plain_batchnorm():
    converted = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), use_cuda=False)
    plain = nn.BatchNorm2d(3)
    x = batch()
    torch.testing.assert_close(converted(x), plain(x))
