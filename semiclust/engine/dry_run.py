"""`semiclust train --dry-run`: build what training would build (engine/setup.py's `build_core`), for
any number of processes, and estimate the activation memory of a step; nothing is trained or written."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from semiclust.engine.loggers import check_installed
from semiclust.engine.numbers import RunNumbers
from semiclust.engine.setup import build_core, draw_subset, optimizer_for
from semiclust.config.schema import Recipe


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


def saved_bytes(network: nn.Module, inputs) -> int:
    """Bytes of the tensors autograd keeps for backward during one forward of `network` on `inputs`.

    Counted with saved-tensor hooks, once per storage (a tensor saved by several operations counts once),
    parameters left out (they are memory anyway). What gradient checkpointing does not keep is not saved,
    and what it keeps (each checkpointed block's input) is, so the count follows it; the blocks it
    recomputes during backward add one block's activations at a time, which this leaves out."""
    parameters = {p.untyped_storage().data_ptr() for p in network.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        network(inputs)
    return sum(kept.values())


def activation_bytes_per_image(network: nn.Module, recipe: Recipe, channels: int, probe: int = 2) -> float:
    """Activation memory per image of a step: the bytes autograd keeps for backward (`saved_bytes`) when the
    student runs once, in training mode and fp32, on random crops of the recipe's sizes for `probe` images.

    Divide by 2 for bf16/fp16 autocast. An estimate to size batches, not a guarantee."""
    was_training = network.training
    try:
        network.train()
        total = saved_bytes(network, [torch.randn(shape) for shape in probe_shapes(recipe, channels, probe)])
    finally:
        network.train(was_training)
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


def build_dry_run(recipe: Recipe, processes: int) -> DryRun:
    """Build the data (so missing files fail here), the model (with its initialisation) and the optimiser
    as training would, for `processes` processes, and estimate activation memory per process; a tracker
    package the recipe's loggers need but that is not installed is an error here already."""
    check_installed(recipe)
    core = build_core(recipe, lambda dataset: draw_subset(dataset, recipe), 0, processes)
    dataset, method, numbers = core.dataset, core.method, core.numbers
    optimizer = optimizer_for(method, recipe, numbers, torch.device("cpu"))
    teacher = method.networks().get("teacher")  # Daino's EMA teacher, the one network beside the student it trains
    per_image = activation_bytes_per_image(method.student, recipe, dataset.channels)
    images = numbers.images_per_step // (processes * recipe.optim.accumulate_steps)  # per process and batch
    half = recipe.runtime.precision in ("bf16", "fp16")
    gib = per_image * images / (2 if half else 1) / 2**30
    precision = {"auto": f"fp32 on CPU; ~{gib / 2:.2f} GiB under bf16 on a GPU", "fp32": "fp32"}.get(
        recipe.runtime.precision, recipe.runtime.precision)
    return DryRun(dataset.name, len(dataset.train), len(core.subset.indices), core.subset.identity,
                  None if dataset.test is None else len(dataset.test), dataset.num_classes, core.numbers,
                  parameter_counts(method.student), sum(p.numel() for p in teacher.parameters()) if teacher is not None else 0,
                  f"{recipe.optim.name}, {len(optimizer.param_groups)} parameter group(s)", gib, precision,
                  core.init_report.summary() if core.init_report else None)
