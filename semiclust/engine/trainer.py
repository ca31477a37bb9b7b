"""The training loop, read top to bottom: data, model, optimiser, schedules, resume, loop, evaluation.

One process needs no launcher; under torchrun every process runs this same function and all
cross-process work goes through engine/dist.py (gradients through DistributedDataParallel).
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
from semiclust.data.loader import Corrupt, TrainFiles, make_loader
from semiclust.data.mixup import mix_extend
from semiclust.data.streams import labeled_stream, unlabeled_stream
from semiclust.data.subsets import LabeledSubset, choose_labeled, load_subset, save_subset
from semiclust.data.transforms import CropAugment
from semiclust.engine import dist
from semiclust.engine.checkpoint import latest_usable, periodic_checkpoints, save_checkpoint, save_periodic
from semiclust.engine.metrics import MetricsLog
from semiclust.engine.optim import build_optimizer, set_lr_and_decay
from semiclust.engine.progress import TrainingProgress
from semiclust.engine.plan import run_numbers, steps_per_epoch
from semiclust.engine.schedules import cosine, warmup_cosine
from semiclust.engine.signals import StopRequest
from semiclust.engine.syncbn import convert_sync_batchnorm
from semiclust.errors import SemiclustError
from semiclust.evaluate import EvalResult, EvalViews, evaluate
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
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def final(self) -> Path:
        return self.checkpoints / "final.pt"

    def last_periodic(self) -> Path | None:
        found = periodic_checkpoints(self.checkpoints)
        return found[-1] if found else None


@dataclass
class TrainSummary:
    run_dir: Path
    checkpoint: Path
    result: EvalResult | None  # None when the dataset has no evaluation split
    steps: int
    seconds: float


class TrainingStopped(SemiclustError):
    """Raised after a signal: a checkpoint was written and the run can be resumed."""


# ---------------------------------------------------------------- set-up helpers
def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise SemiclustError("runtime.device is 'cuda' but no CUDA device is visible; use device: auto or cpu.")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", dist.local_rank() if dist.is_distributed() else torch.cuda.current_device())


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None = fp32. auto: bf16 on CUDA devices that support it, fp32 on CPU (bf16 is slow there)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def uses_channels_last(choice: str | bool, device: torch.device, model: torch.nn.Module) -> bool:
    has_conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return choice is True or (choice == "auto" and device.type == "cuda" and has_conv)


def prepare_run_dir(files: RunFiles, recipe: Recipe, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: a folder holding another run is used only with --resume or --overwrite."""
    holds_run = files.recipe.exists() or files.checkpoints.exists()
    if holds_run and not (resume or overwrite):
        saved_name = yaml.safe_load(files.recipe.read_text()).get("name") if files.recipe.exists() else "?"
        raise SemiclustError(
            f"run directory '{files.root}' already holds a run (recipe '{saved_name}'). Pass --resume to continue "
            "it, --overwrite to replace it, or choose another --out."
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
        if files.final.exists():
            raise SemiclustError(f"'{files.root}' already finished (checkpoints/final.pt exists); nothing to resume.")
    dist.barrier()
    if dist.is_main():
        if overwrite and not resume:
            for stale in (files.metrics, files.subset, files.recipe):
                stale.unlink(missing_ok=True)
            shutil.rmtree(files.checkpoints, ignore_errors=True)
            shutil.rmtree(files.root / "tensorboard", ignore_errors=True)
        files.root.mkdir(parents=True, exist_ok=True)
        files.recipe.write_text(dump_yaml(recipe))
    dist.barrier()


def load_dataset(recipe: Recipe) -> Dataset:
    """The recipe's dataset; refuses one whose listing has problems (missing files, empty classes...)."""
    dataset = build_dataset(recipe.data.dataset, recipe.data.options)
    if dataset.problems:
        shown = "; ".join(dataset.problems[:3]) + (f"; and {len(dataset.problems) - 3} more" if len(dataset.problems) > 3 else "")
        raise SemiclustError(
            f"dataset '{dataset.name}' has {len(dataset.problems)} problem(s): {shown}. Fix the files or data.options; "
            "`semiclust data check RECIPE` lists every problem."
        )
    return dataset


def labeled_subset_for(files: RunFiles, dataset: Dataset, recipe: Recipe, resume: bool) -> LabeledSubset:
    """Draw the labeled subset, or reuse the one saved in the run directory when resuming."""
    if resume and files.subset.exists():
        return load_subset(files.subset, dataset.train)
    subset = choose_labeled(dataset.train, recipe.data.labels, recipe.seed, dataset.num_classes)
    if dist.is_main():
        save_subset(subset, dataset.train, files.subset)
    return subset


def process_rows(per_process: int, copies: int, rank: int, world: int) -> torch.Tensor:
    """Rows of the global batch's augmentation parameters that belong to this process.

    Process r's j-th image is position j * world + r of the global batch (DistributedSampler's
    interleaving); with `copies` crops per image, copy k of it is row k * global + j * world + r.
    """
    local = torch.arange(per_process) * world + rank
    return torch.cat([k * per_process * world + local for k in range(copies)])


class BatchMaker:
    """Builds a step's StepBatch from the two index streams with batched, seeded augmentation.

    Every process draws the augmentation parameters of the whole global batch from the same
    generator and applies its own rows, so crops do not depend on the number of processes. In-memory
    datasets are cropped on the device; image files are decoded and cropped by loader workers
    (data/loader.py) and only their photometric ops run here.
    """

    def __init__(self, recipe: Recipe, dataset: Dataset, subset: LabeledSubset, method: Method,
                 device: torch.device, channels_last: bool):
        data, rank, world = recipe.data, dist.rank(), dist.world_size()
        self.dataset, self.device, self.method, self.recipe = dataset, device, method, recipe
        self.channels_last, self.world = channels_last, world
        self.unlabeled = unlabeled_stream(len(dataset.train), data.batch.unlabeled, recipe.seed, rank, world)
        self.labeled = (labeled_stream(subset.indices, data.batch.labeled, recipe.seed, rank, world)
                        if method.uses_labels else None)
        self.crop_groups = [CropAugment(g, dataset.mean, dataset.std) for g in data.unlabeled.crops]
        self.labeled_view = CropAugment(data.labeled, dataset.mean, dataset.std)
        self.generator = torch.Generator(device=device).manual_seed(recipe.seed * 7_919 + 1)
        self.accumulate = recipe.optim.accumulate_steps
        if self.unlabeled.batches_per_pass < self.accumulate:
            raise SemiclustError(
                f"optim.accumulate_steps is {self.accumulate} but one epoch holds only "
                f"{self.unlabeled.batches_per_pass} batches; lower accumulate_steps or data.batch.unlabeled."
            )
        self.rows = {(n, c): process_rows(n, c, rank, world).to(device)
                     for n in (data.batch.unlabeled, data.batch.labeled) for c in {1, *(g.count for g in data.unlabeled.crops)}}
        self.files = None if dataset.in_memory else TrainFiles(
            dataset.train, self.unlabeled if method.uses_unlabeled else None, self.labeled, data.unlabeled.crops,
            data.labeled, recipe.seed, rank, world)
        self._items, self._next_position = None, -1
        self.corrupt_images = 0
        self.on_corrupt = lambda corrupt: None  # the trainer's warning

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch (each takes `accumulate` batches)."""
        return steps_per_epoch(len(self.dataset.train), self.recipe.data.batch.unlabeled, self.world, self.accumulate)

    def micro_batches(self, step: int):
        """The batches of optimiser step `step`: stream positions step * accumulate ... + accumulate - 1."""
        for index in range(step * self.accumulate, (step + 1) * self.accumulate):
            yield self(index)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _shares(self, images: int, copies: int) -> dict:
        """This process's rows of the global batch's augmentation draws (nothing to select in one process)."""
        if self.world == 1:
            return {}
        return {"rows": self.rows[(images, copies)], "total": images * copies * self.world}

    def _augment(self, augment: CropAugment, images: torch.Tensor, copies: int) -> torch.Tensor:
        stacked = images.repeat(copies, 1, 1, 1) if copies > 1 else images
        return augment(stacked, self.generator, **self._shares(len(images), copies))

    def _file_item(self, position: int) -> dict:
        """The loader's item for `position`; the loader (re)starts wherever the positions jump."""
        if self._items is None or position != self._next_position:
            end = self.steps_per_epoch * self.recipe.schedule.epochs * self.accumulate
            self._items = iter(make_loader(self.files, range(position, end), self.recipe.data.loader, self.device))
        item = next(self._items)
        self._next_position = position + 1
        if item["error"]:
            raise SemiclustError(item["error"], exit_code=1)
        if item["corrupt"]:
            self.corrupt_images += len(item["corrupt"])
            self.on_corrupt(item["corrupt"])
        return item

    def _file_crops(self, position: int) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
        """Unlabeled crops, labeled view (photometric ops done here, on the device) and labels of a position."""
        item = self._file_item(position)
        unlabeled = []
        for group, raw in zip(self.crop_groups, item["unlabeled"]):
            count = group.group.count
            raw = raw.to(self.device, non_blocking=True)
            unlabeled.extend(group.finish(raw, self.generator, **self._shares(len(raw) // count, count)).chunk(count))
        view = labels = None
        if self.labeled is not None:
            raw = item["labeled"].to(self.device, non_blocking=True)
            view, labels = self.labeled_view.finish(raw, self.generator, **self._shares(len(raw), 1)), item["labels"]
        return unlabeled, view, labels

    def _memory_crops(self, position: int) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
        images, unlabeled = self.dataset.train.images, []
        if self.method.uses_unlabeled:
            raw = images[self.unlabeled.indices(position)].to(self.device, non_blocking=True)
            for group in self.crop_groups:
                unlabeled.extend(self._augment(group, raw, group.group.count).chunk(group.group.count))
        view = labels = None
        if self.labeled is not None:
            index = self.labeled.indices(position)
            view = self._augment(self.labeled_view, images[index].to(self.device, non_blocking=True), 1)
            labels = self.dataset.train.labels[index]
        return unlabeled, view, labels

    def __call__(self, step: int) -> StepBatch:
        unlabeled, view, labels = self._memory_crops(step) if self.files is None else self._file_crops(step)
        batch = StepBatch(unlabeled=[self._layout(c) for c in unlabeled])
        if view is not None:
            targets = F.one_hot(labels.to(self.device), self.dataset.num_classes).float()
            mix = self.recipe.method.mixup
            if mix.enabled:
                view, targets = mix_extend(view, targets, mix.mixup_prob, mix.alpha, self.generator)
            batch.labeled, batch.labeled_targets = self._layout(view), targets
        return batch

    def images_per_step(self) -> int:
        data = self.recipe.data.batch
        return self.world * self.accumulate * ((data.unlabeled if self.method.uses_unlabeled else 0)
                                               + (data.labeled if self.method.uses_labels else 0))


def process_state(method: Method, device: torch.device) -> dict:
    """What differs between processes and must be saved for each: RNG states and the method's
    per-process buffers (the Suave queue holds this process's own embeddings)."""
    state = {"torch": torch.get_rng_state(), "local": {k: v.detach().cpu() for k, v in method.state_dict().items()
                                                      if k.startswith(method.per_process_prefixes)}}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def training_state(method: Method, optimizer, scaler, step: int, batches: BatchMaker, recipe: Recipe,
                   dataset: Dataset, subset: LabeledSubset, result: EvalResult | None, per_rank: list,
                   skipped_steps: int) -> dict:
    state = {
        "semiclust_version": __version__,
        "recipe": recipe.model_dump(mode="json"),
        "step": step,
        "epoch": step // batches.steps_per_epoch,
        "world_size": dist.world_size(),
        "method": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "augment_rng": batches.generator.get_state().cpu(),
        "per_rank": per_rank,
        "skipped_steps": skipped_steps,
        "classes": list(dataset.classes),
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "labeled_indices": subset.indices.clone(),
        "labeled_sha256": subset.digest,
        "labeled_list_sha256": subset.list_sha256,
        "labeled_files": ([dataset.train.files[i] for i in subset.indices.tolist()]
                          if not dataset.in_memory else None),
        "corrupt_images": batches.corrupt_images,
        "classifier": {"prefix": "teacher" if method.classifier is not method.student else "student",
                       "prototypes": method.prototypes, "in_chans": dataset.channels,
                       "num_classes": dataset.num_classes, "matched": not method.uses_labels},
    }
    if result is not None:
        state["eval"] = result.as_dict()
    return state


def restore(state: dict, method: Method, optimizer, scaler, batches: BatchMaker, device: torch.device) -> int:
    """Load a periodic checkpoint into the live objects; returns the step to continue from."""
    if state.get("world_size", 1) != dist.world_size():
        raise SemiclustError(
            f"--resume: the checkpoint was written by {state['world_size']} process(es) but this run has "
            f"{dist.world_size()}; resume with the same number of processes (exact resume depends on it)."
        )
    mine = state["per_rank"][dist.rank()]
    method.load_state_dict({**state["method"], **mine["local"]})
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(mine["torch"].cpu())
    if device.type == "cuda" and "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"].cpu(), device)
    batches.generator.set_state(state["augment_rng"].cpu())
    batches.corrupt_images = state.get("corrupt_images", 0)
    return state["step"]


def backward(loss: torch.Tensor, scaler) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def optimizer_step(method: Method, optimizer, scaler, step: int, clip_grad_norm: float | None) -> None:
    """Optional clipping, the optimiser step and the method's post-step bookkeeping."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    method.zero_frozen_grads(step)
    if clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(method.trainable_parameters(), clip_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    method.after_optimizer_step(step)


def apply_gradients(method: Method, optimizer, scaler, loss: torch.Tensor, step: int,
                    clip_grad_norm: float | None) -> None:
    """One whole update from one loss: zero, backward, step (no accumulation)."""
    optimizer.zero_grad(set_to_none=True)
    backward(loss, scaler)
    optimizer_step(method, optimizer, scaler, step, clip_grad_norm)


def non_finite_error(step: int, parts: dict[str, float], files: RunFiles, skipped: int) -> SemiclustError:
    shown = ", ".join(f"{k} {v:.4g}" for k, v in parts.items())
    last = files.last_periodic()
    where = f"The last good checkpoint is '{last}'" if last else "No checkpoint was written yet"
    also = f" after skipping {skipped} bad step(s)" if skipped else ""
    return SemiclustError(
        f"the loss became non-finite at step {step}{also} ({shown}). {where}. Lower optim.lr, add warm-up "
        "(schedule.warmup_epochs), set optim.clip_grad_norm, or use runtime.precision: fp32, then --resume "
        "(runtime.skip_nonfinite_steps skips a bounded number of such steps).",
        exit_code=1,
    )


def open_tensorboard(files: RunFiles, enabled: bool):
    if not (enabled and dist.is_main()):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SemiclustError("runtime.tensorboard is on but the tensorboard package is not installed; "
                             "`pip install tensorboard` or set runtime.tensorboard: false.") from None
    return SummaryWriter(str(files.root / "tensorboard"))


# ---------------------------------------------------------------- the run
def train(recipe: Recipe, run_dir: Path, console: Console | None = None, resume: bool = False,
          overwrite: bool = False, resume_hint: str | None = None) -> TrainSummary:
    console = console or Console()
    files = RunFiles(Path(run_dir))
    use_cuda = recipe.runtime.device != "cpu" and torch.cuda.is_available()
    dist.init_from_env(use_cuda)
    device = resolve_device(recipe.runtime.device)
    world, rank = dist.world_size(), dist.rank()
    if recipe.runtime.threads:
        torch.set_num_threads(recipe.runtime.threads)
    prepare_run_dir(files, recipe, resume, overwrite)

    # data
    dataset = load_dataset(recipe)
    subset = labeled_subset_for(files, dataset, recipe, resume)

    # model and method: identical initial weights on every process, then per-process randomness
    torch.manual_seed(recipe.seed)
    numbers = run_numbers(recipe, len(dataset.train), world, METHODS.get(recipe.method.name).uses_unlabeled)
    method = METHODS.get(recipe.method.name)(recipe, dataset.num_classes, dataset.channels, numbers.steps_per_epoch)
    sync_bn = recipe.runtime.sync_batchnorm is True or (recipe.runtime.sync_batchnorm == "auto" and world > 1)
    if sync_bn:
        convert_sync_batchnorm(method, device.type == "cuda")
    method.to(device)
    channels_last = uses_channels_last(recipe.runtime.channels_last, device, method)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    if recipe.runtime.compile:
        method.student.backbone.compile()  # in place: state_dict keys stay those of the plain model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        method.set_student_runner(DistributedDataParallel(
            method.student, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False))
    torch.manual_seed(recipe.seed + 1 + rank)
    batches = BatchMaker(recipe, dataset, subset, method, device, channels_last)
    eval_views = None if dataset.test is None else EvalViews(
        dataset.test, recipe.data.eval, dataset.mean, dataset.std, recipe.eval.batch_size, device, recipe.data.loader)
    total_steps = numbers.total_steps

    # optimiser and schedules (lr scaled by the global unlabeled batch; labeled for `supervised`)
    optim, schedule = recipe.optim, recipe.schedule
    peak_lr, warmup_steps = numbers.peak_lr, numbers.warmup_steps
    optimizer = build_optimizer(method.student, optim, peak_lr, fused=device.type == "cuda")
    amp_dtype = autocast_dtype(recipe.runtime.precision, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

    def lr_at(step: int) -> float:
        return warmup_cosine(step, total_steps, warmup_steps, peak_lr, schedule.final_lr, schedule.warmup_start_lr)

    def weight_decay_at(step: int) -> float:
        end = optim.weight_decay_end if optim.weight_decay_end is not None else optim.weight_decay
        return cosine(step, total_steps, optim.weight_decay, end)

    # resume from the newest readable periodic checkpoint
    start_step, skipped = 0, 0
    if resume:
        found = latest_usable(files.checkpoints, map_location=device)
        if found is not None:
            start_step = restore(found[1], method, optimizer, scaler, batches, device)
            skipped = found[1].get("skipped_steps", 0)

    metrics = MetricsLog(files.metrics, enabled=dist.is_main())
    board = open_tensorboard(files, recipe.runtime.tensorboard)
    mode = recipe.runtime.progress
    if mode == "auto":
        mode = "rich" if console.is_terminal else "plain"
    progress = TrainingProgress(console, total_steps, start_step, batches.steps_per_epoch,
                                mode if dist.is_main() else "none")  # rank 0 reports for everyone
    params = sum(p.numel() for p in method.student.parameters())
    progress.message(
        f"semiclust {__version__}: {recipe.method.name} on {dataset.name} ({len(dataset.train)} train, "
        f"{len(subset.indices)} labeled [{subset.identity}], "
        + (f"{len(dataset.test)} {dataset.test_split_name}" if dataset.test is not None else "no evaluation set")
        + f"); {params:,} parameters; {batches.steps_per_epoch} steps/epoch x "
        f"{schedule.epochs} epochs = {total_steps} steps; lr {peak_lr:.4g} (scaled); {world} process(es) on {device}"
        + (", SyncBatchNorm" if sync_bn else "") + (f", {amp_dtype}" if amp_dtype else "")
        + (f"; resuming at step {start_step}" if start_step else "")
    )
    if method.init_report is not None:
        progress.message(method.init_report.summary())

    def warn_corrupt(corrupt: list[Corrupt]) -> None:
        for bad in corrupt:
            if recipe.data.corrupt_images == "fail":
                raise SemiclustError(
                    f"unreadable training image '{bad.path}' ({bad.reason}). Replace or remove the file, or set "
                    "data.corrupt_images: skip to skip unreadable images with a warning; `semiclust data check "
                    "RECIPE --all` lists every one.", exit_code=1)
            progress.message(f"warning: skipped unreadable image '{bad.path}' ({bad.reason}); "
                             f"{batches.corrupt_images} skipped so far")

    batches.on_corrupt = warn_corrupt

    def run_eval(step: int) -> EvalResult | None:
        if eval_views is None:
            return None
        evaluated = evaluate(method.classifier, eval_views, dataset.test_split_name, match=not method.uses_labels)
        metrics.write({"type": "eval", "step": step, "epoch": step // batches.steps_per_epoch, **evaluated.as_dict()})
        if board is not None:
            board.add_scalar("eval/top1", evaluated.top1, step)
        return evaluated

    def checkpoint_state(step: int, result: EvalResult | None = None) -> dict | None:
        per_rank = dist.gather_objects(process_state(method, device))
        if not dist.is_main():
            return None
        return training_state(method, optimizer, scaler, step, batches, recipe, dataset, subset, result,
                              per_rank, skipped)

    def save_periodic_checkpoint(step: int) -> Path | None:
        state = checkpoint_state(step)
        path = save_periodic(state, files.checkpoints, recipe.checkpoint.keep_last) if state else None
        dist.barrier()
        return path

    ckpt = recipe.checkpoint
    last_save_time = time.monotonic()
    started = time.perf_counter()
    window_start, window_steps, data_seconds = time.perf_counter(), 0, 0.0
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    method.train()
    with StopRequest() as stop:
        try:
            for step in range(start_step, total_steps):
                lr = lr_at(step)
                set_lr_and_decay(optimizer, lr, weight_decay_at(step))
                if recipe.runtime.skip_nonfinite_steps:  # a skipped step must not leave NaNs in queue, center, BN
                    buffers_before = {k: v.clone() for k, v in method.named_buffers()}
                optimizer.zero_grad(set_to_none=True)
                parts_sum: dict[str, torch.Tensor] = {}
                finite = True
                micro_batches = batches.micro_batches(step)
                for micro in range(batches.accumulate):
                    data_start = time.perf_counter()
                    batch = next(micro_batches)
                    data_seconds += time.perf_counter() - data_start
                    last = micro == batches.accumulate - 1
                    # gradients are all-reduced once per optimiser step, on the last micro-batch
                    no_sync = method.student_runner.no_sync() if world > 1 and not last else contextlib.nullcontext()
                    with no_sync:
                        with autocast:
                            out = method.training_step(batch, step)
                        finite &= bool(torch.isfinite(out.loss))
                        backward(out.loss / batches.accumulate, scaler)  # also when non-finite: ranks stay in step
                    for key, value in out.parts.items():
                        parts_sum[key] = parts_sum.get(key, 0) + value / batches.accumulate
                if dist.any_process(not finite, device):
                    parts = {k: float(v) for k, v in parts_sum.items()}
                    if skipped >= recipe.runtime.skip_nonfinite_steps:
                        raise non_finite_error(step, parts, files, skipped)
                    skipped += 1
                    with torch.no_grad():
                        for name, value in method.named_buffers():
                            value.copy_(buffers_before[name])
                    progress.message(f"step {step}: non-finite loss ({parts}); step skipped "
                                     f"({skipped}/{recipe.runtime.skip_nonfinite_steps} allowed)")
                    continue  # the next step starts by zeroing the discarded gradients
                optimizer_step(method, optimizer, scaler, step, optim.clip_grad_norm)
                window_steps += 1
                progress.advance(step)
                done = step + 1
                if done % recipe.runtime.log_every_steps == 0 or done == total_steps:
                    names = sorted(parts_sum)
                    averaged = dist.all_reduce_mean(torch.stack([parts_sum[k].float() for k in names]))
                    parts = dict(zip(names, averaged.tolist()))
                    now = time.perf_counter()
                    speed = window_steps * batches.images_per_step() / max(now - window_start, 1e-9)
                    record = {"type": "train", "step": done, "epoch": step // batches.steps_per_epoch, **parts,
                              "lr": lr, "weight_decay": weight_decay_at(step), "img_per_s": speed,
                              "step_s": (now - window_start) / max(window_steps, 1),
                              "data_s": data_seconds / max(window_steps, 1), "elapsed_s": now - started}
                    if batches.files is not None:
                        record["corrupt_images"] = batches.corrupt_images
                    metrics.write(record)
                    if board is not None:
                        for key in (*names, "lr", "img_per_s"):
                            board.add_scalar(f"train/{key}", record[key], done)
                    window_start, window_steps, data_seconds = now, 0, 0.0
                    progress.report(step, parts, lr, speed)
                epoch_end = done % batches.steps_per_epoch == 0
                epoch = done // batches.steps_per_epoch
                if (epoch_end and done < total_steps and recipe.eval.every_epochs and eval_views is not None
                        and epoch % recipe.eval.every_epochs == 0):
                    evaluated = run_eval(done)
                    progress.message(f"epoch {epoch}: top-1 {evaluated.top1:.2f}%  top-5 {evaluated.top5:.2f}%")
                stop_now = dist.any_process(stop.requested, device)
                timed = bool(ckpt.every_minutes) and dist.any_process(
                    time.monotonic() - last_save_time >= 60 * ckpt.every_minutes, device)
                due = (timed or (ckpt.every_steps and done % ckpt.every_steps == 0)
                       or (epoch_end and ckpt.every_epochs and epoch % ckpt.every_epochs == 0))
                if done < total_steps and (due or stop_now):
                    path = save_periodic_checkpoint(done)
                    last_save_time = time.monotonic()
                    if stop_now:
                        hint = resume_hint or f"semiclust train RECIPE --out {files.root} --resume"
                        raise TrainingStopped(
                            f"stopped by {stop.signal_name or 'a signal on another process'} after step {done}; "
                            f"checkpoint '{path or files.last_periodic()}' written. Continue with: {hint}",
                            exit_code=130 if stop.signal_name == "SIGINT" else 143,
                        )
        finally:
            progress.close()

    result = run_eval(total_steps)
    seconds = time.perf_counter() - started
    state = checkpoint_state(total_steps, result)
    if state is not None:
        save_checkpoint(state, files.final)
    dist.barrier()
    if board is not None:
        board.close()
    return TrainSummary(files.root, files.final, result, total_steps - start_step, seconds)
