"""The losses, as pure functions: one soft cross-entropy, the swapped/teacher form, and the
row-count weighting that makes labeled and unlabeled parts a single loss. All in fp32."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean over rows of -sum(t * log_softmax(logits)), t = targets smoothed towards uniform.

    With one-hot targets this equals F.cross_entropy(logits, y, label_smoothing=...).
    """
    num_classes = logits.shape[1]
    smoothed = targets.float() * (1 - label_smoothing) + label_smoothing / num_classes
    return -(smoothed * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def swapped_cross_entropy(targets: list[torch.Tensor], scores: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """For each target crop a and every other crop v: CE(q_a, softmax(scores_v / temperature)).

    `targets[a]` comes from crop a (crops are in the same order as `scores`); averaged over v,
    then over a (every a has the same number of partners, so this is the mean of all pairs).
    """
    per_target = []
    for a, target in enumerate(targets):
        partners = [soft_cross_entropy(s.float() / temperature, target) for v, s in enumerate(scores) if v != a]
        if not partners:
            raise ValueError("swapped prediction needs at least two crops")
        per_target.append(torch.stack(partners).mean())
    return torch.stack(per_target).mean()


def labeled_fraction(n_labeled: int, n_unlabeled: int, labeled_weight: float | None = None) -> float:
    """Weight of the labeled loss: its share of prediction rows (the release), or a fixed value."""
    if labeled_weight is not None:
        return labeled_weight
    return n_labeled / (n_labeled + n_unlabeled)


def combine_losses(
    labeled: torch.Tensor, n_labeled: int, unlabeled: torch.Tensor, n_unlabeled: int,
    labeled_weight: float | None = None,
) -> torch.Tensor:
    """L = w * L_lab + (1 - w) * L_unlab with w = N_l / (N_l + N_u) unless `labeled_weight` is set."""
    weight = labeled_fraction(n_labeled, n_unlabeled, labeled_weight)
    return weight * labeled + (1 - weight) * unlabeled


def pseudo_labels(class_logits: list[torch.Tensor], threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-training targets: each image's class under the mean of its target crops' class probabilities
    (softmax of the class logits), and whether that probability reaches `threshold`. No gradient."""
    with torch.no_grad():
        probabilities = torch.stack([F.softmax(logits.float(), dim=1) for logits in class_logits]).mean(dim=0)
        confidence, labels = probabilities.max(dim=1)
    return labels, confidence >= threshold


def pseudo_label_loss(class_logits: list[torch.Tensor], labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean over crops of the weighted mean cross-entropy of each image's crop towards its pseudo-label, `keep` the
    images' weights (a bool: kept or not; a float: the propagation's confidence); 0 when every weight is 0, still part
    of the graph so that every process backpropagates the same parameters."""
    weights = keep.float()
    per_crop = [(F.cross_entropy(logits.float(), labels, reduction="none") * weights).sum() / weights.sum().clamp(min=1)
                for logits in class_logits]
    return torch.stack(per_crop).mean()
