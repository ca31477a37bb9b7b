"""Cost of one Sinkhorn-Knopp call as the number of prototypes K and the batch B grow.

    python benchmarks/sinkhorn_cost.py [--ks 10 100 1000 3000] [--rows 64 256 1024 4096] [--devices cpu cuda]

Times the production function, `semiclust.assign.sinkhorn.sinkhorn` (log space, fp32, 3
iterations, epsilon 0.05, single process so its all-reduces are no-ops), on a B x K score matrix,
and in the same run, on the same device and with the same inputs, the matmul that produced those
scores: B unit-norm embeddings of 128 dimensions times K unit-norm prototypes (B x 128 @ 128 x K,
fp32). The ratio sinkhorn / matmul is what the assignment costs relative to the work that
precedes it anyway; the absolute milliseconds and nanoseconds per score entry are printed too.

B is every row Sinkhorn sees: with a Suave/SwAV queue the queue's rows are added to the batch's
(e.g. SwAV's ImageNet setting, 256 images per GPU plus a 3,840-row queue, is B = 4,096). The two
timed calls are interleaved, repeat after repeat, after warm-up calls; each figure is the median.
On CUDA every call is bracketed by synchronisations (Sinkhorn itself reads the batch size back
with `.item()` once per call, as in training). The figures are for one target crop: a training
step calls Sinkhorn once per target crop (2 in every shipped recipe).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from machine import cpu_model  # benchmarks/machine.py (scripts run from their folder)
from semiclust.assign.sinkhorn import sinkhorn


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def measure(device: torch.device, rows: int, prototypes: int, args) -> dict:
    generator = torch.Generator().manual_seed(rows * 10_007 + prototypes)
    embeddings = F.normalize(torch.randn(rows, args.dim, generator=generator), dim=1).to(device)
    weights = F.normalize(torch.randn(prototypes, args.dim, generator=generator), dim=1).to(device)
    scores = embeddings @ weights.t()

    def matmul() -> None:
        torch.matmul(embeddings, weights.t())

    def assign() -> None:
        sinkhorn(scores, args.epsilon, args.iterations)

    out = sinkhorn(scores, args.epsilon, args.iterations)
    assert torch.allclose(out.sum(1), torch.ones(rows, device=device), atol=1e-4), "rows of Q must sum to 1"
    times = {"matmul": [], "sinkhorn": []}
    for repeat in range(args.warmup + args.repeats):
        for name, fn in (("matmul", matmul), ("sinkhorn", assign)):
            seconds = timed(fn, device)
            if repeat >= args.warmup:
                times[name].append(seconds)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"K": prototypes, "B": rows, "matmul_ms": 1e3 * median["matmul"], "sinkhorn_ms": 1e3 * median["sinkhorn"],
            "ratio": median["sinkhorn"] / median["matmul"], "ns_per_entry": 1e9 * median["sinkhorn"] / (rows * prototypes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 100, 1000, 3000], help="numbers of prototypes K")
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 256, 1024, 4096],
                        help="rows B given to Sinkhorn (batch + queue rows)")
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension of the score matmul")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--epsilon", type=float, default=0.05)
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"torch {torch.__version__}; CPU: {cpu_model()}, {torch.get_num_threads()} threads; fp32; "
          f"{args.iterations} iterations, epsilon {args.epsilon}; score matmul B x {args.dim} @ {args.dim} x K; "
          f"median of {args.repeats} interleaved repeats after {args.warmup} warm-up")
    for name in devices:
        device = torch.device(name)
        label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
        print(f"\ndevice: {label}\n")
        print("| K | B | matmul ms | sinkhorn ms | sinkhorn / matmul | sinkhorn ns per score entry |")
        print("|---|---|---|---|---|---|")
        for prototypes in args.ks:
            for rows in args.rows:
                r = measure(device, rows, prototypes, args)
                print(f"| {r['K']} | {r['B']} | {r['matmul_ms']:.3f} | {r['sinkhorn_ms']:.3f} | {r['ratio']:.1f} | "
                      f"{r['ns_per_entry']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
