"""The `semiclust` command line: each command parses its options, calls one function of the library API
(`semiclust/api.py`) and shows the result (`semiclust/render.py`). Heavy imports happen inside the
commands, so `semiclust --help` stays fast."""
from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from semiclust.engine.signals import Stopped, exit_code
from semiclust.errors import SemiclustError

app = typer.Typer(
    help="Semi-supervised image classification with self-supervised clustering (Suave, Daino).",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
recipe_app = typer.Typer(help="Inspect and check recipes.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")
data_app = typer.Typer(help="Inspect the data a recipe trains on.", no_args_is_help=True)
app.add_typer(data_app, name="data")
label_app = typer.Typer(help="Choose which images to label.", no_args_is_help=True)
app.add_typer(label_app, name="label")

console = Console()
err_console = Console(stderr=True)

SetOption = typer.Option(None, "--set", help="Override a recipe value before validation: key.path=value (repeatable).")
RecipeArgument = typer.Argument(..., help="Recipe YAML file, or the name of a shipped recipe.")
LISTABLE = ("backbones", "assignments", "datasets", "methods", "recipes")


@app.command()
def train(
    recipe: str = RecipeArgument,
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Run directory: a new or empty folder, or a run "
                                      "directory semiclust wrote (default: runs/<recipe name>)."),
    overrides: Optional[list[str]] = SetOption,
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run already in --out."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Build data, model and optimiser, print the plan, do not train."),
    processes: Optional[int] = typer.Option(None, "--processes", help="With --dry-run: plan for this many processes "
                                            "(default: $WORLD_SIZE or 1)."),
    budget: Optional[str] = typer.Option(None, "--budget", help="Wall time of this command instead of the recipe's "
                                         "epochs, e.g. 30m or 2h (= --set schedule.budget=30m --set schedule.epochs=null)."),
) -> None:
    """Train a model as the recipe says; writes recipe, labeled subset, metrics and checkpoints to --out."""
    from semiclust import api, render

    if budget is not None:  # said about the option typed, not about the recipe key it sets
        from semiclust.config.init import budget_seconds

        budget_seconds(budget)
    overrides = [*(overrides or []), *([f"schedule.budget={budget}", "schedule.epochs=null"] if budget else [])]
    resolved = api.load_recipe(recipe, overrides)
    if dry_run:
        count = processes or int(os.environ.get("WORLD_SIZE", "1"))
        render.show_dry_run(console, resolved, api.dry_run(resolved, count), count)
        return
    if out == "":  # an unset shell variable: not the current folder by accident
        raise SemiclustError("--out is empty; give the folder of the run (a new or empty folder, or a run directory "
                             "semiclust wrote), or leave --out out for runs/<recipe name>.")
    run_dir = Path(out) if out is not None else Path("runs") / resolved.name
    sets = [part for override in overrides or [] for part in ("--set", override)]
    from semiclust.engine.budget import process_started
    from semiclust.engine.dist import launcher

    hint = shlex.join([*launcher(), "train", recipe, "--out", str(run_dir), *sets, "--resume"])

    summary = api.train(resolved, run_dir, console=console, resume=resume, overwrite=overwrite, resume_hint=hint,
                        started=process_started())
    if summary.main_process:
        render.show_trained(console, summary)


@app.command("eval")
def evaluate_checkpoint(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="A checkpoint .pt file (or its run directory)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    overrides: Optional[list[str]] = typer.Option(
        None, "--set", help="Override the checkpoint's recipe before loading the data, e.g. data.options.root=/data."),
    confusion: Optional[Path] = typer.Option(None, "--confusion", help="Confusion-matrix PNG (default: beside the checkpoint)."),
    no_confusion: bool = typer.Option(False, "--no-confusion", help="Do not write the confusion-matrix PNG."),
    knn: int = typer.Option(20, "--knn-k", help="Neighbours of the kNN diagnostic (0 = skip it)."),
    knn_temperature: float = typer.Option(0.07, "--knn-temperature", help="Temperature of the kNN vote weights."),
    knn_memory: str = typer.Option("labeled", "--knn-memory", help="The kNN's memory: 'labeled' (the run's labeled "
                                   "subset) or 'all' (every labeled training image: do the features separate the "
                                   "classes, whatever the labels made of them?)."),
) -> None:
    """Top-1/top-5 of the prototype classifier (the teacher for Daino), per-class accuracy, a confusion matrix
    PNG and a weighted kNN on backbone features (labeled subset as memory, or all labeled training images), on the
    recipe's evaluation split."""
    from semiclust import api, render

    evaluation = api.evaluate(checkpoint, overrides or [], device, knn, knn_temperature, confusion,
                              write_confusion=not no_confusion, knn_memory=knn_memory)
    if as_json:
        print(render.evaluation_json(evaluation))
    else:
        render.show_evaluation(console, evaluation, knn)
    if evaluation.write_error is not None:  # the result is printed first: a full disk loses nothing computed
        raise evaluation.write_error


