"""Device rules: which device a process trains on, its autocast dtype, and channels-last."""
from __future__ import annotations

import contextlib

import torch

from semiclust.engine import dist
from semiclust.errors import SemiclustError


def resolve_device(choice: str) -> torch.device:
    """auto: this process's CUDA device when one is visible, else the CPU."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise SemiclustError("runtime.device is 'cuda' but no CUDA device is visible; use device: auto or cpu.")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", dist.local_rank() if dist.is_distributed() else torch.cuda.current_device())


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None = fp32. auto: bf16 on CUDA devices that support it, fp32 on CPU (bf16 is slow there)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context of a step (a no-op context in fp32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def uses_channels_last(choice: str | bool, device: torch.device, model: torch.nn.Module) -> bool:
    has_conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return choice is True or (choice == "auto" and device.type == "cuda" and has_conv)
