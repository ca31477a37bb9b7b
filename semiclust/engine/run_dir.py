"""The run directory: where each artefact of a run lives, and the rules of a folder.

One live run per folder (an OS lock, storage/lock.py); a folder holding a trained step is reused only
with --resume or --overwrite, while one whose start failed before any step is simply started again;
--resume accepts the changes that do not alter what was already computed (optim.lr,
optim.clip_grad_norm, schedule.*, runtime.*, checkpoint.*, eval.*), which are printed and recorded
in recipe_history.jsonl. Rank 0 decides and tells the other processes.
"""
from __future__ import annotations

import datetime
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from semiclust.assign import ASSIGNMENTS
from semiclust.engine import dist
from semiclust.engine.checkpoint import periodic_checkpoints
from semiclust.errors import SemiclustError, examples
from semiclust.schema import Batch, Recipe
from semiclust.storage.atomic import check_writable, remove_stale_temporaries, write_text
from semiclust.storage.lock import FolderLock
from semiclust.validation import dump_yaml, validate_saved

RESUMABLE_KEYS = ("optim.lr", "optim.clip_grad_norm")
RESUMABLE_SECTIONS = ("schedule.", "runtime.", "checkpoint.", "eval.")


@dataclass
class RunFiles:
    """The artefacts of a run directory."""

    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def budget(self) -> Path:
        """A budgeted run's calibration and the number of steps it decided (reused on resume)."""
        return self.root / "budget.json"

    @property
    def history(self) -> Path:
        return self.root / "recipe_history.jsonl"

    @property
    def subset(self) -> Path:
        return self.root / "labeled_subset.json"

    @property
    def validation(self) -> Path:
        """The validation split (data.validation), saved like the labeled subset."""
        return self.root / "validation_subset.json"

    @property
    def best(self) -> Path:
        """The checkpoint of the best validation top-1 seen (data.validation)."""
        return self.checkpoints / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def final(self) -> Path:
        return self.checkpoints / "final.pt"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def wandb(self) -> Path:
        return self.root / "wandb"

    @property
    def trackers(self) -> Path:
        """The W&B and MLflow run ids of this run (so that --resume continues them)."""
        return self.root / "trackers.json"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def final_confusion(self) -> Path:
        """Where `semiclust eval` writes the final checkpoint's confusion PNG (and a run with trackers does)."""
        return self.checkpoints / "final_confusion.png"


    def last_periodic(self) -> Path | None:
        found = periodic_checkpoints(self.checkpoints)
        return found[-1] if found else None

    def trained(self) -> bool:
        """Whether the folder holds a trained step (a periodic or final checkpoint): only then is it a run."""
        return self.final.exists() or bool(periodic_checkpoints(self.checkpoints))


@dataclass
class Claim:
    """What rank 0 decided about the folder: the recipe to run, whether to resume, the changes --resume
    accepted (key -> [saved, given]) and the notes to print."""

    recipe: Recipe
    resume: bool
    changes: dict[str, list] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def flatten(value, prefix: str = "") -> dict:
    """A nested recipe dict as {dotted key: value}."""
    if not isinstance(value, dict):
        return {prefix: value}
    out = {}
    for key, child in value.items():
        out.update(flatten(child, f"{prefix}.{key}" if prefix else str(key)))
    return out


def recipe_differences(saved: dict, given: dict) -> dict[str, list]:
    """Every dotted key whose value differs between two resolved recipes: key -> [saved, given]."""
    old, new = flatten(saved), flatten(given)
    return {key: [old.get(key), new.get(key)] for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)}


def resumable(key: str) -> bool:
    return key in RESUMABLE_KEYS or key.startswith(RESUMABLE_SECTIONS)


def decide_resume(files: RunFiles, recipe: Recipe) -> Claim:
    """--resume in a folder that holds a run: the saved recipe, with the changes that may be made."""
    if files.final.exists():
        raise SemiclustError(f"'{files.root}' already finished (checkpoints/final.pt exists); nothing to resume.")
    saved = yaml.safe_load(files.recipe.read_text()) if files.recipe.exists() else None
    if not isinstance(saved, dict):
        raise SemiclustError(f"--resume: '{files.recipe}' is missing or unreadable, so the run cannot be checked; "
                             "start a new run in another --out.")
    sections = {"assignment_specs": ASSIGNMENTS.specs()}  # a recipe saved before new keys gains their defaults
    saved = validate_saved(saved, f"'{files.recipe}'", sections).model_dump(mode="json")
    recipe = same_batches_as_saved(recipe, saved)
    changes = recipe_differences(saved, recipe.model_dump(mode="json"))
    refused = [f"{key}: {old!r} vs {new!r}" for key, (old, new) in changes.items() if not resumable(key)]
    if refused:
        raise SemiclustError(
            f"--resume: the recipe differs from the one saved in '{files.recipe}' in {len(refused)} key(s) that would "
            f"change what was already computed: {examples(refused, 10, quote=False)}. Resume with the saved values (or "
            "drop those --set), or start a new run in another --out. (optim.lr, optim.clip_grad_norm, schedule.*, "
            "runtime.*, checkpoint.* and eval.* may change on resume.)")
    notes = [f"changed on resume: {key}: {old!r} -> {new!r}" for key, (old, new) in changes.items()]
    return Claim(recipe, True, changes, notes)


