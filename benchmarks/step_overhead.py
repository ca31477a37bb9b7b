"""Price of everything around the network in one training step, for Suave and Daino.

    python benchmarks/step_overhead.py [--device cpu|cuda] [--precision fp32|bf16] [--channels-last]
    python benchmarks/step_overhead.py --preset suave-r50-in1k|daino-vits-in1k --device cuda --precision bf16

Why: the step must not waste the accelerator. For each method, on the same batch and crops, it times
(interleaved, median of --repeats):
- full: the trainer's step (lr/wd schedule, method.training_step with targets, Sinkhorn or
  teacher + centering, queue, losses, the trainer's finiteness check, backward, optimiser step,
  prototype renormalisation or teacher EMA);
- bare: backbone + head + prototypes forward and backward on the same crop groups (labeled view and
  its mixup copy, unlabeled crops, Suave's mixed unlabeled view), the optimiser step, and (Daino) the
  teacher's forward on the global crops;
- timm (presets, or --timm): a separate timm network (`timm.create_model(name, num_classes=0)`, the
  same backbone) forward and backward alone on the same crops, one call per resolution: no head, no
  optimiser, no teacher. The issue's target is full step images/s >= 0.8 x this.
full / bare is the overhead ratio. The batched augmentation, which also runs in the training
loop, is timed and reported separately (issue of the data pipeline, not of the step).

CIFAR-sized default: 100 classes, 2 x 32 px + 4 x 16 px unlabeled crops, batch 64 + 32 labeled,
a ResNet-18 with a CIFAR stem at half width (so the CPU run takes minutes, not hours).

Presets: the release's networks, crops and per-GPU batches, built from the shipped recipes
(recipes/suave_r50_in1k_1pct.yaml, recipes/daino_vits_in1k_1pct.yaml) on one process, with an
in-memory synthetic dataset of 1,000 classes (1,000 prototypes) of 224-px images, random weights
(model.init null) and SyncBatchNorm off (one process):
- suave-r50-in1k: ResNet-50, head Linear-BN-ReLU-Linear 2048 -> 128, 2 x 224 + 8 x 96 px crops,
  32 unlabeled + 16 labeled per GPU (the recipe's 256 + 128 on 8 GPUs), unlabeled mixup on, the
  queue's per-GPU share (3,840 / 8 = 480 rows, full);
- daino-vits-in1k: ViT-S/16 (dynamic_img_size), the same crops (student on all, teacher on the two
  globals), 64 unlabeled + 32 labeled per GPU (1,024 + 512 on 16 GPUs); also prints the unlabeled
  images/s per GPU (target 2,000 on an H100/H200).
--batch N scales a preset's per-GPU batches down (N unlabeled, the labeled share in proportion) for
smoke tests; --set key=value overrides any recipe value (e.g. model.backbone.name=resnet18).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from semiclust.engine.device import autocast
from semiclust.engine.run_dir import RunFiles
from semiclust.engine.setup import build_run
from semiclust.engine.step import train_step
from semiclust.methods.base import GroupLayout
from semiclust.models.backbones import create_backbone
from semiclust.config.loader import apply_overrides, load_raw, load_recipe, resolve
from semiclust.config.schema import Recipe

# preset -> (shipped recipe, the GPUs its global batch and queue are written for)
PRESETS = {"suave-r50-in1k": ("suave_r50_in1k_1pct", 8), "daino-vits-in1k": ("daino_vits_in1k_1pct", 16)}
PRESET_CLASSES, PRESET_IMAGE = 1000, 224


def recipe_for(method: str, args) -> Recipe:
    """The CIFAR-sized default recipe of one method."""
    batch = args.batch or 64
    crop = {"scale": [0.14, 1.0], "color": {"p": 0.8}, "grayscale": 0.2}
    width = {"channels": [32, 64, 128, 256]} if args.backbone == "resnet18_cifar" and not args.full_width else {}
    raw = {
        "name": f"overhead-{method}",
        "data": {
            "dataset": "synthetic",
            "options": {"num_classes": 100, "size": 32, "channels": 3, "train_per_class": batch // 50 + 2,
                        "test_per_class": 1},
            "labels": {"per_class": batch // 200 + 1},
            "unlabeled": {"crops": [{"count": 2, "size": 32, **crop},
                                    {"count": 4, "size": 16, **crop, "scale": [0.05, 0.14]}]},
            "labeled": {"size": 32, "color": {"p": 0.8}},
            "eval": {"size": 32},
            "batch": {"unlabeled": batch, "labeled": batch // 2},
        },
        "model": {"backbone": {"name": args.backbone, "kwargs": width}, "head": {"hidden": 512, "out": 128}},
        "method": {"name": method, **({"queue": {"length": 4 * batch}} if method == "suave" else {})},
        "optim": {"name": "lars" if method == "suave" else "adamw", "lr": 0.1 if method == "suave" else 5e-4,
                  "exclude_bias_and_norm": method == "daino"},
        "schedule": {"epochs": 10},
        "runtime": {"device": args.device, "precision": args.precision, "channels_last": args.channels_last},
    }
    return resolve(apply_overrides(raw, args.set), "step_overhead default")


def preset_recipe(args) -> Recipe:
    """A shipped ImageNet recipe at its per-GPU share on one process, on in-memory synthetic 224-px images."""
    name, gpus = PRESETS[args.preset]
    raw = load_raw(Path(name))  # a bare name: the shipped recipe
    batch = raw["data"]["batch"]
    unlabeled = args.batch or batch["unlabeled"] // gpus
    labeled = max(1, unlabeled * batch["labeled"] // batch["unlabeled"])
    queue = raw["method"].get("queue", {}).get("length", 0)
    overrides = [
        f"name=overhead-{args.preset}", "data.dataset=synthetic", "data.labels={per_class: 1}",
        f"data.options={{num_classes: {PRESET_CLASSES}, size: {PRESET_IMAGE}, channels: 3, train_per_class: 1, "
        "test_per_class: 1}",
        f"data.batch={{unlabeled: {unlabeled}, labeled: {labeled}, per: process}}",
        "model.init=null", "runtime.sync_batchnorm=false", f"runtime.device={args.device}",
        f"runtime.precision={args.precision}", f"runtime.channels_last={str(args.channels_last).lower()}",
        *([f"method.queue.length={queue // gpus}"] if queue else []),
        *args.set,
    ]
    return load_recipe(name, overrides)


def bare_step(method, batch, optimizer) -> None:
    """The network work alone: the same forward/backward rows, optimiser step, teacher forward."""
    groups = GroupLayout.of(batch, method.uses_labels, method.uses_unlabeled, method.spec.target_crops).groups
    _, scores = method.student(groups)
    optimizer.zero_grad(set_to_none=True)
    scores.float().mean().backward()
    optimizer.step()
    if hasattr(method, "teacher"):
        with torch.no_grad():
            method.teacher(torch.cat(batch.unlabeled[: method.spec.target_crops]))


def timm_network(recipe: Recipe, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """timm's network alone (timm.create_model(name, num_classes=0) with the recipe's kwargs), random weights."""
    spec = recipe.model.backbone
    model = create_backbone(spec.name, dict(spec.kwargs), 3).to(device).train()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def timm_step(model: torch.nn.Module, groups: list[torch.Tensor]) -> None:
    """Forward (one call per resolution, same-size groups concatenated) and backward of the features' mean."""
    by_size: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for group in groups:
        by_size.setdefault(tuple(group.shape[1:]), []).append(group)
    model.zero_grad(set_to_none=True)
    loss = sum(model(torch.cat(parts) if len(parts) > 1 else parts[0]).float().mean() for parts in by_size.values())
    loss.backward()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(recipe: Recipe, args) -> dict:
    """The production step (engine/step.py's train_step) on one fixed batch, against the bare network on
    the same batch (and timm's network alone); the batch's augmentation is timed on its own."""
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        run = build_run(recipe, RunFiles(Path(folder)), device, resume=False)
    method, batch = run.method, run.batches(0)
    if getattr(method, "queue", None) is not None:
        method.queue.filled.fill_(method.queue.length)  # time the steady state: the queue is full and used
        method.queue.buffers_changed()
    make_batch = run.batches.__call__
    run.batches.micro_batches = lambda step: iter([batch])  # the step without its data: augmentation is timed apart
    groups = GroupLayout.of(batch, method.uses_labels, method.uses_unlabeled, method.spec.target_crops).groups
    timm_model = timm_network(recipe, device, run.batches.channels_last) if args.preset or args.timm else None

    def full(step: int) -> None:
        assert train_step(run, step).finite

    def bare(step: int) -> None:
        with autocast(device, run.amp_dtype):
            bare_step(method, batch, run.optimizer)

    def timm(step: int) -> None:
        with autocast(device, run.amp_dtype):
            timm_step(timm_model, groups)

    parts = {"full": full, "bare": bare, **({"timm": timm} if timm_model is not None else {}),
             "augment": lambda step: make_batch(step)}
    timings: dict[str, list[float]] = {name: [] for name in parts}
    for round_index in range(args.warmup + args.repeats):
        for name, fn in parts.items():
            synchronize(device)
            start = time.perf_counter()
            fn(round_index)
            synchronize(device)
            if round_index >= args.warmup:
                timings[name].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in timings.items()}
    images, unlabeled = run.numbers.images_per_step, run.numbers.process_unlabeled
    result = {"method": recipe.method.name, **medians, "ratio": medians["full"] / medians["bare"],
              "img_per_s": images / medians["full"], "unlabeled_per_s": unlabeled / medians["full"],
              "augment_share": medians["augment"] / medians["full"], "images": images, "unlabeled": unlabeled,
              "labeled": run.numbers.process_labeled, "peak_gib": peak_memory(device)}
    if "timm" in medians:
        result.update(timm_img_per_s=images / medians["timm"], of_timm=medians["timm"] / medians["full"])
    return result


