"""The library API: what the CLI does, as functions a notebook or a script can call.

    import semiclust.api as sc
    summary = sc.train("digits_suave", "runs/suave", overrides=["schedule.epochs=50"])
    report = sc.evaluate("runs/suave")
    sc.export("runs/suave", "suave.safetensors", content="classifier")
    predictions = sc.predict("suave.safetensors", ["photos/"])

Every function takes a recipe as a path, a shipped recipe's name or a `Recipe`, and raises
`SemiclustError` (one paragraph naming the problem and the fix) for anything a user can get wrong.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from rich.console import Console

from semiclust.assign import ASSIGNMENTS
from semiclust.compare import Comparison, compare_runs
from semiclust.config import loader
from semiclust.config.init import InitResult, new_recipe
from semiclust.config.loader import apply_overrides, resolve
from semiclust.config.schema import Recipe
from semiclust.config.shipped import RECIPES
from semiclust.config.validation import validate_saved, with_method_section
from semiclust.data.check import DataReport, data_report
from semiclust.data.datasets import DATASETS
from semiclust.engine import dist
from semiclust.engine import trainer
from semiclust.engine.checkpoint import checked_classifier, checkpoint_file, load_checkpoint
from semiclust.engine.device import resolve_device
from semiclust.engine.dry_run import DryRun, build_dry_run
from semiclust.engine.trainer import TrainSummary
from semiclust.errors import SemiclustError
from semiclust.evaluation.metrics import EvalReport
from semiclust.evaluation.report import check_knn_memory, checkpoint_report
from semiclust.export.hub import export_hub
from semiclust.export.onnx import export_onnx
from semiclust.export.safetensors import export_checkpoint, export_content
from semiclust.label.suggest import Suggestion, suggest
from semiclust.methods import METHODS
from semiclust.models.backbones import BACKBONES
from semiclust.models.classifier import ExportedClassifier, load_export
from semiclust.plot import confusion_shown, plot_confusion
from semiclust.predict import Prediction, collect_images, predict_files
from semiclust.storage.atomic import WriteFailed, check_writable

RecipeLike = Recipe | str | Path


def load_recipe(recipe: RecipeLike, overrides: Sequence[str] = ()) -> Recipe:
    """A validated recipe from a file or a shipped recipe's name, `--set`-style overrides applied."""
    if not isinstance(recipe, Recipe):
        return loader.load_recipe(recipe, list(overrides))
    if not overrides:
        return with_method_section(recipe, f"recipe '{recipe.name}'")
    return resolve(apply_overrides(recipe.model_dump(mode="json"), list(overrides)), f"recipe '{recipe.name}' with --set")


def train(recipe: RecipeLike, out: Path | str | None = None, overrides: Sequence[str] = (), resume: bool = False,
          overwrite: bool = False, console: Console | None = None, resume_hint: str | None = None,
          started: float | None = None) -> TrainSummary:
    """Train into `out` (default runs/<recipe name>) and return the final evaluation; under torchrun every
    process calls this, and the process group is closed when it returns. A `schedule.budget` counts from
    `started` (time.time(); the CLI gives its process's start; default: this call)."""
    resolved = load_recipe(recipe, overrides)
    try:
        summary = trainer.train(resolved, Path(out or Path("runs") / resolved.name), console, resume=resume,
                               overwrite=overwrite, resume_hint=resume_hint, started=started)
    except BaseException:
        dist.shutdown(together=False)  # the others may be stopping too, or still in a step: do not wait for them
        raise
    dist.shutdown()
    return summary


def dry_run(recipe: RecipeLike, processes: int = 1, overrides: Sequence[str] = ()) -> DryRun:
    """Build data, model and optimiser as training would for `processes` processes; train nothing."""
    if processes < 1:
        raise SemiclustError("--processes must be at least 1.")
    return build_dry_run(load_recipe(recipe, overrides), processes)


@dataclass
class Evaluation:
    """`evaluate`'s result: the report, what was evaluated, where the confusion PNG went and why the kNN
    diagnostic was skipped (None when it ran)."""

    report: EvalReport
    checkpoint: Path
    step: int
    recipe: Recipe
    confusion_png: Path | None
    knn_skipped: str | None
    knn_source: str = "labeled"  # the kNN memory: the labeled subset, or "all" labeled training images
    write_error: WriteFailed | None = None  # the PNG could not be written (the report itself is complete)
    confusion_shows: str | None = None  # what the PNG shows when not every class ("the 30 most-confused of ...")
    confusion_skipped: str | None = None  # why no PNG was made although one was asked for (a sentence)


