"""Free space for a run's checkpoints, checked before training: a nearly full disk is refused at the start
instead of losing the run when final.pt cannot be written.

A checkpoint's size is estimated from the networks' tensors and the optimiser's state per parameter (one
momentum buffer for SGD and LARS, two moments for AdamW; created at the first step, so counted here from the
parameters). At its fullest a run holds `checkpoint.keep_last` periodic checkpoints, the one being written
(or the last step's, kept during the final evaluation), final.pt and, with a validation split, best.pt.
"""
from __future__ import annotations

import shutil

import torch

from semiclust.engine.run import Run
from semiclust.engine.run_dir import RunFiles, ours_in
from semiclust.errors import SemiclustError
from semiclust.storage.atomic import existing_ancestor, human_bytes, mount_point

MARGIN_BYTES = 16 * 1024**2  # metrics.jsonl, recipes, PNGs, tracker logs


def checkpoint_bytes(run: Run) -> int:
    """About how many bytes one checkpoint of this run takes (tensors only; the rest is a few kilobytes)."""
    weights = sum(t.numel() * t.element_size() for t in run.method.state_dict().values())
    trained = sum(p.numel() * p.element_size() for p in run.method.student.parameters() if p.requires_grad)
    slots = 2 if isinstance(run.optimizer, (torch.optim.Adam, torch.optim.AdamW)) else 1
    return weights + slots * trained


def checkpoints_at_once(run: Run) -> int:
    """The most checkpoint files the run holds at one moment (module docstring)."""
    spec = run.recipe.checkpoint
    periodic = spec.keep_last if (spec.every_epochs or spec.every_steps or spec.every_minutes) else 0
    return periodic + 1 + 1 + (1 if run.validation is not None else 0)


def needed_space(run: Run, files: RunFiles) -> int:
    """The bytes the run's checkpoints need; refused in one paragraph when the disk of the run directory has
    less free (semiclust's own checkpoints already there count as free: they are replaced)."""
    each, count = checkpoint_bytes(run), checkpoints_at_once(run)
    needed = each * count + MARGIN_BYTES
    place = existing_ancestor(files.checkpoints)
    reusable = sum(p.stat().st_size for p in ours_in(files) if p.is_file() and p.parent == files.checkpoints)
    free = shutil.disk_usage(place).free + reusable
    if free < needed:
        raise SemiclustError(
            f"not enough free space for this run's checkpoints: each is about {human_bytes(each)} and the run keeps up "
            f"to {count} at once ({human_bytes(needed)} with its logs), but {mount_point(place)} has "
            f"{human_bytes(free)} free for '{files.root}'. Free some space, lower checkpoint.keep_last, or choose "
            "an --out on another disk; nothing was trained or removed.", exit_code=1)
    return needed
