"""The composition root: a Recipe into the run's objects (dataset, labeled subset, streams, run numbers,
networks with their initialisation, method, optimiser, batches). Training and the dry run both build
through `build_core`, so what the dry run prints is what training does, by construction.

The order matters for exact reproduction: the student (then a Daino teacher) is built right after
`torch.manual_seed(seed)`, so every process starts from identical weights; per-process randomness is
seeded after the network is placed and wrapped.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from semiclust.assign.prior import ClassPrior
from semiclust.data.batches import BatchMaker
from semiclust.data.cache import cache_in_memory
from semiclust.data.datasets import Dataset, FileSplit, build_dataset, split_rows
from semiclust.data.eval_views import EvalViews
from semiclust.data.readable import unreadable_among
from semiclust.data.streams import BOTH, IndexStream, Stream, labeled_stream, unlabeled_pool, unlabeled_stream
from semiclust.data.subsets import LabeledSubset, choose_labeled, choose_validation, class_counts, load_subset
from semiclust.engine import dist
from semiclust.engine.device import autocast_dtype, uses_channels_last
from semiclust.engine.finite import FiniteWatch
from semiclust.engine.numbers import RunNumbers, process_batches, run_numbers
from semiclust.engine.optim import build_optimizer
from semiclust.engine.run import Run
from semiclust.engine.run_dir import RunFiles
from semiclust.engine.schedules import Schedules
from semiclust.engine.syncbn import convert_sync_batchnorm
from semiclust.errors import SemiclustError, examples
from semiclust.methods import METHODS, Method
from semiclust.methods.base import PartKit
from semiclust.methods.label_propagation import PropagatedTargets
from semiclust.models.init import InitReport, initialize
from semiclust.models.network import Network, keep_running_stats_in_recompute
from semiclust.config.schema import Recipe
from semiclust.config.validation import with_method_section


# BatchNorm buffers stay per process (SyncBatchNorm shares the statistics that matter); torch 2.14 renamed
# the option, and warns on the old name
NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                  if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
                  else {"broadcast_buffers": False})


def load_dataset(recipe: Recipe) -> Dataset:
    """The recipe's dataset; refuses one whose listing has problems (missing files, empty classes...)."""
    dataset = build_dataset(recipe.data.dataset, recipe.data.options)
    if dataset.problems:
        raise SemiclustError(
            f"dataset '{dataset.name}' has {len(dataset.problems)} problem(s): {examples(dataset.problems, 3, False)}. "
            "Fix the files or data.options; `semiclust data check RECIPE` lists every problem."
        )
    return dataset


def unreadable_check(dataset: Dataset, recipe: Recipe):
    """For image files, what the labeled draw asks: which of these images cannot be decoded (in workers; files
    that decoded at an earlier start and have not changed since are not decoded again, data/readable.py)."""
    if not isinstance(dataset.train, FileSplit):
        return None
    split = dataset.train

    def unreadable(indices: list[int]) -> dict[int, str]:
        return unreadable_among(split, indices, recipe.data.loader, recipe.data.max_image_pixels)

    return unreadable


def draw_subset(dataset: Dataset, recipe: Recipe) -> LabeledSubset:
    """The recipe's labeled subset, readable images only (unreadable files are passed over, and named)."""
    return choose_labeled(dataset.train, recipe.data.labels, recipe.seed, dataset.num_classes, dataset.classes,
                          unreadable_check(dataset, recipe))


def draw_validation(dataset: Dataset, recipe: Recipe, labeled: LabeledSubset) -> LabeledSubset:
    """The recipe's validation split: labeled training images outside the labeled subset, readable ones only."""
    return choose_validation(dataset.train, recipe.data.validation, recipe.seed, dataset.num_classes, labeled,
                             dataset.classes, unreadable_check(dataset, recipe))


def validation_for(files: RunFiles, recipe: Recipe, resume: bool) -> ValidationFor:
    """Draw the validation split on rank 0 (sent to the other processes; the trainer saves it beside the labeled
    subset once the start is built), or reuse the saved one on resume."""
    def held_out(dataset: Dataset, labeled: LabeledSubset) -> LabeledSubset:
        if resume and files.validation.exists():
            return load_subset(files.validation, dataset.train)
        return dist.broadcast_object(draw_validation(dataset, recipe, labeled) if dist.is_main() else None)

    return held_out


