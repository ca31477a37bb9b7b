"""Evaluation: top-1/top-5 of the prototype classifier (argmax of prototype scores) on one centre view,
and the report of `semiclust eval` (per class, confusion, a kNN diagnostic on backbone features)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from semiclust.data.eval_views import EvalViews
from semiclust.errors import SemiclustError


@dataclass
class EvalResult:
    top1: float
    top5: float
    n: int
    split: str
    matching: str = "identity"
    unreadable: int = 0  # image files of the split that could not be decoded and were left out
    num_classes: int = 0  # classes scored (0: a result recorded before semiclust counted them)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def top5_trivial(self) -> bool:
        """Top-5 of five classes or fewer holds every class: always 100%, so it says nothing."""
        return 0 < self.num_classes <= TOP_K


TOP_K = 5  # the k of top-k accuracy


def top5_note(num_classes: int) -> str:
    """The words shown beside (or instead of) a top-5 that holds every class."""
    return f"top-5 is 100% with {num_classes} class{'es' if num_classes != 1 else ''}: every class is in the top 5"


def _require_images(outputs: list, views: EvalViews) -> None:
    if not outputs:
        raise SemiclustError(f"none of the {len(views.split)} evaluation images could be read ({views.unreadable} "
                             "unreadable); check the evaluation files with `semiclust data check RECIPE --all`.")


def predict_scores(network: torch.nn.Module, views: EvalViews) -> tuple[torch.Tensor, torch.Tensor]:
    """Prototype scores (N x K, fp32, on CPU) of every readable image's centre view, in eval mode,
    and the labels of those images."""
    _, scores, labels = _forward_views(network, views, keep_features=False)
    return scores, labels


@torch.no_grad()
def _forward_views(network: torch.nn.Module, views: EvalViews,
                   keep_features: bool) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """One pass over the views in eval mode: backbone features (when kept), prototype scores, labels."""
    was_training = network.training
    network.eval()
    try:
        features, scores, labels = [], [], []
        for images, batch_labels in views:
            feats = network.backbone(images)
            if keep_features:
                features.append(feats.float().cpu())
            scores.append(network.class_scores(network.scores(network.head(feats))).float().cpu())
            labels.append(batch_labels)
        _require_images(scores, views)
        return (torch.cat(features) if keep_features else None), torch.cat(scores), torch.cat(labels)
    finally:
        network.train(was_training)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Percentage of rows whose label is among the k highest scores (k capped at the class count), computed
    from integer counts so that 324 of 360 is exactly 90.0 (a float32 mean gives 89.99999...)."""
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    hits = int((top == labels.view(-1, 1)).any(dim=1).sum())
    return 100.0 * hits / len(labels)


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
    return evaluate_with_confusion(network, views, split_name, match)[0]


def evaluate_with_confusion(network: torch.nn.Module, views: EvalViews, split_name: str,
                            match: bool = False) -> tuple[EvalResult, torch.Tensor]:
    """`evaluate`, and the confusion matrix of the same predictions (row = true class)."""
    scores, labels = predict_scores(network, views)
    result, used = accuracy_result(scores, labels, split_name, match, views.unreadable)
    return result, confusion_matrix(used.argmax(dim=1), labels, used.shape[1])


def accuracy_result(scores: torch.Tensor, labels: torch.Tensor, split_name: str, match: bool,
                    unreadable: int) -> tuple[EvalResult, torch.Tensor]:
    """Top-1/top-5 of the scores, and the scores used (permuted to classes by the best matching when
    `match`: a run trained without labels has prototypes in no particular class order)."""
    matching = "identity"
    if match:
        mapping = match_clusters(scores.argmax(dim=1), labels, scores.shape[1])
        permuted = torch.empty_like(scores)
        permuted[:, mapping] = scores
        scores, matching = permuted, "hungarian"
    result = EvalResult(topk_accuracy(scores, labels, 1), topk_accuracy(scores, labels, TOP_K), len(labels), split_name,
                        matching, unreadable, scores.shape[1])
    return result, scores


# ---------------------------------------------------------------- the `semiclust eval` report
def features_and_scores(network: torch.nn.Module, views: EvalViews) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backbone features, prototype scores and labels of every readable image (one pass, eval mode)."""
    return _forward_views(network, views, keep_features=True)


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """K x K counts: row = true class, column = predicted class."""
    counts = torch.zeros(num_classes * num_classes, dtype=torch.long)
    counts.index_add_(0, labels * num_classes + predicted, torch.ones_like(labels))
    return counts.view(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Recall of each class in percent (NaN for a class with no evaluation image)."""
    totals = confusion.sum(dim=1).double()
    return 100.0 * confusion.diagonal().double() / totals.where(totals > 0, torch.tensor(float("nan"), dtype=torch.double))


def knn_scores(memory: torch.Tensor, memory_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
               k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Weighted k-nearest-neighbour votes (DINO's protocol): cosine similarity on L2-normalised features,
    the k most similar memory items vote for their class with weight exp(similarity / temperature). The weights
    are added into each query's row of classes (no queries x k x classes one-hot: 1.6 GB a chunk at 10,000
    classes)."""
    memory = torch.nn.functional.normalize(memory.float(), dim=1)
    k = min(k, len(memory))
    votes = []
    for start in range(0, len(queries), chunk):
        query = torch.nn.functional.normalize(queries[start : start + chunk].float(), dim=1)
        similarity, index = (query @ memory.t()).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes.append(torch.zeros(len(query), num_classes).scatter_add_(1, memory_labels[index], weights))
    return torch.cat(votes)


@dataclass
class EvalReport:
    """Everything `semiclust eval` prints: the classifier's accuracy, per class, its confusion matrix, and
    the kNN diagnostic on backbone features (None when no labeled memory could be rebuilt)."""

    result: EvalResult
    classes: list[str]
    per_class: torch.Tensor
    confusion: torch.Tensor
    knn_top1: float | None = None
    knn_top5: float | None = None
    knn_memory: int = 0

    def as_dict(self, include_confusion: bool) -> dict:
        out = {**self.result.as_dict(), "knn_top1": self.knn_top1, "knn_top5": self.knn_top5, "knn_memory": self.knn_memory,
               "per_class": {c: (None if v != v else v) for c, v in zip(self.classes, self.per_class.tolist())}}
        if include_confusion:
            out["confusion"] = self.confusion.tolist()
        return out


def evaluation_report(network: torch.nn.Module, views: EvalViews, split_name: str, classes: list[str],
                      match: bool = False, memory: EvalViews | None = None, knn_k: int = 20,
                      knn_temperature: float = 0.07) -> EvalReport:
    """The classifier's top-1/top-5, per-class accuracy and confusion on `views`; with `memory` (the
    labeled images), also the weighted kNN accuracy of backbone features as a diagnostic."""
    features, scores, labels = features_and_scores(network, views)
    result, scores = accuracy_result(scores, labels, split_name, match, views.unreadable)
    confusion = confusion_matrix(scores.argmax(dim=1), labels, len(classes))
    report = EvalReport(result, classes, per_class_accuracy(confusion), confusion)
    if memory is not None:
        memory_features, _, memory_labels = features_and_scores(network, memory)
        votes = knn_scores(memory_features, memory_labels, features, len(classes), knn_k, knn_temperature)
        report.knn_top1, report.knn_top5 = topk_accuracy(votes, labels, 1), topk_accuracy(votes, labels, 5)
        report.knn_memory = len(memory_labels)
    return report
