"""Projection heads and class prototypes (the classifier IS the prototype layer).

- `ProjectionHead`: MLP on backbone features, then L2 normalisation (SwAV's projector with
  BatchNorm + ReLU, or DINO's GELU MLP with a bottleneck, chosen by the recipe's `model.head`).
- `UnitPrototypes` (Suave/SwAV): bias-free, rows renormalised to unit norm, so scores are cosines.
- `WeightNormPrototypes` (Daino/DINO): weight-normalised, magnitude g trainable (norm_last_layer=False).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semiclust.config.schema import Head


class ProjectionHead(nn.Module):
    """features -> MLP -> L2-normalised embedding of size `spec.out`."""

    def __init__(self, in_features: int, spec: Head):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(spec.layers - 1):
            layers.append(nn.Linear(width, spec.hidden))
            if spec.batchnorm:
                layers.append(nn.BatchNorm1d(spec.hidden))
            layers.append(nn.ReLU(inplace=True) if spec.activation == "relu" else nn.GELU())
            width = spec.hidden
        layers.append(nn.Linear(width, spec.out))
        self.mlp = nn.Sequential(*layers)
        if spec.init == "trunc_normal":
            for module in self.mlp.modules():
                if isinstance(module, nn.Linear):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    nn.init.zeros_(module.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(features).float(), dim=1)


class UnitPrototypes(nn.Module):
    """K unit-norm prototype vectors; scores = cosine(embedding, prototype) in [-1, 1]."""

    def __init__(self, dim: int, num_prototypes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_prototypes, dim))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> None:
        """Renormalise each prototype to unit L2 norm (done before every forward and after each step)."""
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def unit_weight(self) -> torch.Tensor:
        return self.weight

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings @ self.weight.t()


class WeightNormPrototypes(nn.Module):
    """weight = g * v / ||v|| per prototype; g starts at 1 and is trained (DINO's norm_last_layer=False)."""

    def __init__(self, dim: int, num_prototypes: int):
        super().__init__()
        self.v = nn.Parameter(torch.empty(num_prototypes, dim))
        nn.init.kaiming_uniform_(self.v, a=5**0.5)
        self.g = nn.Parameter(torch.ones(num_prototypes))

    def unit_weight(self) -> torch.Tensor:
        return F.normalize(self.v, dim=1)

    def normalize_(self) -> None:
        """Nothing to do: the normalisation is part of the parametrisation."""

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings @ (self.g.unsqueeze(1) * self.unit_weight()).t()
