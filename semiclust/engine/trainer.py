"""The training loop, read top to bottom: data, model, optimiser, schedules, resume, loop, evaluation.

One process needs no launcher; every cross-process reduction goes through engine/dist.py.
"""
from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from rich.console import Console

from semiclust import __version__
from semiclust.data.datasets import Dataset, build_dataset
from semiclust.data.mixup import mix_extend
from semiclust.data.streams import labeled_stream, unlabeled_stream
from semiclust.data.subsets import LabeledSubset, choose_labeled, load_subset, save_subset
from semiclust.data.transforms import CropAugment
from semiclust.engine import dist
from semiclust.engine.checkpoint import load_checkpoint, save_checkpoint
from semiclust.engine.metrics import MetricsLog
from semiclust.engine.optim import build_optimizer, set_lr_and_decay
from semiclust.engine.progress import TrainingProgress
from semiclust.engine.schedules import cosine, scaled_lr, warmup_cosine
from semiclust.errors import SemiclustError
from semiclust.evaluate import EvalResult, evaluate
from semiclust.methods import METHODS, Method, StepBatch
from semiclust.recipe import Recipe, dump_yaml


@dataclass
class RunFiles:
    """The artefacts of a run directory."""

    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def subset(self) -> Path:
        return self.root / "labeled_subset.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def last(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def final(self) -> Path:
        return self.root / "checkpoints" / "final.pt"


@dataclass
class TrainSummary:
    run_dir: Path
    checkpoint: Path
    result: EvalResult
    steps: int
    seconds: float


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise SemiclustError("runtime.device is 'cuda' but no CUDA device is visible; use device: auto or cpu.")
    if choice == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(choice)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None = fp32. auto: bf16 on CUDA devices that support it, fp32 on CPU (bf16 is slow there)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def uses_channels_last(choice: str, device: torch.device, model: torch.nn.Module) -> bool:
    has_conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return choice == "on" or (choice == "auto" and device.type == "cuda" and has_conv)


