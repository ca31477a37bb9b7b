"""Price of everything around the network in one training step, for Suave and Daino.

    python benchmarks/step_overhead.py [--device cpu|cuda] [--precision fp32|bf16] [--channels-last]

For each method, on the same batch and crops, it times (interleaved, median of --repeats):
- full: the trainer's step (lr/wd schedule, method.training_step with targets, Sinkhorn or
  teacher + centering, queue, losses, the trainer's finiteness check, backward, optimiser step,
  prototype renormalisation or teacher EMA);
- bare: backbone + head + prototypes forward and backward on the same crops and labeled rows,
  the optimiser step, and (Daino) the teacher's forward on the global crops.
full / bare is the overhead ratio. The batched augmentation, which also runs in the training
loop, is timed and reported separately (issue of the data pipeline, not of the step).
CIFAR-sized default: 100 classes, 2 x 32 px + 4 x 16 px unlabeled crops, batch 64 + 32 labeled,
a ResNet-18 with a CIFAR stem at half width (so the CPU run takes minutes, not hours).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from semiclust.data.streams import Stream
from semiclust.engine.device import autocast
from semiclust.engine.run_dir import RunFiles
from semiclust.engine.setup import build_run
from semiclust.engine.step import train_step
from semiclust.recipe import resolve


def recipe_for(method: str, args) -> dict:
    return {
        "name": f"overhead-{method}",
        "data": {
            "dataset": "synthetic",
            "options": {"num_classes": 100, "size": 32, "channels": 3, "train_per_class": args.batch // 50 + 2,
                        "test_per_class": 1},
            "labels": {"per_class": args.batch // 200 + 1},
            "unlabeled": {"crops": [{"count": 2, "size": 32, "scale": [0.14, 1.0], "color": {"p": 0.8}, "grayscale": 0.2},
                                    {"count": 4, "size": 16, "scale": [0.05, 0.14], "color": {"p": 0.8}, "grayscale": 0.2}]},
            "labeled": {"size": 32, "color": {"p": 0.8}},
            "eval": {"size": 32},
            "batch": {"unlabeled": args.batch, "labeled": args.batch // 2},
        },
        "model": {"backbone": {"name": args.backbone, "kwargs": {"channels": [32, 64, 128, 256]}
                                                     if args.backbone == "resnet18_cifar" and not args.full_width else {}},
                  "head": {"hidden": 512, "out": 128}},
        "method": {"name": method, **({"queue": {"length": 4 * args.batch}} if method == "suave" else {})},
        "optim": {"name": "lars" if method == "suave" else "adamw", "lr": 0.1 if method == "suave" else 5e-4,
                  "exclude_bias_and_norm": method == "daino"},
        "schedule": {"epochs": 10},
        "runtime": {"device": args.device, "precision": args.precision, "channels_last": args.channels_last},
    }


def bare_step(method, batch, optimizer) -> None:
    """The network work alone: the same forward/backward rows, optimiser step, teacher forward."""
    groups = ([batch.labeled] if Stream.LABELED in method.streams else []) + batch.unlabeled
    _, scores = method.student(groups)
    optimizer.zero_grad(set_to_none=True)
    scores.float().mean().backward()
    optimizer.step()
    if hasattr(method, "teacher"):
        with torch.no_grad():
            method.teacher(torch.cat(batch.unlabeled[: method.spec.target_crops]))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(method_name: str, args) -> dict:
    """The production step (engine/step.py's train_step) on one fixed batch, against the bare network on
    the same batch; the batch's augmentation is timed on its own."""
    recipe = resolve(recipe_for(method_name, args))
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        run = build_run(recipe, RunFiles(Path(folder)), device, resume=False)
    method, batch = run.method, run.batches(0)
    if getattr(method, "queue", None) is not None:
        method.queue.filled.fill_(method.queue.length)  # time the steady state: the queue is full and used
    make_batch = run.batches.__call__
    run.batches.micro_batches = lambda step: iter([batch])  # the step without its data: augmentation is timed apart

    def full(step: int) -> None:
        assert train_step(run, step).finite

    def bare(step: int) -> None:
        with autocast(device, run.amp_dtype):
            bare_step(method, batch, run.optimizer)

    def augment(step: int) -> None:
        make_batch(step)

    timings = {"full": [], "bare": [], "augment": []}
    for round_index in range(args.warmup + args.repeats):
        for name, fn in (("full", full), ("bare", bare), ("augment", augment)):
            synchronize(device)
            start = time.perf_counter()
            fn(round_index)
            synchronize(device)
            if round_index >= args.warmup:
                timings[name].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in timings.items()}
    images = run.numbers.images_per_step
    return {"method": method_name, **medians, "ratio": medians["full"] / medians["bare"],
            "img_per_s": images / medians["full"], "augment_share": medians["augment"] / medians["full"]}


def main() -> None:
    parser = argparse.ArgumentParser(description="Training-step overhead over the bare network cost.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--backbone", default="resnet18_cifar")
    parser.add_argument("--full-width", action="store_true", help="resnet18_cifar at its real width (GPU)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=["suave", "daino"])
    args = parser.parse_args()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    width = "" if args.full_width else " (half width)"
    print(f"device: {name}; torch {torch.__version__}; backbone {args.backbone}{width}; batch {args.batch} unlabeled "
          f"(2x32 + 4x16 px) + {args.batch // 2} labeled; {args.precision}; channels-last {args.channels_last}")
    print(f"{'method':8} {'full s':>9} {'bare s':>9} {'ratio':>7} {'img/s':>9} {'augment s':>10}")
    for method_name in args.methods:
        r = measure(method_name, args)
        print(f"{r['method']:8} {r['full']:9.4f} {r['bare']:9.4f} {r['ratio']:7.3f} {r['img_per_s']:9.1f} {r['augment']:10.4f}",
              flush=True)


if __name__ == "__main__":
    main()
