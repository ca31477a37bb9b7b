"""The run directory: where each artefact of a run lives, and the rule that one folder holds one run."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from semiclust.engine import dist
from semiclust.engine.checkpoint import periodic_checkpoints
from semiclust.errors import SemiclustError
from semiclust.schema import Recipe
from semiclust.storage.atomic import write_text
from semiclust.validation import dump_yaml, validate


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
        saved = validate(yaml.safe_load(files.recipe.read_text()), f"'{files.recipe}'")  # older files gain defaults
        if saved.model_dump(mode="json") != recipe.model_dump(mode="json"):
            raise SemiclustError(
                f"--resume: the recipe differs from the one saved in '{files.recipe}'. Resume with the same recipe "
                "and --set overrides, or start a new run in another --out."
            )
        if files.final.exists():
            raise SemiclustError(f"'{files.root}' already finished (checkpoints/final.pt exists); nothing to resume.")
    dist.barrier()
    if dist.is_main():
        if overwrite and not resume:
            for stale in (files.metrics, files.subset, files.recipe, files.trackers, files.curves):
                stale.unlink(missing_ok=True)
            for folder in (files.checkpoints, files.tensorboard, files.wandb):
                shutil.rmtree(folder, ignore_errors=True)
        files.root.mkdir(parents=True, exist_ok=True)
        write_text(files.recipe, dump_yaml(recipe))
    dist.barrier()