def prepare_run_dir(files: RunFiles, recipe: Recipe, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: a folder holding another run is used only with --resume or --overwrite."""
    holds_run = files.recipe.exists() or files.final.exists() or files.last.exists()
    if holds_run and not (resume or overwrite):
        raise SemiclustError(
            f"run directory '{files.root}' already holds a run. Pass --resume to continue it, --overwrite to "
            "replace it, or choose another --out."
        )
    if resume:
        if not files.recipe.exists():
            raise SemiclustError(f"--resume: '{files.root}' holds no run (no recipe.yaml); drop --resume to start one.")
        saved = yaml.safe_load(files.recipe.read_text())
        if saved != recipe.model_dump(mode="json"):
            raise SemiclustError(
                f"--resume: the recipe differs from the one saved in '{files.recipe}'. Resume with the same recipe "
                "and --set overrides, or start a new run in another --out."
            )
    elif overwrite and dist.is_main():
        for stale in (files.metrics, files.subset, files.recipe):
            stale.unlink(missing_ok=True)
        shutil.rmtree(files.root / "checkpoints", ignore_errors=True)
    if dist.is_main():
        files.root.mkdir(parents=True, exist_ok=True)
        files.recipe.write_text(dump_yaml(recipe))


def labeled_subset_for(files: RunFiles, dataset: Dataset, recipe: Recipe, resume: bool) -> LabeledSubset:
    """Draw the labeled subset, or reuse the one saved in the run directory when resuming."""
    if resume and files.subset.exists():
        return load_subset(files.subset)
    subset = choose_labeled(dataset.train.labels, recipe.data.labels, recipe.seed, dataset.num_classes)
    if dist.is_main():
        save_subset(subset, files.subset)
    return subset


class BatchMaker:
    """Builds a step's StepBatch from the two index streams with batched, seeded augmentation."""

    def __init__(self, recipe: Recipe, dataset: Dataset, subset: LabeledSubset, method: Method,
                 device: torch.device, channels_last: bool):
        data, rank, world = recipe.data, dist.rank(), dist.world_size()
        self.dataset, self.device, self.method, self.recipe = dataset, device, method, recipe
        self.channels_last = channels_last
        self.unlabeled = unlabeled_stream(len(dataset.train), data.batch.unlabeled, recipe.seed, rank, world)
        self.labeled = (labeled_stream(subset.indices, data.batch.labeled, recipe.seed, rank, world)
                        if method.uses_labels else None)
        self.crop_groups = [CropAugment(g, dataset.mean, dataset.std) for g in data.unlabeled.crops]
        self.labeled_view = CropAugment(data.labeled, dataset.mean, dataset.std)
        self.generator = torch.Generator(device=device).manual_seed(recipe.seed * 7_919 + rank + 1)

    @property
    def steps_per_epoch(self) -> int:
        return self.unlabeled.batches_per_pass

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(self, step: int) -> StepBatch:
        images = self.dataset.train.images
        batch = StepBatch(unlabeled=[])
        if self.method.uses_unlabeled:
            raw = images[self.unlabeled.indices(step)].to(self.device, non_blocking=True)
            for group in self.crop_groups:
                crops = group(raw.repeat(group.group.count, 1, 1, 1), self.generator)
                batch.unlabeled.extend(self._layout(c) for c in crops.chunk(group.group.count))
        if self.labeled is not None:
            index = self.labeled.indices(step)
            view = self.labeled_view(images[index].to(self.device, non_blocking=True), self.generator)
            targets = F.one_hot(self.dataset.train.labels[index].to(self.device), self.dataset.num_classes).float()
            mix = self.recipe.method.mixup
            if mix.enabled:
                view, targets = mix_extend(view, targets, mix.mixup_prob, mix.alpha, self.generator)
            batch.labeled, batch.labeled_targets = self._layout(view), targets
        return batch

    def images_per_step(self) -> int:
        data = self.recipe.data.batch
        return dist.world_size() * ((data.unlabeled if self.method.uses_unlabeled else 0)
                                    + (data.labeled if self.method.uses_labels else 0))


def training_state(method: Method, optimizer, scaler, step: int, batches: BatchMaker, recipe: Recipe,
                   dataset: Dataset, subset: LabeledSubset, result: EvalResult | None) -> dict:
    state = {
        "semiclust_version": __version__,
        "recipe": recipe.model_dump(mode="json"),
        "step": step,
        "epoch": step // batches.steps_per_epoch,
        "method": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": {"torch": torch.get_rng_state(), "augment": batches.generator.get_state()},
        "classes": list(dataset.classes),
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "labeled_indices": subset.indices.clone(),
        "labeled_sha256": subset.digest,
        "classifier": {"prefix": "teacher" if method.classifier is not method.student else "student",
                       "prototypes": method.prototypes, "in_chans": dataset.channels,
                       "num_classes": dataset.num_classes, "matched": not method.uses_labels},
    }
    if result is not None:
        state["eval"] = result.as_dict()
    return state


def train(recipe: Recipe, run_dir: Path, console: Console | None = None, resume: bool = False,
          overwrite: bool = False) -> TrainSummary:
    console = console or Console()
    files = RunFiles(Path(run_dir))
    device = resolve_device(recipe.runtime.device)
    if recipe.runtime.threads:
        torch.set_num_threads(recipe.runtime.threads)
    torch.manual_seed(recipe.seed)
    prepare_run_dir(files, recipe, resume, overwrite)

    # data
    dataset = build_dataset(recipe.data.dataset, recipe.data.options)
    subset = labeled_subset_for(files, dataset, recipe, resume)

    # model and method (the unlabeled stream defines the epoch, so build it first)
    steps_per_epoch = len(dataset.train) // (recipe.data.batch.unlabeled * dist.world_size())
    method = METHODS.get(recipe.method.name)(recipe, dataset.num_classes, dataset.channels, max(steps_per_epoch, 1))
    method.to(device)
    channels_last = uses_channels_last(recipe.runtime.channels_last, device, method)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    batches = BatchMaker(recipe, dataset, subset, method, device, channels_last)
    total_steps = batches.steps_per_epoch * recipe.schedule.epochs

    # optimiser and schedules (lr scaled by the global unlabeled batch; labeled for `supervised`)
    optim, schedule = recipe.optim, recipe.schedule
    reference_images = recipe.data.batch.unlabeled if method.uses_unlabeled else recipe.data.batch.labeled
    peak_lr = scaled_lr(optim.lr, reference_images * dist.world_size(), optim.lr_reference_batch)
    warmup_steps = round(schedule.warmup_epochs * batches.steps_per_epoch)
    optimizer = build_optimizer(method.student, optim, peak_lr)
    amp_dtype = autocast_dtype(recipe.runtime.precision, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

    def lr_at(step: int) -> float:
        return warmup_cosine(step, total_steps, warmup_steps, peak_lr, schedule.final_lr, schedule.warmup_start_lr)

    def weight_decay_at(step: int) -> float:
        end = optim.weight_decay_end if optim.weight_decay_end is not None else optim.weight_decay
        return cosine(step, total_steps, optim.weight_decay, end)

    # resume
    start_step, result = 0, None
    if resume:
        if files.final.exists():
            raise SemiclustError(f"'{files.root}' already finished (checkpoints/final.pt exists); nothing to resume.")
        if files.last.exists():
            state = load_checkpoint(files.last, map_location=device)
            method.load_state_dict(state["method"])
            optimizer.load_state_dict(state["optimizer"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng"]["torch"].cpu())
            batches.generator.set_state(state["rng"]["augment"].cpu() if device.type == "cpu" else state["rng"]["augment"])
            start_step = state["step"]

    metrics = MetricsLog(files.metrics, enabled=dist.is_main())
    mode = recipe.runtime.progress
    if mode == "auto":
        mode = "rich" if console.is_terminal and dist.is_main() else "plain"
    progress = TrainingProgress(console, total_steps, start_step, batches.steps_per_epoch, mode)
    params = sum(p.numel() for p in method.student.parameters())
    progress.message(
        f"semiclust {__version__}: {recipe.method.name} on {dataset.name} ({len(dataset.train)} train, "
        f"{len(subset.indices)} labeled [{subset.description}, sha256 {subset.digest[:12]}], "
        f"{len(dataset.test)} {dataset.test_split_name}); {params:,} parameters; {batches.steps_per_epoch} steps/epoch x "
        f"{schedule.epochs} epochs = {total_steps} steps; lr {peak_lr:.4g} (scaled); device {device}"
        + (f"; resuming at step {start_step}" if start_step else "")
    )

    def run_eval(step: int) -> EvalResult:
        evaluated = evaluate(method.classifier, dataset.test, recipe.data.eval, dataset.mean, dataset.std,
                             recipe.eval.batch_size, device, dataset.test_split_name, match=not method.uses_labels)
        metrics.write({"type": "eval", "step": step, "epoch": step // batches.steps_per_epoch, **evaluated.as_dict()})
        return evaluated

    # the loop
    started = time.perf_counter()
    window_start, window_steps = time.perf_counter(), 0
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext())
    method.train()
    try:
        for step in range(start_step, total_steps):
            lr = lr_at(step)
            set_lr_and_decay(optimizer, lr, weight_decay_at(step))
            batch = batches(step)
            with autocast:
                out = method.training_step(batch, step)
            if not torch.isfinite(out.loss):
                raise non_finite_error(step, out.parts, files)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(out.loss).backward()
                method.zero_frozen_grads(step)
                scaler.step(optimizer)
                scaler.update()
            else:
                out.loss.backward()
                method.zero_frozen_grads(step)
                optimizer.step()
            method.after_optimizer_step(step)
            window_steps += 1
            progress.advance(step)
            if (step + 1) % recipe.runtime.log_every_steps == 0 or step + 1 == total_steps:
                parts = {k: float(v) for k, v in out.parts.items()}
                now = time.perf_counter()
                speed = window_steps * batches.images_per_step() / max(now - window_start, 1e-9)
                window_start, window_steps = now, 0
                metrics.write({"type": "train", "step": step + 1, "epoch": step // batches.steps_per_epoch,
                               **parts, "lr": lr, "weight_decay": weight_decay_at(step), "img_per_s": speed,
                               "elapsed_s": now - started})
                progress.report(step, parts, lr, speed)
            end_of_epoch = (step + 1) % batches.steps_per_epoch == 0
            epoch_done = (step + 1) // batches.steps_per_epoch
            if end_of_epoch and step + 1 < total_steps:
                if recipe.eval.every_epochs and epoch_done % recipe.eval.every_epochs == 0:
                    evaluated = run_eval(step + 1)
                    progress.message(f"epoch {epoch_done}: top-1 {evaluated.top1:.2f}%  top-5 {evaluated.top5:.2f}%")
                if recipe.checkpoint.every_epochs and epoch_done % recipe.checkpoint.every_epochs == 0 and dist.is_main():
                    save_checkpoint(training_state(method, optimizer, scaler, step + 1, batches, recipe, dataset,
                                                   subset, None), files.last)
    finally:
        progress.close()

    result = run_eval(total_steps)
    seconds = time.perf_counter() - started
    if dist.is_main():
        state = training_state(method, optimizer, scaler, total_steps, batches, recipe, dataset, subset, result)
        save_checkpoint(state, files.final)
    return TrainSummary(files.root, files.final, result, total_steps - start_step, seconds)


def non_finite_error(step: int, parts: dict[str, torch.Tensor], files: RunFiles) -> SemiclustError:
    shown = ", ".join(f"{k} {float(v):.4g}" for k, v in parts.items())
    last = files.last if files.last.exists() else None
    where = f"The last good checkpoint is '{last}'" if last else "No checkpoint was written yet"
    return SemiclustError(
        f"the loss became non-finite at step {step} ({shown}). {where}. Lower optim.lr, add warm-up "
        "(schedule.warmup_epochs), or use runtime.precision: fp32, then start again or --resume.",
        exit_code=1,
    )