@app.command()
def export(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="A checkpoint written by `semiclust train`."),
    out: Path = typer.Option(..., "--out", "-o", help="Destination: a .safetensors or .onnx file, or the hub folder."),
    file_format: str = typer.Option("safetensors", "--format", "-f", help="safetensors (one file, the default), onnx "
                                    "(the classifier as an ONNX graph) or hub (the folder timm loads with local-dir:)."),
    content: Optional[str] = typer.Option(None, "--content", help="safetensors only: backbone (the default; loads in "
                                          "plain timm) or classifier (backbone + head + prototypes)."),
    network: Optional[str] = typer.Option(None, "--network", help="Another network of the checkpoint than the one it "
                                          "evaluates: student, teacher (Daino) or ema (method.ema's weight average)."),
) -> None:
    """Export the evaluated network (Daino: the teacher) with its metadata (preprocessing, classes, hashes)."""
    from semiclust import api, render

    meta = api.export(checkpoint, out, content, file_format, network)
    render.show_export(console, meta, out)


@app.command()
def predict(
    inputs: list[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
    model: Path = typer.Option(..., "--model", "-m", help="A classifier exported with `semiclust export --content "
                               "classifier` (.safetensors) or `--format onnx` (.onnx)."),
    top_k: int = typer.Option(5, "--top-k", "-k", help="Classes per image."),
    output_format: str = typer.Option("table", "--format", "-f", help="table, csv or json."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write csv/json here instead of standard output."),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    workers: int = typer.Option(0, help="Decoding worker processes."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """Top-k classes with probabilities for each image, using the evaluation transform stored in the export."""
    from semiclust import api, render
    from semiclust.predict import as_csv, as_json
    from semiclust.storage.atomic import WriteFailed, check_writable, write_text

    if output_format not in ("table", "csv", "json"):
        raise SemiclustError(f"--format must be table, csv or json, not '{output_format}'.")
    if out is not None:
        check_writable(out, "--out", "Choose a writable file for the predictions.")
    classifier = api.load_classifier(model, device)
    predictions = api.predict(classifier, inputs, top_k, batch_size, workers)
    shown_k = min(top_k, len(classifier.classes))
    if output_format == "table":
        console.print(render.predictions_table(f"{model.name}: top-{shown_k}", predictions))
    else:
        text = as_csv(predictions, shown_k) if output_format == "csv" else as_json(predictions)
        try:
            if out is None:
                print(text, end="" if text.endswith("\n") else "\n")
            else:
                write_text(out, text)
                console.print(f"wrote {len(predictions)} predictions to {out}", highlight=False)
        except WriteFailed:
            print(text, end="")  # computed predictions are never lost: they go to standard output first
            raise
    failed = sum(p.error is not None for p in predictions)
    if failed:
        err_console.print(f"{failed} of {len(predictions)} file(s) could not be read (see the error column).")


@app.command()
def plot(
    run_dir: Path = typer.Argument(..., help="A run directory written by `semiclust train`."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG path (default: RUN_DIR/curves.png)."),
) -> None:
    """Write PNG training curves (loss parts, lr, images/s, top-1) from the run's metrics.jsonl."""
    from semiclust.plot import plot_run

    notes: list[str] = []
    png = plot_run(run_dir, out, notes)
    for note in notes:  # damaged metrics.jsonl lines, left out of the curves
        err_console.print(f"warning: {note}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"wrote {png}", highlight=False, markup=False, soft_wrap=True)


@app.command()
def compare(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories written by `semiclust train`."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG of the overlaid curves (default: compare.png "
                                       "in the folder holding the runs)."),
) -> None:
    """A table of runs (the recipe keys that differ, final and best top-1, time, images/s) and one PNG with
    their curves overlaid: what to look at after a sweep."""
    from semiclust import api, render

    render.show_comparison(console, api.compare(run_dirs, out))


@recipe_app.command("show")
def recipe_show(recipe: str = RecipeArgument, overrides: Optional[list[str]] = SetOption) -> None:
    """Print the fully resolved recipe: every default filled in, overrides applied."""
    from semiclust import api
    from semiclust.config.validation import dump_yaml

    print(dump_yaml(api.load_recipe(recipe, overrides or [])), end="")


@recipe_app.command("init")
def recipe_init(
    data: Optional[Path] = typer.Option(None, "--data", help="An ImageFolder (train/<class>/, val/<class>/) or a folder "
                                        "of images."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Instead of --data: a registered dataset "
                                          "(`semiclust list datasets`), e.g. fashion_mnist."),
    root: Optional[Path] = typer.Option(None, "--root", help="With --dataset: the folder of its files."),
    out: Path = typer.Option(..., "--out", "-o", help="The recipe file to write."),
    budget: str = typer.Option("30m", "--budget", help="Wall time of `semiclust train` with it, e.g. 30m or 2h."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="A 'path,label' list of the labeled images (the "
                                          "folder is then the unlabeled pool)."),
    evaluation: Optional[Path] = typer.Option(None, "--eval", help="With --labels: a 'path,label' list to evaluate on."),
    method: str = typer.Option("suave", "--method", help="suave or daino."),
    per_class: Optional[int] = typer.Option(None, "--per-class", help="Keep this many labels per class."),
    fraction: Optional[float] = typer.Option(None, "--fraction", help="Keep this fraction of the labels."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it already exists."),
) -> None:
    """Write a recipe for images semiclust has never seen: crop sizes from the images, a backbone width timed on
    this machine to fit the budget, batches from the labeled set, the method's defaults for small images."""
    from semiclust import api
    from semiclust.config.init import refuse_existing
    from semiclust.storage.atomic import check_writable, write_text

    refuse_existing(out, force)
    check_writable(out, "--out", "Choose a writable path for the recipe.")
    result = api.init_recipe(data, budget, labels, evaluation, method, per_class, fraction,
                             registered=(dataset, root) if dataset is not None else None)
    refuse_existing(out, force)  # again: the timing takes a while, and a file may have appeared meanwhile
    write_text(out, result.text)
    for choice in result.choices:
        console.print(f"{choice.key}: {choice.why}", highlight=False, soft_wrap=True)
    console.print(f"wrote {out}; train with: {shlex.join(['semiclust', 'train', str(out)])}", highlight=False)


@recipe_app.command("reference")
def recipe_reference() -> None:
    """Print the recipe reference (every key, type, default, meaning) as Markdown, generated from the schema."""
    from semiclust.config.reference import render_reference

    print(render_reference(), end="")


@recipe_app.command("validate")
def recipe_validate(recipes: list[str] = typer.Argument(..., help="Recipe files or shipped recipe names.")) -> None:
    """Check recipes; lists every invalid one and exits 2 if any is invalid."""
    from semiclust import api

    failures = 0
    for item in recipes:
        try:
            api.load_recipe(item)
            console.print(f"[green]ok[/]  {item}", highlight=False)
        except SemiclustError as err:
            failures += 1
            err_console.print(f"[red]invalid[/]  {err}", highlight=False, soft_wrap=True)
    if failures:
        raise typer.Exit(2)


@data_app.command("check")
def data_check(
    recipe: str = RecipeArgument,
    overrides: Optional[list[str]] = SetOption,
    sample: int = typer.Option(1000, help="Decode every labeled image and this many of the others (and eval)."),
    all_files: bool = typer.Option(False, "--all", help="Decode every image file (slow on large datasets)."),
) -> None:
    """Load the dataset as the recipe describes: class counts, the labeled subset, image sizes and every
    problem found (missing files, unreadable images, empty classes, stray labels, labeled/eval overlap).
    Exits 0 only when there is none."""
    from rich.progress import Progress

    from semiclust import api, render

    resolved = api.load_recipe(recipe, overrides or [])
    with Progress(console=err_console, transient=True, disable=not err_console.is_terminal) as progress:
        task = progress.add_task("decoding images", total=None)
        report = api.check_data(resolved, None if all_files else sample,
                                advance=lambda done, total: progress.update(task, completed=done, total=total))
    render.show_data_report(console, report, resolved.name)
    if not report.ok:
        raise typer.Exit(1)


@label_app.command("suggest")
def label_suggest(
    n: int = typer.Option(..., "--n", help="How many images to suggest."),
    out: Path = typer.Option(..., "--out", "-o", help="The CSV to write: path,label rows in the order to label them "
                             "(label empty); the contact sheet is written beside it as .html and .png."),
    data: Optional[Path] = typer.Option(None, "--data", help="The folder of your images (any layout, searched "
                                        "recursively)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Instead of --data: a registered dataset, e.g. "
                                          "fashion_mnist (its in-memory images are named by their training index)."),
    root: Optional[Path] = typer.Option(None, "--root", help="With --dataset: the folder of its files."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="Choose among the images of this run "
                                              "(a checkpoint or run directory) instead of training a new one: a "
                                              "Suave / Daino run picks where its classifier hesitates."),
    exclude: Optional[Path] = typer.Option(None, "--exclude", help="A path,label list of images already labeled: "
                                           "never suggested again."),
    budget: str = typer.Option("10m", "--budget", help="Wall time of the self-supervised run, e.g. 10m."),
    method: str = typer.Option("swav", "--method", help="The self-supervised run's method: swav or dino."),
    run: Optional[Path] = typer.Option(None, "--run", help="The self-supervised run's folder (default: "
                                       "runs/suggest_<name>_<method>); kept, `recipe init --labels` starts from it."),
    seed: int = typer.Option(0, "--seed", help="Seed of the run and of the clustering."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="Override a value of the self-supervised "
                                                  "run's recipe, e.g. data.options.clusters=100 (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Replace --out and its contact sheet if they exist."),
    device: str = typer.Option("auto", help="auto, cpu or cuda, for the pass over the images."),
) -> None:
    """Suggest which images to label, in order: a self-supervised run on the images (inside --budget) and the
    typical image of each cluster of its features; or, from a trained run (--checkpoint), the images its
    classifier hesitates on. Writes a path,label CSV and a contact sheet (HTML, PNG) to label from."""
    from rich.progress import Progress

    from semiclust import api, render
    from semiclust.engine.budget import process_started

    progress = Progress(console=err_console, transient=True, disable=not err_console.is_terminal)
    task = None

    def advance(done: int, total: int) -> None:  # the bar starts after the training run's own display has ended
        nonlocal task
        if task is None:
            progress.start()
            task = progress.add_task("features of the images", total=total)
        progress.update(task, completed=done, total=total)

    try:
        suggestion = api.suggest_labels(n, out, data, (dataset, root) if dataset is not None else None, checkpoint,
                                        exclude, budget, method, run, seed, overrides or [], force, device, console,
                                        advance, process_started())
    finally:
        progress.stop()
    render.show_suggestion(console, suggestion)


@app.command("list")
def list_names(
    what: str = typer.Argument(..., help="backbones | assignments | datasets | methods | recipes"),
    pattern: Optional[str] = typer.Argument(None, help="Shell-style filter, e.g. 'resnet*'."),
) -> None:
    """List registered names (timm backbones included), each with a one-line summary where it has one."""
    from semiclust import api
    from semiclust.registry import unknown_name_message

    if what not in LISTABLE:
        raise SemiclustError(unknown_name_message("listing", what, list(LISTABLE)).replace(
            "semiclust list listings", "semiclust list --help"))
    registry = api.catalogue()[what]
    names = registry.names(pattern)
    for name in names:
        summary = registry.summary(name)
        print(f"{name}: {summary}" if summary else name)
    if not names:
        err_console.print(f"no {what} match '{pattern}'")
        raise typer.Exit(1)


def terminated(number: int, frame) -> None:
    """SIGTERM outside training (which handles it itself): unwind like Ctrl-C, so that a file being written is
    removed (every write is atomic) and nothing half-written is left."""
    raise Stopped(signal.Signals(number).name)


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app and turns user errors into one paragraph and an exit code."""
    previous = signal.signal(signal.SIGTERM, terminated) if threading.current_thread() is threading.main_thread() else None
    try:
        app(args=argv, prog_name="semiclust")
    except SemiclustError as err:
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every process has the error: rank 0 says it
            label = "[bold yellow]stopped:[/]" if type(err).__name__ == "TrainingStopped" else "[bold red]error:[/]"
            err_console.print(f"{label} {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except (KeyboardInterrupt, Stopped) as err:
        name = getattr(err, "signal_name", "SIGINT")
        err_console.print(f"[bold yellow]stopped:[/] by {name}; no half-written file was left (semiclust writes every "
                          "file whole or not at all).", highlight=False, soft_wrap=True)
        sys.exit(exit_code(name))
    finally:
        if previous is not None:  # a library caller's own handler (or the default) again
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