def peak_memory(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def describe(args, recipe: Recipe) -> str:
    """The run's header line: device, torch, network, crops and batch."""
    if args.device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(args.device))
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    crops = " + ".join(f"{g.count}x{g.size}" for g in recipe.data.unlabeled.crops)
    batch = recipe.data.batch
    if args.preset:
        what = (f"preset {args.preset} ({PRESETS[args.preset][0]}), backbone {recipe.model.backbone.name}, "
                f"{PRESET_CLASSES} prototypes")
    else:
        what = f"backbone {args.backbone}{'' if args.full_width else ' (half width)'}"
    return (f"device: {name}; torch {torch.__version__}; {what}; batch {batch.unlabeled} unlabeled ({crops} px) + "
            f"{batch.labeled} labeled per process; {args.precision}; channels-last {args.channels_last}")


def print_header(timm: bool) -> None:
    print(f"{'method':8} {'full s':>9} {'bare s':>9} {'ratio':>7} {'img/s':>9} {'augment s':>10}"
          + (f" {'timm s':>9} {'timm img/s':>11} {'full/timm':>10} {'unlab img/s':>12}" if timm else ""), flush=True)


def print_row(r: dict) -> None:
    line = f"{r['method']:8} {r['full']:9.4f} {r['bare']:9.4f} {r['ratio']:7.3f} {r['img_per_s']:9.1f} " \
           f"{r['augment']:10.4f}"
    if "timm" in r:
        line += f" {r['timm']:9.4f} {r['timm_img_per_s']:11.1f} {r['of_timm']:10.3f} {r['unlabeled_per_s']:12.1f}"
    print(line, flush=True)