def evaluate(checkpoint: Path | str, overrides: Sequence[str] = (), device: str = "auto", knn: int = 20,
             knn_temperature: float = 0.07, confusion: Path | str | None = None,
             write_confusion: bool = True, knn_memory: str = "labeled") -> Evaluation:
    """Evaluate a checkpoint (or a run directory's final one) on its recipe's evaluation split; overrides
    change the checkpoint's recipe first (e.g. data.options.root=/new/place). Writes the confusion PNG
    to `confusion` (default: beside the checkpoint, skipped with a note where that folder is read-only) unless
    `write_confusion` is false. The kNN memory is the labeled subset, or with `knn_memory="all"` every labeled
    training image (a diagnostic of the features, not a result)."""
    check_knn_memory(knn_memory)
    evaluated = checkpoint_file(checkpoint)
    png, png_skipped = confusion_target(evaluated, confusion, write_confusion)
    saved = load_checkpoint(evaluated)
    checked_classifier(saved)
    raw = apply_overrides(json.loads(json.dumps(saved.recipe)), list(overrides)) if overrides else saved.recipe
    recipe = validate_saved(raw, "the checkpoint's recipe with --set overrides" if overrides else "the checkpoint's recipe")
    report, skipped = checkpoint_report(saved, recipe, resolve_device(device), knn, knn_temperature, knn_memory)
    evaluation = Evaluation(report, Path(checkpoint), saved.step, recipe, png, skipped, knn_memory,
                            confusion_skipped=png_skipped)
    if png is not None:
        draw_confusion(evaluation, f"{recipe.name}, step {saved.step}: top-1 {report.result.top1:.2f}% on "
                                   f"{report.result.n} images")
    return evaluation


def confusion_target(evaluated: Path, confusion: Path | str | None, write: bool) -> tuple[Path | None, str | None]:
    """Where the confusion PNG goes, checked before any work, and why it goes nowhere: an explicit --confusion that
    cannot be written is refused; the default place beside the checkpoint, unwritable (a read-only folder of
    checkpoints), is skipped with a sentence saying so, since the evaluation itself needs no file."""
    if not write:
        return None, None
    fix = "Write it elsewhere with --confusion PATH, or skip it with --no-confusion."
    if confusion:
        return check_writable(Path(confusion), "the confusion-matrix PNG", fix), None
    try:
        return check_writable(evaluated.with_name(f"{evaluated.stem}_confusion.png"), "the confusion-matrix PNG", fix), None
    except SemiclustError as err:
        return None, f"confusion matrix not written: {err}"


def draw_confusion(evaluation: Evaluation, title: str) -> None:
    """The confusion PNG of an evaluation; a figure that cannot be made (no memory left, a write that fails) costs
    the figure, never the computed result: the write error is raised after the result is printed, the rest noted."""
    report = evaluation.report
    try:
        plot_confusion(report.confusion, report.classes, evaluation.confusion_png, title)
        evaluation.confusion_shows = confusion_shown(report.confusion)[1]
    except WriteFailed as err:
        evaluation.confusion_png, evaluation.write_error = None, err
    except MemoryError:
        evaluation.confusion_png = None
        evaluation.confusion_skipped = (f"confusion matrix not drawn: not enough memory for the figure of "
                                        f"{len(report.classes):,} classes (the result is complete); skip it with "
                                        "--no-confusion.")
    except Exception as err:  # matplotlib's errors for a figure it cannot lay out
        evaluation.confusion_png = None
        evaluation.confusion_skipped = (f"confusion matrix not drawn ({type(err).__name__}: "
                                        f"{' '.join(str(err).split())[:160]}); the result is complete.")


def export(checkpoint: Path | str, out: Path | str, content: str | None = None,
           format: str = "safetensors", network: str | None = None) -> dict[str, str]:
    """Write the evaluated network of a checkpoint (Daino: the teacher): `safetensors` (the default) holds the
    backbone alone (loads in plain timm) or the whole classifier, `onnx` the classifier as an ONNX graph, `hub`
    the folder timm loads with `local-dir:` and the Hugging Face Hub publishes; returns the metadata written.
    `network` exports another network of the checkpoint: student, teacher or ema (the weight average)."""
    chosen = export_content(format, content)
    if format == "onnx":
        return export_onnx(checkpoint_file(checkpoint), Path(out), network)
    if format == "hub":
        return export_hub(checkpoint_file(checkpoint), Path(out), network)
    return export_checkpoint(checkpoint_file(checkpoint), Path(out), chosen, network)


