"""The training state a checkpoint holds, and putting it back into the live objects (exact resume)."""
from __future__ import annotations

import torch

from semiclust.data.streams import Stream
from semiclust.engine import dist
from semiclust.engine.run import Run
from semiclust.errors import SemiclustError
from semiclust.evaluation.during_training import RunEvaluation
from semiclust.methods.base import Method
from semiclust.version import __version__


def process_state(method: Method, device: torch.device) -> dict:
    """What differs between processes and must be saved for each: RNG states and the method's
    per-process buffers (the Suave queue holds this process's own embeddings)."""
    state = {"torch": torch.get_rng_state(), "local": {k: v.detach().cpu() for k, v in method.state_dict().items()
                                                      if k.startswith(method.per_process_prefixes)}}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def classifier_info(method: Method, channels: int, num_classes: int) -> dict:
    """How to rebuild the evaluated network from the method's state (checkpoint.classifier_network)."""
    prefix = next(name for name, network in method.networks().items() if network is method.classifier)
    return {"prefix": prefix,
            "prototypes": method.prototypes, "in_chans": channels, "num_classes": num_classes,
            "matched": Stream.LABELED not in method.streams}


def training_state(run: Run, step: int, evaluation: RunEvaluation | None, per_rank: list, skipped_steps: int) -> dict:
    """Everything a checkpoint of `run` at `step` holds (plain tensors and Python values)."""
    method, dataset, subset = run.method, run.dataset, run.subset
    state = {
        "semiclust_version": __version__,
        "recipe": run.recipe.model_dump(mode="json"),
        "step": step,
        "epoch": step // run.numbers.steps_per_epoch,
        "world_size": dist.world_size(),
        "method": method.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "augment_rng": run.batches.generator.get_state().cpu(),
        **({"augment_host_rng": run.batches.host_generator.get_state()}
           if run.batches.host_generator is not run.batches.generator else {}),
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
        "corrupt_images": run.batches.corrupt_images,
        "classifier": classifier_info(method, dataset.channels, dataset.num_classes),
    }
    if run.validation is not None:
        state["validation_indices"] = run.validation.indices.clone()
    if evaluation is not None:
        if evaluation.result is not None:
            state["eval"] = evaluation.result.as_dict()
        if evaluation.beside:  # the test results of the other networks, for an export of one of them
            state["eval_beside"] = {name: r.as_dict() for name, r in evaluation.beside.items()}
        if evaluation.validation is not None:
            state["validation"] = evaluation.validation.as_dict()
    return state


def misfit(state: dict, method: Method) -> str | None:
    """Why a checkpoint's weights cannot go into this run's networks (a tensor missing, unexpected or of another
    shape: a damaged or edited file), or None: resume then falls back to the previous checkpoint rather than fail
    half-way through loading this one."""
    expected = method.state_dict()
    saved = state.get("method")
    if not isinstance(saved, dict):
        return "it holds no network weights"
    mine = state.get("per_rank", [{}])[dist.rank()] if isinstance(state.get("per_rank"), list) else {}
    saved = {**saved, **(mine.get("local", {}) if isinstance(mine, dict) else {})}
    for key, tensor in expected.items():
        found = saved.get(key)
        if not isinstance(found, torch.Tensor):
            return f"tensor '{key}' is missing"
        if found.shape != tensor.shape:
            return (f"tensor '{key}' has shape {tuple(found.shape)} where this run's network has "
                    f"{tuple(tensor.shape)} (a damaged or edited file)")
    extra = sorted(set(saved) - set(expected))
    return f"it holds tensors this run's networks do not have (e.g. '{extra[0]}')" if extra else None


def restore(state: dict, run: Run) -> int:
    """Load a periodic checkpoint into the live objects; returns the step to continue from."""
    if state.get("world_size", 1) != dist.world_size():
        raise SemiclustError(
            f"--resume: the checkpoint was written by {state['world_size']} process(es) but this run has "
            f"{dist.world_size()}; resume with the same number of processes (exact resume depends on it)."
        )
    mine = state["per_rank"][dist.rank()]
    run.method.load_state_dict({**state["method"], **mine["local"]})
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(mine["torch"].cpu())
    if run.device.type == "cuda" and "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"].cpu(), run.device)
    run.batches.generator.set_state(state["augment_rng"].cpu())
    if run.batches.host_generator is not run.batches.generator and "augment_host_rng" in state:
        run.batches.host_generator.set_state(state["augment_host_rng"])
    run.batches.corrupt_images = state.get("corrupt_images", 0)
    return state["step"]
