"""The numbers a run is made of (global batches, steps, scaled lr), and `train --dry-run`'s estimates.

`run_numbers` is the single place these are derived; the trainer and the dry run both use it, so what
the dry run prints is what training does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from semiclust.engine.schedules import scaled_lr
from semiclust.recipe import Recipe


@dataclass
class RunNumbers:
    world: int
    global_unlabeled: int  # images per optimiser step over all processes (accumulation included)
    global_labeled: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float


def steps_per_epoch(train_size: int, batch: int, world: int, accumulate: int) -> int:
    """Optimiser steps in one pass over the unlabeled set (drop_last), at least 1."""
    return max(train_size // (batch * world) // accumulate, 1)


def run_numbers(recipe: Recipe, train_size: int, world: int, uses_unlabeled: bool) -> RunNumbers:
    """Derived values of a run; lr scaled by the global unlabeled batch (labeled for `supervised`)."""
    batch, optim, accumulate = recipe.data.batch, recipe.optim, recipe.optim.accumulate_steps
    steps = steps_per_epoch(train_size, batch.unlabeled, world, accumulate)
    reference_images = batch.unlabeled if uses_unlabeled else batch.labeled
    peak_lr = scaled_lr(optim.lr, reference_images * world * accumulate, optim.lr_reference_batch)
    return RunNumbers(world, batch.unlabeled * world * accumulate, batch.labeled * world * accumulate, steps,
                      steps * recipe.schedule.epochs, round(recipe.schedule.warmup_epochs * steps), peak_lr)


def parameter_counts(network: nn.Module) -> dict[str, int]:
    """Parameters of the backbone, head and prototypes, and how many of them train."""
    counts = {part: sum(p.numel() for p in getattr(network, part).parameters()) for part in ("backbone", "head", "prototypes")}
    counts["trainable"] = sum(p.numel() for p in network.parameters() if p.requires_grad)
    return counts


def probe_shapes(recipe: Recipe, channels: int, images: int) -> list[tuple[int, int, int, int]]:
    """The crop batches of one step for `images` images per stream: unlabeled groups, then the labeled view
    (doubled by mixup's appended copy when it is on)."""
    shapes = [(images * g.count, channels, g.size, g.size) for g in recipe.data.unlabeled.crops]
    labeled = images * (2 if recipe.method.mixup.enabled else 1)
    return shapes + [(labeled, channels, recipe.data.labeled.size, recipe.data.labeled.size)]


@torch.no_grad()
def activation_bytes_per_image(network: nn.Module, recipe: Recipe, channels: int, probe: int = 2) -> float:
    """Rough activation memory per image of a step: the bytes of every leaf module's output on a
    `probe`-image forward (what autograd keeps for backward, to within a small factor), in fp32.

    Measured by running the student once on random crops of the recipe's sizes with forward hooks;
    divide by 2 for bf16/fp16 autocast. An estimate to size batches, not a guarantee."""
    total = 0

    def count(_module, _inputs, output) -> None:
        nonlocal total
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * 4

    leaves = [m for m in network.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    was_training = network.training
    try:
        network.train()
        crops = [torch.randn(shape) for shape in probe_shapes(recipe, channels, probe)]
        network(crops)
    finally:
        network.train(was_training)
        for hook in hooks:
            hook.remove()
    return total / probe


@dataclass
class DryRun:
    """What `semiclust train --dry-run` found and derived, without training."""

    dataset: str
    train_images: int
    labeled: int
    labeled_identity: str
    eval_images: int | None
    classes: int
    numbers: RunNumbers
    parameters: dict[str, int]
    teacher_parameters: int
    optimizer: str
    activation_gib: float
    precision: str
    init: str | None


def dry_run(recipe: Recipe, processes: int) -> DryRun:
    """Build the data (so missing files fail here), the model (with its initialisation) and the optimiser
    as training would, for `processes` processes, and estimate activation memory per process."""
    from semiclust.data.streams import labeled_stream, unlabeled_stream
    from semiclust.data.subsets import choose_labeled
    from semiclust.engine.optim import build_optimizer
    from semiclust.engine.trainer import load_dataset
    from semiclust.methods import METHODS
    from semiclust.methods.queue import queue_per_process

    dataset = load_dataset(recipe)
    subset = choose_labeled(dataset.train, recipe.data.labels, recipe.seed, dataset.num_classes)
    kind = METHODS.get(recipe.method.name)
    numbers = run_numbers(recipe, len(dataset.train), processes, kind.uses_unlabeled)
    unlabeled_stream(len(dataset.train), recipe.data.batch.unlabeled, recipe.seed, 0, processes)  # batches fit?
    queue_per_process(recipe.method.queue.length, processes)
    if kind.uses_labels:
        labeled_stream(subset.indices, recipe.data.batch.labeled, recipe.seed, 0, processes)
    method = kind(recipe, dataset.num_classes, dataset.channels, numbers.steps_per_epoch)
    optimizer = build_optimizer(method.student, recipe.optim, numbers.peak_lr)
    teacher = getattr(method, "teacher", None)
    per_image = activation_bytes_per_image(method.student, recipe, dataset.channels)
    images = (recipe.data.batch.unlabeled if kind.uses_unlabeled else 0) + (recipe.data.batch.labeled if kind.uses_labels else 0)
    half = recipe.runtime.precision in ("bf16", "fp16")
    gib = per_image * images / (2 if half else 1) / 2**30
    precision = {"auto": f"fp32 on CPU; ~{gib / 2:.2f} GiB under bf16 on a GPU", "fp32": "fp32"}.get(
        recipe.runtime.precision, recipe.runtime.precision)
    return DryRun(dataset.name, len(dataset.train), len(subset.indices), subset.identity,
                  None if dataset.test is None else len(dataset.test), dataset.num_classes, numbers,
                  parameter_counts(method.student), sum(p.numel() for p in teacher.parameters()) if teacher else 0,
                  f"{recipe.optim.name}, {len(optimizer.param_groups)} parameter group(s)", gib, precision,
                  method.init_report.summary() if method.init_report else None)
