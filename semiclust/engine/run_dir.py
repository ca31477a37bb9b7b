"""The run directory: where each artefact of a run lives, and the rules of a folder.

One rule for what semiclust may write and delete: a run directory is a folder semiclust created or found
empty, marked by `.semiclust-run`; semiclust writes there only files it knows by name (RUN_FILES,
CHECKPOINT_FILE, the tracker folders) and deletes only those, so that a user's own file is never overwritten
or removed (a `recipe.yaml` of one's own, `checkpoints/my_pretrained.pt`). A folder that holds anything
else is refused unless it is empty; a run written by a version before the marker is recognised by its own
files and adopted. One live run per folder (an OS lock, storage/lock.py); a folder holding a trained step
is reused only with --resume or --overwrite, while one whose start failed before any step is simply started
again. Nothing of the run being replaced is removed before the new start is built (recipe, data, labeled
subset, networks): see `begin_files`. --resume accepts the changes that do not alter what was already
computed (RESUMABLE_KEYS and RESUMABLE_SECTIONS; `resumable_keys()` words them for every message), which are
printed and recorded in recipe_history.jsonl. Rank 0 decides and tells the other processes.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from semiclust.engine import dist
from semiclust.engine.checkpoint import latest_usable, periodic_checkpoints
from semiclust.errors import SemiclustError, examples
from semiclust.config.schema import Batch, Recipe
from semiclust.storage.atomic import TEMPORARY, check_writable, remove_stale_temporaries, write_text
from semiclust.storage.lock import LOCK_NAME, FolderLock
from semiclust.config.validation import dump_yaml, read_yaml, validate_saved

RESUMABLE_KEYS = ("optim.lr", "optim.clip_grad_norm")  # what --resume may change: these keys, and every key of
RESUMABLE_SECTIONS = ("schedule.", "runtime.", "checkpoint.", "eval.")  # these sections

MARKER = ".semiclust-run"  # written into a folder semiclust created or found empty: this folder is a run directory
RUN_FILES = ("recipe.yaml", "budget.json", "recipe_history.jsonl", "labeled_subset.json", "validation_subset.json",
             "metrics.jsonl", "trackers.json", "curves.png", ".calibration.jsonl")  # written by semiclust, by name
CHECKPOINT_FILE = re.compile(r"^(step_\d{9}\.pt|final\.pt|best\.pt|final_confusion\.png|\.calibration\.pt)$")
TRACKER_FILES = {"tensorboard": re.compile(r"^events\.out\.tfevents\..+$"),  # what the trackers write in their folders
                 "wandb": re.compile(r"^(run-.+|offline-run-.+|latest-run|debug.*\.log|debug-cli\..+)$")}


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


    @property
    def marker(self) -> Path:
        """The file that makes a folder a run directory (semiclust created it, or found it empty)."""
        return self.root / MARKER

    def last_periodic(self) -> Path | None:
        found = periodic_checkpoints(self.checkpoints)
        return found[-1] if found else None

    def trained(self) -> bool:
        """Whether the folder holds a trained step (a periodic or final checkpoint): only then is it a run."""
        return self.final.exists() or bool(periodic_checkpoints(self.checkpoints))


@dataclass
class Claim:
    """What rank 0 decided about the folder: the recipe to run, whether to resume, the changes --resume
    accepted (key -> [saved, given]), the notes to print, and whether recipe.yaml must be written again (it was
    damaged, and the newest checkpoint's copy of the recipe was used)."""

    recipe: Recipe
    resume: bool
    changes: dict[str, list] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rewrite_recipe: bool = False


def is_ours(name: str, folder: str = "") -> bool:
    """Whether semiclust writes an entry of this name in this part of a run directory ('' its top, 'checkpoints',
    'tensorboard' or 'wandb'): the only entries it ever replaces or deletes."""
    if TEMPORARY.match(name):  # what a killed atomic write leaves
        return True
    if folder == "":
        return name in RUN_FILES or name in (MARKER, LOCK_NAME, "checkpoints", "tensorboard", "wandb")
    if folder == "checkpoints":
        return bool(CHECKPOINT_FILE.match(name))
    return bool(TRACKER_FILES[folder].match(name))


def entries(folder: Path) -> list[str]:
    """The names in a folder, sorted (none when it does not exist)."""
    try:
        return sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []


def earlier_run(names: list[str]) -> bool:
    """A run directory written before the marker existed: semiclust's own files only, a recipe and a record of a
    start (metrics or the labeled subset). A lone recipe.yaml is a user's file, not a run."""
    return all(is_ours(name) for name in names) and "recipe.yaml" in names and bool(
        {"metrics.jsonl", "labeled_subset.json"} & set(names))


def shown_out(root: Path) -> str:
    """--out as the user gave it, and where it leads when that is not obvious (the current folder, a link)."""
    text = f"'{root}'" + (" (the current folder)" if str(root) in ("", ".") else "")
    return text + (f" (a symbolic link to '{os.path.realpath(root)}')" if root.is_symlink() else "")


def folder_state(root: Path) -> str:
    """'new' (missing or empty), 'run' (marked as a run directory) or 'earlier' (an earlier version's run); any
    other folder is refused, so that a run never lands among files that are not semiclust's."""
    names = [name for name in entries(root) if name != LOCK_NAME]
    if not names:
        return "new"
    if MARKER in names:
        return "run"
    if earlier_run(names):
        return "earlier"
    raise SemiclustError(
        f"--out {shown_out(root)} is not empty and is not a semiclust run directory (it holds "
        f"{examples(names, 4)}). semiclust writes a run only into a new or empty folder, or into a run directory it "
        f"wrote itself, so that it never overwrites or deletes files of yours: choose a new --out (e.g. "
        f"'{root / 'run'}'), or empty that folder.")


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


def resumable_keys() -> str:
    """What --resume may change, in words: 'optim.lr, optim.clip_grad_norm, schedule.*, ... and eval.*'."""
    names = [*RESUMABLE_KEYS, *(section + "*" for section in RESUMABLE_SECTIONS)]
    return ", ".join(names[:-1]) + " and " + names[-1]


def decide_resume(files: RunFiles, recipe: Recipe) -> Claim:
    """--resume in a folder that holds a run: the saved recipe, with the changes that may be made."""
    if files.final.exists():
        raise SemiclustError(f"'{files.root}' already finished (checkpoints/final.pt exists); nothing to resume.")
    saved, source, damage = saved_recipe(files)
    saved = validate_saved(saved, source).model_dump(mode="json")  # a recipe saved before new keys gains their defaults
    recipe = same_batches_as_saved(recipe, saved)
    changes = recipe_differences(saved, recipe.model_dump(mode="json"))
    refused = [f"{key}: {old!r} vs {new!r}" for key, (old, new) in changes.items() if not resumable(key)]
    if refused:
        raise SemiclustError(
            f"--resume: the recipe differs from the one saved in '{files.recipe}' in {len(refused)} key(s) that would "
            f"change what was already computed: {examples(refused, 10, quote=False)}. Resume with the saved values (or "
            f"drop those --set), or start a new run in another --out. ({resumable_keys()} may change on resume.)")
    notes = [f"changed on resume: {key}: {old!r} -> {new!r}" for key, (old, new) in changes.items()]
    if damage:
        notes.insert(0, f"warning: '{files.recipe}' {damage}; resuming with the recipe saved in {source}, which is "
                        "written back to recipe.yaml")
    return Claim(recipe, True, changes, notes, rewrite_recipe=bool(damage))


def read_recipe_file(path: Path) -> tuple[dict | None, str | None]:
    """A run directory's recipe.yaml as a dict, or None and what is wrong with it (missing, not YAML, not a
    mapping): damaged run files are named, never a traceback."""
    try:
        saved = read_yaml(path, "run recipe")  # bounded in size and aliases; its errors are YAMLErrors
    except FileNotFoundError:
        return None, "is missing"
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        first = " ".join(str(err).split())[:160]
        return None, f"is damaged ({type(err).__name__}: {first})"
    if not isinstance(saved, dict):
        return None, f"is damaged (it holds a YAML {type(saved).__name__}, not a recipe)"
    return saved, None


def saved_recipe(files: RunFiles) -> tuple[dict, str, str | None]:
    """The recipe a run saved, where it came from, and what was wrong with recipe.yaml if the newest readable
    checkpoint's own copy had to be used instead (every checkpoint holds the recipe that wrote it)."""
    saved, damage = read_recipe_file(files.recipe)
    if saved is not None:
        return saved, f"'{files.recipe}'", None
    found = latest_usable(files.checkpoints)
    if found is None or not isinstance(found[1].recipe, dict):
        raise SemiclustError(f"--resume: '{files.recipe}' {damage} and no readable checkpoint holds a copy of the "
                             "recipe, so the run cannot be checked; start a new run in another --out.")
    return found[1].recipe, f"checkpoint '{found[0]}'", damage


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
    """Rank 0's decision, the folder locked: start, start again, resume, or refuse (a SemiclustError). Nothing
    is removed here: a run being replaced keeps its files until the new start is built (`begin_files`)."""
    state = folder_state(files.root)
    notes = [f"'{files.root}' was written by an earlier version of semiclust: it is now marked as a run directory"
             ] if state == "earlier" else []
    if not files.trained():
        started = files.recipe.exists() or files.metrics.exists()
        note = f"'{files.root}' held no trained step (an earlier start failed before training): starting again"
        return Claim(recipe, False, notes=notes + ([note] if started and not overwrite else []))
    if resume:
        claim = decide_resume(files, recipe)
        claim.notes = notes + claim.notes
        return claim
    if not overwrite:
        saved, _ = read_recipe_file(files.recipe)
        name = saved.get("name") if saved else None
        which = f" (recipe '{name}')" if isinstance(name, str) else ""
        raise SemiclustError(
            f"run directory '{files.root}' already holds a run{which}. Pass --resume to continue it, --overwrite to "
            "replace it, or choose another --out.")
    return Claim(recipe, False, notes=notes)


def ours_in(files: RunFiles) -> list[Path]:
    """Every file and folder of the run directory that semiclust wrote, known by name: all that a new run in the
    folder removes (a file of the user's, e.g. checkpoints/my_pretrained.pt, is never one of them)."""
    found = [files.root / name for name in entries(files.root) if is_ours(name) and name not in (
        MARKER, LOCK_NAME, "checkpoints", "tensorboard", "wandb")]
    for folder in ("checkpoints", "tensorboard", "wandb"):
        found += [files.root / folder / name for name in entries(files.root / folder) if is_ours(name, folder)]
    return found


def clean_for_a_new_run(files: RunFiles) -> list[str]:
    """Remove what a new run replaces: the earlier run's (or a failed start's) files, tracker logs included, and
    nothing else; returns the entries that stay because semiclust did not write them."""
    for path in ours_in(files):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    kept = []
    for folder in ("checkpoints", "tensorboard", "wandb"):
        left = entries(files.root / folder)
        kept += [f"{folder}/{name}" for name in left]
        if (files.root / folder).is_dir() and not left:
            (files.root / folder).rmdir()
    return kept


def check_out_folder(root: Path) -> None:
    """--out names a folder that may hold a run: not an empty string, not a file."""
    if str(root) == "":
        raise SemiclustError("--out is empty; give the folder of the run (a new or empty folder, or a run directory "
                             "semiclust wrote).")
    if root.exists() and not root.is_dir():
        raise SemiclustError(f"--out '{root}' is a file, not a folder; choose a folder for the run.")


def claim_run_dir(files: RunFiles, recipe: Recipe, resume: bool, overwrite: bool,
                  device=None) -> tuple[Claim, FolderLock | None]:
    """Lock the folder (rank 0), decide, remove stale temporary files and mark the folder as a run directory;
    every process gets the decision (or the refusal) of rank 0. Nothing of an earlier run is removed yet."""
    claim, lock, error = None, None, None
    if dist.is_main():
        try:
            check_out_folder(files.root)
            check_writable(files.root / "recipe.yaml", "run directory file", "Choose a writable --out.")
            if files.root.exists():
                folder_state(files.root)  # refused before the lock file is written into a folder of the user's
            lock = FolderLock(files.root)
            taken_over = lock.acquire()
            claim = decide(files, recipe, resume, overwrite)
            claim.notes = ([f"warning: {taken_over}"] if taken_over else []) + claim.notes
            for folder in (files.root, files.checkpoints):
                remove_stale_temporaries(folder)
            if not files.marker.exists():
                write_text(files.marker, json.dumps({"format": "semiclust-run", "created":
                                                     datetime.datetime.now().isoformat(timespec="seconds")}) + "\n")
        except SemiclustError as err:
            if lock is not None:
                lock.release()
            error = err
    if dist.any_process(error is not None, device):
        raise error or SemiclustError("rank 0 refused the run directory (its error is printed there).")
    return dist.broadcast_object(claim), lock


def begin_files(files: RunFiles, claim: Claim, write_records) -> list[str]:
    """Once the new start is built (recipe, data, labeled subset, networks): a new run removes what it replaces
    (semiclust's files only) and writes recipe.yaml and `write_records()` (the labeled subset); a resumed run
    writes recipe.yaml again if it was damaged. Rank 0 only; returns the notes to print."""
    if not dist.is_main():
        return []
    if claim.resume:
        if claim.rewrite_recipe:
            write_text(files.recipe, dump_yaml(claim.recipe))
        return []
    kept = clean_for_a_new_run(files)
    write_text(files.recipe, dump_yaml(claim.recipe))
    write_records()
    return [f"kept {examples(kept, 4)} in '{files.root}': semiclust did not write them"] if kept else []


def record_changes(files: RunFiles, claim: Claim, step: int) -> None:
    """A resumed run that accepted changes: the new recipe in recipe.yaml, the change in recipe_history.jsonl."""
    if not (claim.changes and dist.is_main()):
        return
    entry = {"step": step, "time": datetime.datetime.now().isoformat(timespec="seconds"), "changes": claim.changes}
    history = files.history.read_text() if files.history.exists() else ""
    write_text(files.history, history + json.dumps(entry) + "\n")
    write_text(files.recipe, dump_yaml(claim.recipe))
