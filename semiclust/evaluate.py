"""Evaluation: top-1/top-5 of the prototype classifier (argmax of prototype scores) on one centre view."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator

import torch

from semiclust.data.datasets import FileSplit, Split
from semiclust.data.transforms import center_view
from semiclust.recipe import EvalView, Loader


@dataclass
class EvalResult:
    top1: float
    top5: float
    n: int
    split: str
    matching: str = "identity"
    unreadable: int = 0  # image files of the split that could not be decoded and were left out

    def as_dict(self) -> dict:
        return asdict(self)


class EvalViews:
    """The centre views of an evaluation split, normalised, on `device`, in batches with their labels.

    In-memory splits are resized on the device; image files are decoded and cropped by DataLoader
    workers (kept alive between evaluations when the recipe's loader says so). Unreadable files are
    left out and counted in `unreadable`."""

    def __init__(self, split: Split, view: EvalView, mean, std, batch_size: int, device: torch.device,
                 loader: Loader | None = None):
        self.split, self.view, self.batch_size, self.device = split, view, batch_size, device
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.unreadable = 0
        self._loader = None
        if isinstance(split, FileSplit):
            from semiclust.data.loader import EvalFiles, make_loader

            self._loader = make_loader(EvalFiles(split, view, batch_size), range(-(-len(split) // batch_size)),
                                       loader or Loader(), device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.unreadable = 0
        if self._loader is None:
            for start in range(0, len(self.split), self.batch_size):
                images = self.split.images[start : start + self.batch_size].to(self.device)
                yield center_view(images, self.view, self.mean, self.std), self.split.labels[start : start + self.batch_size]
            return
        for item in self._loader:
            self.unreadable += len(item["corrupt"])
            if len(item["labels"]):
                images = item["images"].to(self.device, non_blocking=True).float().div_(255)
                yield (images - self.mean) / self.std, item["labels"]


@torch.no_grad()
def predict_scores(network: torch.nn.Module, views: EvalViews) -> tuple[torch.Tensor, torch.Tensor]:
    """Prototype scores (N x K, fp32, on CPU) of every readable image's centre view, in eval mode,
    and the labels of those images."""
    was_training = network.training
    network.eval()
    try:
        outputs, labels = [], []
        for images, batch_labels in views:
            outputs.append(network(images).float().cpu())
            labels.append(batch_labels)
        return torch.cat(outputs), torch.cat(labels)
    finally:
        network.train(was_training)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Percentage of rows whose label is among the k highest scores (k capped at the class count)."""
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    return 100.0 * (top == labels.view(-1, 1)).any(dim=1).float().mean().item()


def match_clusters(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Prototype -> class permutation maximising agreement (Hungarian); for runs trained without labels."""
    from scipy.optimize import linear_sum_assignment

    counts = torch.zeros(num_classes, num_classes, dtype=torch.long)
    counts.index_put_((predicted, labels), torch.ones_like(labels), accumulate=True)
    rows, cols = linear_sum_assignment(-counts.numpy())
    mapping = torch.arange(num_classes)
    mapping[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return mapping


def evaluate(network: torch.nn.Module, views: EvalViews, split_name: str, match: bool = False) -> EvalResult:
    """Accuracy of argmax over prototype scores. With `match` (no labels in training), prototypes are
    first mapped to classes by the best one-to-one matching on this split, and scores permuted."""
    scores, labels = predict_scores(network, views)
    matching = "identity"
    if match:
        mapping = match_clusters(scores.argmax(dim=1), labels, scores.shape[1])
        permuted = torch.empty_like(scores)
        permuted[:, mapping] = scores
        scores, matching = permuted, "hungarian"
    return EvalResult(topk_accuracy(scores, labels, 1), topk_accuracy(scores, labels, 5), len(labels), split_name,
                      matching, views.unreadable)


def classifier_from_checkpoint(state: dict):
    """The evaluated network (teacher for Daino) and its validated recipe, rebuilt from a checkpoint."""
    from semiclust.models.network import Network
    from semiclust.recipe import validate

    recipe = validate(state["recipe"], "the checkpoint's recipe")
    info = state["classifier"]
    network = Network(recipe.model, info["in_chans"], info["num_classes"], info["prototypes"])
    prefix = info["prefix"] + "."
    weights = {k[len(prefix):]: v for k, v in state["method"].items() if k.startswith(prefix)}
    network.load_state_dict(weights)
    return network, recipe