def labeled_subset_for(files: RunFiles, dataset: Dataset, recipe: Recipe, resume: bool) -> LabeledSubset:
    """Draw the labeled subset on rank 0 (sent to the other processes; the trainer writes it to the run directory
    once the whole start is built, so that a start that fails replaces nothing), or reuse the saved one when
    resuming."""
    if resume and files.subset.exists():
        return load_subset(files.subset, dataset.train)
    return dist.broadcast_object(draw_subset(dataset, recipe) if dist.is_main() else None)


def build_student(recipe: Recipe, in_chans: int, num_classes: int, kind: type[Method]) -> tuple[Network, InitReport | None]:
    """The student network, initialised from `model.init` when the recipe names a file."""
    student = Network(recipe.model, in_chans, num_classes, kind.prototypes, temperature=recipe.method.temperature)
    return student, initialize(student, recipe.model.init) if recipe.model.init else None


def assemble_method(kind: type[Method], recipe: Recipe, student: Network, in_chans: int, num_classes: int,
                    schedules: Schedules, processes: int) -> Method:
    """The method with its parts, made by the method's own `build` from the kit of this run."""
    kit = PartKit(recipe, student, schedules, in_chans, num_classes, processes, kind.prototypes)
    return kind.build(kit)


def build_method(recipe: Recipe, num_classes: int, in_chans: int, steps_per_epoch: int, world: int = 1) -> Method:
    """The recipe's method with freshly built parts and `steps_per_epoch` steps an epoch (for a notebook or a test;
    training uses build_core)."""
    recipe = with_method_section(recipe)
    kind = METHODS.get(recipe.method.name)
    shares = process_batches(recipe.data.batch, world, recipe.optim.accumulate_steps)[0] * world
    numbers = run_numbers(recipe, steps_per_epoch * shares * recipe.optim.accumulate_steps, world, kind.streams)
    student, _ = build_student(recipe, in_chans, num_classes, kind)
    return assemble_method(kind, recipe, student, in_chans, num_classes, Schedules(recipe, numbers), world)


@dataclass
class Core:
    """What training and the dry run share: data, subset, streams of one process, numbers, the method."""

    dataset: Dataset
    subset: LabeledSubset
    unlabeled: IndexStream
    labeled: IndexStream | None
    numbers: RunNumbers
    schedules: Schedules
    method: Method
    init_report: InitReport | None
    notes: list[str]
    validation: LabeledSubset | None = None  # data.validation: held out of both streams


ValidationFor = Callable[[Dataset, LabeledSubset], LabeledSubset]


def build_core(recipe: Recipe, subset_for: Callable[[Dataset], LabeledSubset], rank: int, world: int,
               cache: bool = False, validation_for: ValidationFor | None = None) -> Core:
    """Dataset (its image files decoded into memory when `cache` and the recipe allow), labeled subset and
    validation split, this process's index streams (they check that the batches fit), the run numbers, then
    the networks (seeded) and the method."""
    dataset = load_dataset(recipe)
    notes = cache_in_memory(dataset, recipe.data) if cache else []
    subset = subset_for(dataset)
    validation = None
    if recipe.data.validation is not None:
        validation = (validation_for or (lambda data, labeled: draw_validation(data, recipe, labeled)))(dataset, subset)
    kind = METHODS.get(recipe.method.name)
    pool = unlabeled_pool(len(dataset.train), validation.indices if validation is not None else None)
    numbers = run_numbers(recipe, len(pool), world, kind.streams)
    unlabeled = unlabeled_stream(pool, numbers.process_unlabeled, recipe.seed, rank, world)
    labeled = (labeled_stream(subset.indices, numbers.process_labeled, recipe.seed, rank, world)
               if Stream.LABELED in kind.streams else None)
    torch.manual_seed(recipe.seed)  # identical initial weights on every process
    student, report = build_student(recipe, dataset.channels, dataset.num_classes, kind)
    schedules = Schedules(recipe, numbers)
    method = assemble_method(kind, recipe, student, dataset.channels, dataset.num_classes, schedules, world)
    if recipe.schedule.propagates:
        if kind.streams != BOTH:
            raise SemiclustError(
                f"schedule.finetune.targets: propagated spreads the labeled images' classes to the unlabeled ones, but "
                f"method '{recipe.method.name}' trains on {'labeled' if Stream.LABELED in kind.streams else 'unlabeled'}"
                " images only; use it with a method that trains on both (suave, daino), or set targets to method.")
        method.propagation = PropagatedTargets(len(dataset.train))
    for prior in (module for module in method.modules() if isinstance(module, ClassPrior)):
        prior.use_counts(class_counts(dataset.train.labels, subset.indices, dataset.num_classes))
    return Core(dataset, subset, unlabeled, labeled, numbers, schedules, method, report, notes, validation)


