import threading

import torch

from semiclust.assign.sinkhorn import sinkhorn


def dense_reference(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """SwAV's plain single-process Sinkhorn-Knopp in float64, written independently of semiclust's."""
    q = torch.exp(scores.double() / epsilon).t()
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t()


def random_cosines(b: int, k: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    w = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    return x @ w.t()


def test_matches_dense_reference():
    scores = random_cosines(64, 10)
    ours = sinkhorn(scores, epsilon=0.05, iterations=3)
    reference = dense_reference(scores, 0.05, 3)
    torch.testing.assert_close(ours.double(), reference, rtol=1e-4, atol=1e-6)


def test_each_sample_assignment_sums_to_one():
    q = sinkhorn(random_cosines(32, 7), 0.05, 3)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(32), rtol=1e-5, atol=1e-5)
    assert (q >= 0).all()


def test_marginals_before_rescaling():
    """Before the final * B: columns (samples) sum to 1/B exactly, rows (prototypes) to 1/K at convergence."""
    b, k = 48, 6
    q = sinkhorn(random_cosines(b, k, seed=3), epsilon=0.05, iterations=200) / b  # undo the final rescale
    torch.testing.assert_close(q.sum(dim=1), torch.full((b,), 1 / b), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(q.sum(dim=0), torch.full((k,), 1 / k), rtol=1e-3, atol=1e-6)


def test_equipartition_breaks_a_collapsed_batch():
    """All samples prefer prototype 0, yet Sinkhorn spreads the mass evenly across prototypes."""
    scores = torch.zeros(40, 4)
    scores[:, 0] = 1.0
    scores += 0.01 * torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    q = sinkhorn(scores, 0.05, iterations=50)
    torch.testing.assert_close(q.sum(dim=0), torch.full((4,), 10.0), rtol=1e-3, atol=1e-3)


def test_small_epsilon_and_large_scores_stay_finite():
    """exp(S / eps) overflows float32 for |S| / eps > 88; the log-space form must not."""
    scores = random_cosines(16, 5) * 50  # unbounded logits, e.g. a DINO teacher with sinkhorn
    q = sinkhorn(scores, epsilon=0.01, iterations=3)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(16), rtol=1e-4, atol=1e-4)


def test_runs_in_float32_on_half_inputs():
    scores = random_cosines(16, 5)
    q = sinkhorn(scores.half(), 0.05, 3)
    assert q.dtype == torch.float32
    torch.testing.assert_close(q, sinkhorn(scores.half().float(), 0.05, 3))


class ThreadAllReduce:
    """An all-reduce between threads standing in for processes (the real gloo test is in tests/engine)."""

    def __init__(self, world: int):
        self.barrier = threading.Barrier(world)
        self.slots: list[torch.Tensor | None] = [None] * world

    def __call__(self, rank: int, tensor: torch.Tensor, op) -> torch.Tensor:
        self.slots[rank] = tensor.clone()
        self.barrier.wait()
        result = self.slots[0]
        for other in self.slots[1:]:
            result = op(result, other)
        self.barrier.wait()
        return result


def test_sharded_batch_with_all_reduce_equals_single_process():
    """Row sums and the max are reduced across processes, column sums stay local: two shards of a
    batch must reproduce the single-process assignment exactly."""
    scores = random_cosines(32, 6, seed=5)
    full = sinkhorn(scores, 0.05, 3)
    shards = scores.chunk(2)
    reduce = ThreadAllReduce(2)
    results: list[torch.Tensor | None] = [None, None]

    def worker(rank: int) -> None:
        results[rank] = sinkhorn(
            shards[rank], 0.05, 3,
            reduce_sum=lambda t: reduce(rank, t, torch.add),
            reduce_max=lambda t: reduce(rank, t, torch.maximum),
        )

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.testing.assert_close(torch.cat(results), full, rtol=1e-5, atol=1e-6)
