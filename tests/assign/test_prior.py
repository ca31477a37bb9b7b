"""Class priors of the assignments: Sinkhorn's class marginal follows the prior, Daino's sharpening puts the
prior's shape back after centering, the labeled prior is the subset's frequencies with a floor, and the
estimated prior follows the model's mean prediction; uniform leaves the release's arithmetic untouched."""
import math

import pytest
import torch
import torch.nn.functional as F

from semiclust.assign.center_sharpen import CenterSharpenAssigner, CenterSharpenSpec, center_sharpen
from semiclust.assign.prior import ClassPrior, PriorFields, floored
from semiclust.assign.sinkhorn import SinkhornAssigner, SinkhornSpec, sinkhorn
from semiclust.data.subsets import class_counts


def scores(rows=96, classes=4, seed=0):
    return F.normalize(torch.randn(rows, classes, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_sinkhorn_class_marginal_converges_to_the_prior():
    """With many iterations the assignments' class sums are B * prior (uniform: B / K), rows still sum to 1."""
    prior = torch.tensor([0.55, 0.25, 0.15, 0.05])
    q = sinkhorn(scores(), epsilon=0.05, iterations=200, total_batch=96, log_prior=prior.log())
    torch.testing.assert_close(q.sum(1), torch.ones(96), rtol=0, atol=1e-5)
    torch.testing.assert_close(q.sum(0) / 96, prior, rtol=0, atol=2e-3)
    flat = sinkhorn(scores(), epsilon=0.05, iterations=200, total_batch=96)
    torch.testing.assert_close(flat.sum(0) / 96, torch.full((4,), 0.25), rtol=0, atol=2e-3)


def test_a_uniform_log_prior_is_the_release_arithmetic():
    """log(1/K) as the prior gives exactly what no prior gives (the release's row target)."""
    a = sinkhorn(scores(), total_batch=96)
    b = sinkhorn(scores(), total_batch=96, log_prior=torch.full((4,), math.log(0.25)))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_sinkhorn_with_a_known_batch_size_needs_no_cross_process_sum():
    """total_batch given (len * world) equals the read-back version."""
    s = scores()
    torch.testing.assert_close(sinkhorn(s), sinkhorn(s, total_batch=len(s)), rtol=0, atol=0)


def test_center_sharpen_with_prior_is_the_prior_weighted_softmax():
    """softmax((t - c) / T + log p) by hand: p_k exp((t_k - c_k)/T) normalised."""
    logits, center, prior = torch.randn(5, 4), torch.randn(1, 4), torch.tensor([0.4, 0.3, 0.2, 0.1])
    weighted = prior * torch.exp((logits - center) / 0.07)
    torch.testing.assert_close(center_sharpen(logits, center, 0.07, prior.log()),
                               weighted / weighted.sum(1, keepdim=True))
    torch.testing.assert_close(center_sharpen(logits, center, 0.07), F.softmax((logits - center) / 0.07, 1))


def test_labeled_prior_is_the_subsets_frequencies_with_a_floor():
    """Counts 6, 3, 1, 0 with floor 0.2: every class keeps at least 0.2 / 4 before renormalising."""
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] + [3] * 5)
    counts = class_counts(labels, torch.arange(10), 4)
    assert counts.tolist() == [6, 3, 1, 0]
    prior = ClassPrior(PriorFields(prior="labeled", prior_floor=0.2), 4)
    prior.use_counts(counts)
    kept = torch.tensor([0.6, 0.3, 0.1, 0.05])
    torch.testing.assert_close(prior.log_prior().exp(), kept / kept.sum())
    torch.testing.assert_close(floored(torch.tensor([0.7, 0.3]), 0.0), torch.tensor([0.7, 0.3]))


def test_estimated_prior_follows_the_mean_prediction():
    """One observe: estimate = m * uniform + (1 - m) * mean softmax(scores / T); many: the mean itself."""
    prior = ClassPrior(PriorFields(prior="estimated", prior_momentum=0.9, prior_temperature=0.5), 4)
    s = [torch.randn(8, 4, generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    mean = F.softmax(torch.cat(s) / 0.5, dim=1).mean(0)
    prior.observe(s)
    torch.testing.assert_close(prior.estimate, 0.9 * torch.full((4,), 0.25) + 0.1 * mean)
    for _ in range(300):
        prior.observe(s)
    torch.testing.assert_close(prior.estimate, mean, rtol=0, atol=1e-6)


def test_uniform_prior_keeps_checkpoint_keys_and_other_kinds_save_the_estimate():
    """prior: uniform adds no buffer (old checkpoints load); labeled/estimated save it (exact resume)."""
    assert "prior.estimate" not in SinkhornAssigner(SinkhornSpec(), 4).state_dict()
    assert "prior.estimate" in SinkhornAssigner(SinkhornSpec(prior="estimated"), 4).state_dict()
    assert "prior.estimate" in CenterSharpenAssigner(CenterSharpenSpec(prior="labeled"), 4).state_dict()


@pytest.mark.parametrize("kind", ["labeled", "estimated"])
def test_the_assigners_use_and_update_the_prior(kind):
    """A skewed prior moves Sinkhorn's class sums and Daino's targets' mean towards it; estimated moves."""
    sink = SinkhornAssigner(SinkhornSpec(prior=kind, iterations=50, prior_floor=0.0), 4)
    skew = torch.tensor([0.7, 0.1, 0.1, 0.1])
    sink.prior.estimate.copy_(skew)
    before = sink.prior.estimate.clone()
    targets = sink([scores()], epoch=0)[0]
    assert targets.sum(0)[0] / 96 > 0.6  # uniform would give 0.25
    assert torch.equal(sink.prior.estimate, before) == (kind == "labeled")
    dino = CenterSharpenAssigner(CenterSharpenSpec(prior=kind, prior_floor=0.0), 4)
    dino.prior.estimate.copy_(skew)
    plain = CenterSharpenAssigner(CenterSharpenSpec(), 4)
    logits = torch.randn(64, 4, generator=torch.Generator().manual_seed(3))
    assert dino([logits], 20)[0].mean(0)[0] > plain([logits], 20)[0].mean(0)[0]
