"""Batch statistics shared across processes: torch's SyncBatchNorm on CUDA, an all-reduce
BatchNorm on CPU (where nn.SyncBatchNorm raises)."""
from __future__ import annotations

import torch
import torch.distributed
from torch import nn

from semiclust.engine import dist


class AllReduceSum(torch.autograd.Function):
    """A differentiable sum over processes: the backward sums the gradients the same way (what
    torch.distributed.nn.functional.all_reduce does, which torch 2.14 deprecates with a warning)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return AllReduceSum.apply(grad)


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode mean and variance are computed over all processes' rows.

    Sums are all-reduced with a differentiable all-reduce, so gradients match a single process
    holding the whole batch. Works for 2-D (N, C) and 4-D (N, C, H, W) inputs on any device.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 3, 4, 5):
            raise ValueError(f"expected 2-D to 5-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_distributed()):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=torch.float32)
        stats = torch.cat([x.float().sum(dims), (x.float() ** 2).sum(dims), count])
        stats = AllReduceSum.apply(stats)
        channels = x.shape[1]
        total = stats[-1]
        mean = stats[:channels] / total
        var = stats[channels : 2 * channels] / total - mean**2
        if self.track_running_stats:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.num_batches_tracked += 1
                unbiased = var * total / (total - 1).clamp(min=1)
                self.running_mean.mul_(1 - momentum).add_(mean.detach() * momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach() * momentum)
        shape = [1, channels] + [1] * (x.dim() - 2)
        out = (x.float() - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, use_cuda: bool) -> nn.Module:
    """Replace every BatchNorm layer by a cross-process one (same parameters and buffers)."""
    if use_cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, AllReduceBatchNorm):
        replacement = AllReduceBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                         module.track_running_stats)
        replacement.load_state_dict(module.state_dict())
        replacement.train(module.training)
        return replacement
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child, use_cuda))
    return module
