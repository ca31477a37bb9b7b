"""Optimisers: SGD, LARS (SwAV's LARC wrapper, clip=False) and AdamW, with optional no-decay groups."""
from __future__ import annotations

import torch
from torch import nn

from semiclust.config.schema import Optim


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose per-tensor step is scaled by trust * ||w|| / (||g|| + wd * ||w||).

    Matches SwAV's apex LARC(clip=False): weight decay is added to the gradient and scaled with it.
    A parameter group with `lars=False` takes plain SGD steps (used to exclude biases and norms).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 1e-8):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps, lars=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad.clone()
                if group["lars"]:
                    param_norm, grad_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(p.grad)
                    denominator = grad_norm + param_norm * group["weight_decay"] + group["eps"]
                    ratio = group["trust_coefficient"] * param_norm / denominator
                    ratio = torch.where((param_norm > 0) & (grad_norm > 0), ratio, torch.ones_like(ratio))
                    grad.mul_(ratio)
                state = self.state[p]
                if group["momentum"]:
                    buffer = state.get("momentum_buffer")
                    if buffer is None:
                        buffer = state["momentum_buffer"] = grad.clone()
                    else:
                        buffer.mul_(group["momentum"]).add_(grad)
                    grad = buffer
                p.add_(grad, alpha=-group["lr"])
        return loss


def undecayed(name: str, parameter: nn.Parameter, decay_magnitude: bool) -> bool:
    """Biases and 1-D (norm) parameters, except the prototypes' magnitude g when `decay_magnitude` (the release)."""
    if decay_magnitude and name.endswith("prototypes.g"):
        return False
    return parameter.ndim <= 1 or name.endswith(".bias")


def parameter_groups(model: nn.Module, spec: Optim) -> list[dict]:
    """One group, or two: decayed weights, and biases / 1-D (norm) parameters without decay (nor LARS); each
    split once more into backbone and the rest while a head warm-up trains the backbone at a scaled lr."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    scaled_backbone = spec.backbone_warmup_epochs > 0 and spec.backbone_warmup_lr_scale > 0
    parts = ([([(n, p) for n, p in named if n.startswith("backbone.")], {"backbone": True}),
              ([(n, p) for n, p in named if not n.startswith("backbone.")], {})] if scaled_backbone else [(named, {})])
    groups = []
    for members, tags in parts:
        if not spec.exclude_bias_and_norm:
            groups.append({"params": [p for _, p in members], **tags})
            continue
        plain = [undecayed(n, p, spec.decay_prototype_magnitude) for n, p in members]
        groups.append({"params": [p for (_, p), no in zip(members, plain) if not no], **tags})
        groups.append({"params": [p for (_, p), no in zip(members, plain) if no], "weight_decay": 0.0, "lars": False,
                       "no_decay": True, **tags})
    return groups


def build_optimizer(model: nn.Module, spec: Optim, lr: float, fused: bool = False) -> torch.optim.Optimizer:
    """The recipe's optimiser; `fused` (CUDA) uses torch's fused SGD/AdamW kernels."""
    groups = parameter_groups(model, spec)
    if spec.name == "lars":
        return LARS(groups, lr=lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                    trust_coefficient=spec.trust_coefficient)
    for group in groups:
        group.pop("lars", None)
    if spec.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=spec.momentum, nesterov=spec.nesterov,
                               weight_decay=spec.weight_decay, **({"fused": True} if fused else {}))
    return torch.optim.AdamW(groups, lr=lr, betas=spec.betas, weight_decay=spec.weight_decay,
                             **({"fused": True} if fused else {}))


def set_lr_and_decay(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float,
                     backbone_scale: float = 1.0) -> None:
    """Apply this step's scheduled values; no-decay groups keep a weight decay of 0; backbone groups (of a
    head warm-up) take `backbone_scale` times the lr."""
    for group in optimizer.param_groups:
        group["lr"] = lr * backbone_scale if group.get("backbone") else lr
        if not group.get("no_decay"):
            group["weight_decay"] = weight_decay