def optimizer_for(method: Method, recipe: Recipe, numbers: RunNumbers, device: torch.device) -> torch.optim.Optimizer:
    """The recipe's optimiser over the student (fused kernels on CUDA), at the scaled peak lr."""
    return build_optimizer(method.student, recipe.optim, numbers.peak_lr, fused=device.type == "cuda")


def place(method: Method, recipe: Recipe, device: torch.device, world: int) -> tuple[torch.nn.Module, bool, bool]:
    """SyncBatchNorm, device, channels-last, compile and DistributedDataParallel; returns the runner of
    the student, whether BatchNorm is synchronised and whether channels-last is on."""
    runtime = recipe.runtime
    sync_bn = runtime.sync_batchnorm is True or (runtime.sync_batchnorm == "auto" and world > 1)
    if sync_bn:
        convert_sync_batchnorm(method, device.type == "cuda")
        if recipe.model.grad_checkpointing:
            keep_running_stats_in_recompute(method)  # the new BatchNorm layers need the guard too
    method.to(device)
    channels_last = uses_channels_last(runtime.channels_last, device, method)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    if runtime.compile:
        method.student.backbone.compile()  # in place: state_dict keys stay those of the plain model
    runner = method.student if world == 1 else DistributedDataParallel(
        method.student, device_ids=[device.index] if device.type == "cuda" else None, **NO_BUFFER_SYNC)
    return runner, sync_bn, channels_last


def build_run(recipe: Recipe, files: RunFiles, device: torch.device, resume: bool) -> Run:
    """Everything a training process needs, in the order that makes runs reproducible (module docstring)."""
    world, rank = dist.world_size(), dist.rank()
    core = build_core(recipe, lambda dataset: labeled_subset_for(files, dataset, recipe, resume), rank, world,
                      cache=True, validation_for=validation_for(files, recipe, resume))
    runner, sync_bn, channels_last = place(core.method, recipe, device, world)
    torch.manual_seed(recipe.seed + 1 + rank)
    dataset, numbers = core.dataset, core.numbers
    batches = BatchMaker(recipe, dataset, core.unlabeled, core.labeled, core.method.streams, numbers, device,
                         channels_last, rank, world)
    eval_views = None if dataset.test is None else views_of(dataset.test, recipe, dataset, device)
    validation_views = None if core.validation is None else views_of(
        split_rows(dataset.train, core.validation.indices), recipe, dataset, device)
    amp_dtype = autocast_dtype(recipe.runtime.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)  # off: its calls pass through
    return Run(recipe, dataset, core.subset, numbers, core.schedules, core.method,
               optimizer_for(core.method, recipe, numbers, device), scaler, batches, eval_views, device, amp_dtype,
               runner, sync_bn, core.init_report, core.notes, validation_views, core.validation,
               FiniteWatch(device) if device.type == "cuda" and not recipe.runtime.skip_nonfinite_steps else None)


def views_of(split, recipe: Recipe, dataset: Dataset, device: torch.device) -> EvalViews:
    """The evaluation views of a split (the test split, or the validation split carved from training)."""
    return EvalViews(split, recipe.data.eval, dataset.mean, dataset.std, recipe.eval.batch_size, device,
                     recipe.data.loader, recipe.data.max_image_pixels)
