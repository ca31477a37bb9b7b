"""Mixup / CutMix "extend" of the labeled batch: a mixed copy is appended, so labeled rows double. Suave's mixed
view of the unlabeled globals uses the same pair mix. Lambda, the Mixup/CutMix switch and the box are scalars that
decide the work, so `generator` is a CPU generator (on a GPU the trainer's host generator): nothing is read back."""
from __future__ import annotations

import math

import torch


def sample_beta(alpha: float, generator: torch.Generator) -> float:
    """One draw from Beta(alpha, alpha) by inverse CDF, so it uses (and advances) `generator`."""
    u = float(torch.rand((), generator=generator, device=generator.device))
    if alpha == 1.0:
        return u
    from scipy.special import betaincinv

    return float(betaincinv(alpha, alpha, u))


def cutmix_box(height: int, width: int, lam: float, generator: torch.Generator) -> tuple[int, int, int, int]:
    """A box (top, bottom, left, right) of area about (1 - lam) with a uniformly drawn centre."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy = int(torch.randint(height, (), generator=generator, device=generator.device))
    cx = int(torch.randint(width, (), generator=generator, device=generator.device))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right


def mix_pair(images: torch.Tensor, partner: torch.Tensor, mixup_prob: float, alpha: float,
             generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """`images` mixed with `partner` (same shape): Mixup with probability `mixup_prob`, else CutMix, one lambda
    ~ Beta(alpha, alpha) for the batch (CutMix's corrected to the pasted box's area); returns it too."""
    lam = sample_beta(alpha, generator)
    if float(torch.rand((), generator=generator, device=generator.device)) < mixup_prob:
        return lam * images + (1 - lam) * partner, lam
    height, width = images.shape[-2:]
    top, bottom, left, right = cutmix_box(height, width, lam, generator)
    mixed = images.clone()
    mixed[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
    return mixed, 1.0 - (bottom - top) * (right - left) / (height * width)


def mix_extend(
    images: torch.Tensor, targets: torch.Tensor, mixup_prob: float, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Append one mixed copy of the batch, partnered with the batch in reversed order.

    Mixup with probability `mixup_prob`, else CutMix (lambda corrected to the pasted box's area).
    `targets` are one-hot or soft (B x K); the mixed targets are lam * y + (1 - lam) * y_reversed.
    """
    mixed, lam = mix_pair(images, images.flip(0), mixup_prob, alpha, generator)
    mixed_targets = lam * targets + (1 - lam) * targets.flip(0)
    return torch.cat([images, mixed]), torch.cat([targets, mixed_targets])
