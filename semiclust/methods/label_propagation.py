"""Label propagation over a k-nearest-neighbour graph of features (Zhou et al. 2004, as Iscen et al. 2019 use it
for deep semi-supervised learning): a few labeled images spread their class over the graph of every image's
neighbours, which follows a class that is several modes in feature space where one balanced cluster per class does
not. Pure functions of tensors: the graph, the linear solve (conjugate gradients, all classes at once), and the
targets with their confidence.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class KnnGraph:
    """A symmetric k-nearest-neighbour graph, normalised as D^-1/2 W D^-1/2: row i's neighbours `index[i]` with
    weights `weight[i]` (W + W^T, so an edge found from either end counts from both)."""

    index: torch.Tensor  # N x k, the neighbours found from each node
    weight: torch.Tensor  # N x k, their normalised weights

    def __matmul__(self, values: torch.Tensor) -> torch.Tensor:
        """S @ values for the normalised symmetric S = D^-1/2 (W + W^T) D^-1/2 (values: N x C)."""
        forward = (self.weight.unsqueeze(2) * values[self.index]).sum(dim=1)  # W @ values
        backward = torch.zeros_like(values).index_add_(0, self.index.flatten(),
                                                       (self.weight.unsqueeze(2) * values.unsqueeze(1)).flatten(0, 1))
        return forward + backward  # both halves already carry D^-1/2 on each side


SIMILARITIES_AT_ONCE = 2**26  # 256 MB of fp32 similarities a chunk, whatever the number of images


def knn_graph(features: torch.Tensor, k: int, power: float = 3.0, chunk: int = 2048) -> KnnGraph:
    """The graph of each image's k most similar others (cosine similarity of the L2-normalised features, negative
    similarities cut to 0, raised to `power` as Iscen et al.), symmetrised and degree-normalised; computed where the
    features are, `chunk` rows at a time (fewer when the images are many)."""
    unit = F.normalize(features.float(), dim=1)
    k = min(k, len(unit) - 1)
    chunk = max(1, min(chunk, SIMILARITIES_AT_ONCE // len(unit)))
    indices, weights = [], []
    for start in range(0, len(unit), chunk):
        similarity = unit[start : start + chunk] @ unit.t()
        rows = torch.arange(start, start + len(similarity), device=unit.device)
        similarity[torch.arange(len(similarity), device=unit.device), rows] = -math.inf  # not one's own neighbour
        top, index = similarity.topk(k, dim=1)
        indices.append(index)
        weights.append(top.clamp(min=0).pow(power))
    index, weight = torch.cat(indices), torch.cat(weights)
    degree = weight.sum(dim=1).index_add(0, index.flatten(), weight.flatten())
    scale = degree.clamp(min=1e-12).rsqrt()
    return KnnGraph(index, weight * scale.unsqueeze(1) * scale[index])


def conjugate_gradients(apply, rhs: torch.Tensor, iterations: int, tolerance: float = 1e-6) -> torch.Tensor:
    """Solve A x = rhs for a symmetric positive definite A given as `apply(x)`, every column of rhs (N x C) its own
    system, in at most `iterations` steps (columns that converged stop moving)."""
    x = torch.zeros_like(rhs)
    residual = rhs.clone()
    direction = residual.clone()
    norm = (residual * residual).sum(dim=0)
    stop = tolerance**2 * norm.clamp(min=1e-30)
    for _ in range(iterations):
        active = norm > stop
        if not bool(active.any()):
            break
        applied = apply(direction)
        step = torch.where(active, norm / (direction * applied).sum(dim=0).clamp(min=1e-30), torch.zeros_like(norm))
        x += step * direction
        residual -= step * applied
        new_norm = (residual * residual).sum(dim=0)
        direction = residual + (new_norm / norm.clamp(min=1e-30)) * direction
        norm = new_norm
    return x


@dataclass(frozen=True)
class Propagated:
    """Every image's propagated class and how much to trust it (1 - normalised entropy of its class scores)."""

    classes: torch.Tensor  # N, int64
    confidence: torch.Tensor  # N, in [0, 1]


def propagate(graph: KnnGraph, labeled: torch.Tensor, labels: torch.Tensor, num_classes: int,
              alpha: float = 0.99, iterations: int = 20) -> Propagated:
    """Solve (I - alpha S) Z = Y, Y the labeled images' one-hot rows divided by their class's count (each class
    seeds the same mass), then normalise each class's column to sum 1 (so that no class takes the graph over by
    its size) and read each image's class and confidence."""
    device = graph.index.device
    labeled, labels = labeled.to(device), labels.to(device)
    seeds = torch.zeros(len(graph.index), num_classes, device=device)
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).float()
    seeds[labeled, labels] = 1.0 / counts[labels]
    scores = conjugate_gradients(lambda z: z - alpha * (graph @ z), seeds, iterations).clamp(min=0)
    scores = scores / scores.sum(dim=0, keepdim=True).clamp(min=1e-30)
    probabilities = scores / scores.sum(dim=1, keepdim=True).clamp(min=1e-30)
    entropy = -(probabilities * probabilities.clamp(min=1e-30).log()).sum(dim=1)
    confidence = (1 - entropy / math.log(num_classes)).clamp(0, 1) if num_classes > 1 else torch.ones(len(scores), device=device)
    classes = probabilities.argmax(dim=1)
    classes[labeled] = labels  # a labeled image keeps its label
    confidence[labeled] = 1.0
    return Propagated(classes, confidence)


class PropagatedTargets(torch.nn.Module):
    """A method's table of every training image's propagated class and confidence, filled once when the fine-tuning
    stage starts (`schedule.finetune.targets: propagated`) and saved with the method, so that a run resumed inside the
    stage trains towards the same targets."""

    def __init__(self, images: int):
        super().__init__()
        self.register_buffer("classes", torch.zeros(images, dtype=torch.long))
        self.register_buffer("confidence", torch.zeros(images))
        self.register_buffer("filled", torch.zeros((), dtype=torch.bool))
        self._ready_here: bool | None = None  # `filled` as read on the host (the queue's rule: no device read a step)

    @property
    def ready(self) -> bool:
        """Whether the table was filled, without reading the device buffer each step."""
        if self._ready_here is None:
            self._ready_here = bool(self.filled)
        return self._ready_here

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._ready_here = None  # a checkpoint (or a snapshot put back): read `filled` again

    def fill(self, rows: torch.Tensor, propagated: Propagated) -> None:
        """Targets of the images at `rows` (the readable ones; an unreadable image keeps weight 0)."""
        self.classes.zero_()
        self.confidence.zero_()
        self.classes[rows.to(self.classes.device)] = propagated.classes.to(self.classes.device)
        self.confidence[rows.to(self.confidence.device)] = propagated.confidence.to(self.confidence.device)
        self.filled.fill_(True)
        self._ready_here = True

    def of(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The classes and confidences of the images at `rows`."""
        return self.classes[rows], self.confidence[rows]