def load_classifier(path: Path | str, device: str | torch.device = "cpu") -> ExportedClassifier:
    """An exported classifier (.safetensors or .onnx), ready to run: `classifier(classifier.preprocess(image)[None])`
    gives logits."""
    return load_export(path, device if isinstance(device, torch.device) else resolve_device(device))


def predict(model: ExportedClassifier | Path | str, inputs: Sequence[Path | str], top_k: int = 5, batch_size: int = 64,
            workers: int = 0, device: str = "auto", advance: Callable[[int], None] = lambda done: None) -> list[Prediction]:
    """Top-k classes with probabilities for each image file (folders are searched recursively)."""
    if top_k < 1:
        raise SemiclustError("--top-k must be at least 1.")
    classifier = model if isinstance(model, ExportedClassifier) else load_classifier(model, device)
    return predict_files(classifier, collect_images([Path(p) for p in inputs]), top_k, batch_size, workers, advance)


def check_data(recipe: RecipeLike, sample: int | None = 1000, overrides: Sequence[str] = (),
               advance: Callable[[int, int], None] = lambda done, total: None) -> DataReport:
    """Everything `semiclust data check` reports about a recipe's data; `sample` None decodes every file."""
    return data_report(load_recipe(recipe, overrides), sample, advance)


def compare(run_dirs: Sequence[Path | str], out: Path | str | None = None) -> Comparison:
    """Runs side by side: the recipe keys that differ, final and best top-1, time, images/s, and a PNG of their
    curves overlaid written to `out` (default: compare.png in the folder holding the runs)."""
    return compare_runs([Path(p) for p in run_dirs], Path(out) if out else None)


def init_recipe(data: Path | str | None, budget: str = "30m", labels: Path | str | None = None,
                evaluation: Path | str | None = None, method: str = "suave", per_class: int | None = None,
                fraction: float | None = None, registered: tuple[str, Path | str | None] | None = None) -> InitResult:
    """A recipe for a folder of images (or a registered dataset: `registered` = (name, root)) and a time budget,
    fitted on this machine (`semiclust recipe init`)."""
    return new_recipe(Path(data) if data is not None else None, budget, Path(labels) if labels else None,
                            Path(evaluation) if evaluation else None, method, per_class, fraction,
                            registered=registered)


def suggest_labels(n: int, out: Path | str, data: Path | str | None = None,
                   registered: tuple[str, Path | str | None] | None = None, checkpoint: Path | str | None = None,
                   exclude: Path | str | None = None, budget: str = "10m", method: str = "swav",
                   run_dir: Path | str | None = None, seed: int = 0, overrides: Sequence[str] = (), force: bool = False,
                   device: str = "auto", console: Console | None = None,
                   advance: Callable[[int, int], None] = lambda done, total: None,
                   started: float | None = None) -> Suggestion:
    """Which n images to label (`semiclust label suggest`): from a folder (`data`) or a registered dataset
    (`registered` = (name, root)) after a self-supervised run inside `budget` (kept in `run_dir`, default
    runs/suggest_<name>_<method>), or from the images of a trained run (`checkpoint`), never those labeled or
    named in `exclude`. Writes `out` (a `path,label` CSV in the order to label, label empty) and its contact sheet
    beside it (.html, .png); see docs/labeling.md."""
    as_path = lambda value: Path(value) if value is not None else None  # noqa: E731
    named = (registered[0], as_path(registered[1])) if registered is not None else None
    return suggest(n, Path(out), as_path(data), named, as_path(checkpoint), as_path(exclude), budget, method,
                   as_path(run_dir), seed, overrides, force, device, console, advance, started)


def catalogue() -> dict:
    """What `semiclust list` lists: each kind's registry (names with a pattern, and a one-line summary)."""
    return {"backbones": BACKBONES, "assignments": ASSIGNMENTS, "datasets": DATASETS, "methods": METHODS,
            "recipes": RECIPES}


def _bind_the_package_functions() -> None:
    """Importing this module imported the submodules `semiclust.predict`, `semiclust.compare` and `semiclust.export`,
    and Python bound each as an attribute of the package, where it shadows the function of the same name that
    `semiclust.predict(...)` means (semiclust/__init__.py): the package's functions are bound over them, once."""
    package = sys.modules[__package__]
    for name in package.API:
        setattr(package, name, globals()[name])


_bind_the_package_functions()
