"""A run's objects as a checkpoint holds them, and putting them back (exact resume): the weights and buffers,
the optimiser, the gradient scaler, every generator, each process's own state, and what describes the run (recipe,
classes, labeled subset, classifier). The loop's own state (its step, the skipped steps) comes with it from the
trainer's `LoopState`."""
from __future__ import annotations

import torch

from semiclust.data.streams import Stream
from semiclust.engine import dist
from semiclust.engine.checkpoint import Checkpoint, ClassifierInfo, RankState
from semiclust.engine.run import Run
from semiclust.errors import SemiclustError
from semiclust.evaluation.during_training import RunEvaluation
from semiclust.methods.base import Method
from semiclust.version import __version__


def process_state(method: Method, device: torch.device) -> RankState:
    """What differs between processes and must be saved for each: RNG states and the method's per-process parts
    (the Suave queue holds this process's own embeddings)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return RankState(torch.get_rng_state(), method.per_process_state(), cuda)


def classifier_info(method: Method, channels: int, num_classes: int) -> ClassifierInfo:
    """How to rebuild the evaluated network from the method's state (checkpoint.classifier_network)."""
    prefix = next(name for name, network in method.networks().items() if network is method.classifier)
    return ClassifierInfo(prefix, method.prototypes, channels, num_classes, Stream.LABELED not in method.streams)


def run_checkpoint(run: Run, step: int, skipped_steps: int, per_rank: list[RankState | None],
                   evaluation: RunEvaluation | None = None) -> Checkpoint:
    """Everything a checkpoint of `run` after `step` steps holds (plain tensors and Python values once written)."""
    method, dataset, subset, batches = run.method, run.dataset, run.subset, run.batches
    evaluation = evaluation or RunEvaluation()
    return Checkpoint(
        semiclust_version=__version__, recipe=run.recipe.model_dump(mode="json"), step=step,
        epoch=run.schedules.epoch(step), world_size=dist.world_size(), method=method.state_dict(),
        optimizer=run.optimizer.state_dict(), scaler=run.scaler.state_dict() if run.scaler.is_enabled() else None,
        augment_rng=batches.generator.get_state().cpu(),
        augment_host_rng=batches.host_generator.get_state() if batches.host_generator is not batches.generator else None,
        per_rank=per_rank, skipped_steps=skipped_steps, classes=list(dataset.classes), mean=list(dataset.mean),
        std=list(dataset.std), labeled_indices=subset.indices.clone(), labeled_sha256=subset.digest,
        labeled_list_sha256=subset.list_sha256,
        labeled_files=[dataset.train.files[i] for i in subset.indices.tolist()] if not dataset.in_memory else None,
        corrupt_images=batches.corrupt_images, classifier=classifier_info(method, dataset.channels, dataset.num_classes),
        validation_indices=run.validation.indices.clone() if run.validation is not None else None,
        eval=evaluation.result.as_dict() if evaluation.result is not None else None,
        eval_beside={name: r.as_dict() for name, r in evaluation.beside.items()} or None,  # for an export of one
        validation=evaluation.validation.as_dict() if evaluation.validation is not None else None)


def misfit(checkpoint: Checkpoint, method: Method) -> str | None:
    """Why a checkpoint's weights cannot go into this run's networks (a tensor missing, unexpected or of another
    shape: a damaged or edited file), or None: resume then falls back to the previous checkpoint rather than fail
    half-way through loading this one."""
    expected = method.state_dict()
    if not isinstance(checkpoint.method, dict):
        return "it holds no network weights"
    if checkpoint.world_size == dist.world_size():  # another count is restore_run's error, not a fallback
        lacking = [r for r in range(dist.world_size()) if checkpoint.rank_state(r) is None]
        if lacking:  # decided from the file alone, so every process passes over the same checkpoints
            return f"it holds no state for process {lacking[0]} of {dist.world_size()} (a damaged or edited file)"
    mine = checkpoint.rank_state(dist.rank())
    local = mine.local if mine is not None and isinstance(mine.local, dict) else {}
    saved = {**checkpoint.method, **local}
    for key, tensor in expected.items():
        found = saved.get(key)
        if not isinstance(found, torch.Tensor):
            return f"tensor '{key}' is missing"
        if found.shape != tensor.shape:
            return (f"tensor '{key}' has shape {tuple(found.shape)} where this run's network has "
                    f"{tuple(tensor.shape)} (a damaged or edited file)")
    extra = sorted(set(saved) - set(expected))
    return f"it holds tensors this run's networks do not have (e.g. '{extra[0]}')" if extra else None


def restore_run(checkpoint: Checkpoint, run: Run) -> None:
    """Load a checkpoint into the run's live objects (the loop's own state is the trainer's to restore)."""
    if checkpoint.world_size != dist.world_size():
        raise SemiclustError(
            f"--resume: the checkpoint was written by {checkpoint.world_size} process(es) but this run has "
            f"{dist.world_size()}; resume with the same number of processes (exact resume depends on it)."
        )
    mine = checkpoint.rank_state(dist.rank())
    run.method.load_state_dict({**checkpoint.method, **mine.local})
    run.optimizer.load_state_dict(checkpoint.optimizer)
    if checkpoint.scaler:
        run.scaler.load_state_dict(checkpoint.scaler)
    torch.set_rng_state(mine.torch.cpu())
    if run.device.type == "cuda" and mine.cuda is not None:
        torch.cuda.set_rng_state(mine.cuda.cpu(), run.device)
    run.batches.generator.set_state(checkpoint.augment_rng.cpu())
    if run.batches.host_generator is not run.batches.generator and checkpoint.augment_host_rng is not None:
        run.batches.host_generator.set_state(checkpoint.augment_host_rng.cpu())  # loaded onto the run's device
    run.batches.corrupt_images = checkpoint.corrupt_images
