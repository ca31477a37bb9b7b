"""Evaluation: top-1/top-5 of the prototype classifier (argmax of prototype scores) on one centre view."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from semiclust.data.datasets import ImageSplit
from semiclust.data.transforms import center_view
from semiclust.recipe import EvalView


@dataclass
class EvalResult:
    top1: float
    top5: float
    n: int
    split: str
    matching: str = "identity"

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def predict_scores(network: torch.nn.Module, split: ImageSplit, view: EvalView, mean, std,
                   batch_size: int, device: torch.device) -> torch.Tensor:
    """Prototype scores (N x K, fp32, on CPU) of every image's centre view, in eval mode."""
    was_training = network.training
    network.eval()
    try:
        outputs = []
        for start in range(0, len(split), batch_size):
            images = split.images[start : start + batch_size].to(device)
            outputs.append(network(center_view(images, view, mean, std)).float().cpu())
        return torch.cat(outputs)
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


def evaluate(network: torch.nn.Module, split: ImageSplit, view: EvalView, mean, std, batch_size: int,
             device: torch.device, split_name: str, match: bool = False) -> EvalResult:
    """Accuracy of argmax over prototype scores. With `match` (no labels in training), prototypes are
    first mapped to classes by the best one-to-one matching on this split, and scores permuted."""
    scores = predict_scores(network, split, view, mean, std, batch_size, device)
    labels = split.labels
    matching = "identity"
    if match:
        mapping = match_clusters(scores.argmax(dim=1), labels, scores.shape[1])
        permuted = torch.empty_like(scores)
        permuted[:, mapping] = scores
        scores, matching = permuted, "hungarian"
    return EvalResult(topk_accuracy(scores, labels, 1), topk_accuracy(scores, labels, 5), len(labels), split_name, matching)


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