def print_targets(args, results: list[dict]) -> None:
    """The issue's targets, for a preset: full step >= 0.8 x timm's images/s; Daino 2,000 unlabeled img/s/GPU."""
    for r in results:
        if "of_timm" not in r:
            continue
        verdict = "meets" if r["of_timm"] >= 0.8 else "below"
        print(f"{r['method']}: full step at {r['of_timm']:.2f}x timm's bare forward+backward images/s "
              f"({r['img_per_s']:.1f} vs {r['timm_img_per_s']:.1f}; target >= 0.8x: {verdict})")
        if args.preset == "daino-vits-in1k":
            verdict = "meets" if r["unlabeled_per_s"] >= 2000 else "below"
            print(f"{r['method']}: {r['unlabeled_per_s']:.1f} unlabeled images/s per GPU (target 2,000 on "
                  f"H100/H200: {verdict})")
        if r["peak_gib"] is not None:
            print(f"{r['method']}: peak GPU memory {r['peak_gib']:.1f} GiB")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Training-step overhead over the bare network cost.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="the release's network, crops and per-GPU batch")
    parser.add_argument("--backbone", default="resnet18_cifar", help="default recipe only (presets: --set)")
    parser.add_argument("--full-width", action="store_true", help="resnet18_cifar at its real width (GPU)")
    parser.add_argument("--batch", type=int, help="unlabeled images per step (default 64; presets: the per-GPU "
                        "share, labeled in proportion)")
    parser.add_argument("--timm", action="store_true", help="also time timm's network alone (always on for presets)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=["suave", "daino"], help="default recipe only")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    recipes = [preset_recipe(args)] if args.preset else [recipe_for(m, args) for m in args.methods]
    print(describe(args, recipes[0]), flush=True)
    print_header(bool(args.preset or args.timm))
    results = []
    for recipe in recipes:
        results.append(measure(recipe, args))
        print_row(results[-1])
    print_targets(args, results)

if __name__ == "__main__":
    main()
