import pytest
import torch
import torch.nn.functional as F

from semiclust.methods.losses import combine_losses, labeled_fraction, soft_cross_entropy, swapped_cross_entropy


def test_soft_cross_entropy_equals_torch_with_label_smoothing():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(12, 7, generator=g), torch.randint(7, (12,), generator=g)
    ours = soft_cross_entropy(logits, F.one_hot(labels, 7).float(), label_smoothing=0.01)
    torch.testing.assert_close(ours, F.cross_entropy(logits, labels, label_smoothing=0.01))


def test_soft_cross_entropy_with_soft_targets_by_hand():
    logits = torch.tensor([[0.0, 1.0]])
    targets = torch.tensor([[0.25, 0.75]])
    log_p = torch.log_softmax(logits, 1)[0]
    expected = -(0.25 * log_p[0] + 0.75 * log_p[1])
    torch.testing.assert_close(soft_cross_entropy(logits, targets), expected)


def test_swapped_cross_entropy_averages_all_pairs_except_self():
    g = torch.Generator().manual_seed(1)
    scores = [torch.randn(5, 4, generator=g) for _ in range(4)]  # 2 global + 2 local crops
    targets = [torch.softmax(torch.randn(5, 4, generator=g), 1) for _ in range(2)]
    by_hand = []
    for a in range(2):
        for v in range(4):
            if v != a:
                log_p = torch.log_softmax(scores[v] / 0.1, dim=1)
                by_hand.append(-(targets[a] * log_p).sum(1).mean())
    torch.testing.assert_close(swapped_cross_entropy(targets, scores, 0.1), torch.stack(by_hand).mean())


def test_row_count_weighting():
    """N_l = 2 x 50 (mixup copies), N_u = 128 x 6 crops: weight of the labeled part = 100 / 868."""
    assert labeled_fraction(100, 768) == pytest.approx(100 / 868)
    lab, unlab = torch.tensor(2.0), torch.tensor(1.0)
    torch.testing.assert_close(combine_losses(lab, 100, unlab, 768), torch.tensor((100 * 2.0 + 768 * 1.0) / 868))
    # the released ImageNet batch sizes give the labeled part about 0.09
    assert labeled_fraction(2 * 32, 64 * 10) == pytest.approx(0.0909, abs=1e-3)


def test_explicit_labeled_weight_overrides_row_counts():
    torch.testing.assert_close(combine_losses(torch.tensor(2.0), 1, torch.tensor(1.0), 99, labeled_weight=0.5),
                               torch.tensor(1.5))