def same_batches_as_saved(recipe: Recipe, saved: dict) -> Recipe:
    """A run saved with per-process batches, resumed with a recipe whose global batches give every process the
    same share: the run continues with its saved batch section (the same batches, said the old way)."""
    old, new = saved["data"]["batch"], recipe.data.batch
    shares = dist.world_size() * recipe.optim.accumulate_steps
    if old["per"] != "process" or new.per != "global" or \
            (new.unlabeled, new.labeled) != (old["unlabeled"] * shares, old["labeled"] * shares):
        return recipe
    return recipe.model_copy(update={"data": recipe.data.model_copy(update={"batch": Batch(**old)})})


def decide(files: RunFiles, recipe: Recipe, resume: bool, overwrite: bool) -> Claim:
    """Rank 0's decision, the folder locked: start, start again, resume, or refuse (a SemiclustError)."""
    if not files.trained():
        started = files.recipe.exists() or files.metrics.exists()
        note = [f"'{files.root}' held no trained step (an earlier start failed before training): starting again"]
        return Claim(recipe, False, notes=note if started and not overwrite else [])
    if resume:
        return decide_resume(files, recipe)
    if not overwrite:
        saved = yaml.safe_load(files.recipe.read_text()) if files.recipe.exists() else {}
        raise SemiclustError(
            f"run directory '{files.root}' already holds a run (recipe '{(saved or {}).get('name', '?')}'). Pass "
            "--resume to continue it, --overwrite to replace it, or choose another --out.")
    return Claim(recipe, False)


def clean_for_a_new_run(files: RunFiles) -> None:
    """What a new run replaces: an earlier run's (or a failed start's) files, tracker logs included."""
    for stale in (files.metrics, files.subset, files.validation, files.recipe, files.history, files.trackers, files.curves,
                  files.budget):
        stale.unlink(missing_ok=True)
    for folder in (files.checkpoints, files.tensorboard, files.wandb):
        shutil.rmtree(folder, ignore_errors=True)


def claim_run_dir(files: RunFiles, recipe: Recipe, resume: bool, overwrite: bool,
                  device=None) -> tuple[Claim, FolderLock | None]:
    """Lock the folder (rank 0), decide, clear what a new run replaces and stale temporary files, write
    recipe.yaml for a new run; every process gets the decision (or the refusal) of rank 0."""
    claim, lock, error = None, None, None
    if dist.is_main():
        try:
            if files.root.exists() and not files.root.is_dir():
                raise SemiclustError(f"--out '{files.root}' is a file, not a folder; choose a folder for the run.")
            check_writable(files.root / "recipe.yaml", "run directory file", "Choose a writable --out.")
            lock = FolderLock(files.root)
            taken_over = lock.acquire()
            claim = decide(files, recipe, resume, overwrite)
            claim.notes = ([f"warning: {taken_over}"] if taken_over else []) + claim.notes
            for folder in (files.root, files.checkpoints):
                remove_stale_temporaries(folder)
            if not claim.resume:
                clean_for_a_new_run(files)
                write_text(files.recipe, dump_yaml(claim.recipe))
        except SemiclustError as err:
            if lock is not None:
                lock.release()
            error = err
    if dist.any_process(error is not None, device):
        raise error or SemiclustError("rank 0 refused the run directory (its error is printed there).")
    return dist.broadcast_object(claim), lock


def record_changes(files: RunFiles, claim: Claim, step: int) -> None:
    """A resumed run that accepted changes: the new recipe in recipe.yaml, the change in recipe_history.jsonl."""
    if not (claim.changes and dist.is_main()):
        return
    entry = {"step": step, "time": datetime.datetime.now().isoformat(timespec="seconds"), "changes": claim.changes}
    history = files.history.read_text() if files.history.exists() else ""
    write_text(files.history, history + json.dumps(entry) + "\n")
    write_text(files.recipe, dump_yaml(claim.recipe))
