"""The `semiclust` command line: thin wrappers that parse, call the library and print with rich."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from semiclust.errors import SemiclustError

app = typer.Typer(
    help="Semi-supervised image classification with self-supervised clustering (Suave, Daino).",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
recipe_app = typer.Typer(help="Inspect and check recipes.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")
data_app = typer.Typer(help="Inspect the data a recipe trains on.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

SetOption = typer.Option(None, "--set", help="Override a recipe value before validation: key.path=value (repeatable).")


@app.command()
def train(
    recipe: str = typer.Argument(..., help="Recipe YAML file, or the name of a shipped recipe."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<recipe name>)."),
    overrides: Optional[list[str]] = SetOption,
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run already in --out."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Build data, model and optimiser, print the plan, do not train."),
    processes: Optional[int] = typer.Option(None, "--processes", help="With --dry-run: plan for this many processes "
                                            "(default: $WORLD_SIZE or 1)."),
) -> None:
    """Train a model as the recipe says; writes recipe, labeled subset, metrics and checkpoints to --out."""
    from semiclust.engine import dist
    from semiclust.engine.trainer import train as run_training
    from semiclust.recipe import load_recipe

    resolved = load_recipe(recipe, overrides or [])
    if dry_run:
        _print_dry_run(resolved, processes or int(os.environ.get("WORLD_SIZE", "1")))
        return
    run_dir = out or Path("runs") / resolved.name
    hint = " ".join(["semiclust train", recipe, "--out", str(run_dir), *[f"--set {o}" for o in overrides or []], "--resume"])
    try:
        summary = run_training(resolved, run_dir, console, resume=resume, overwrite=overwrite, resume_hint=hint)
        main_process = dist.is_main()
    finally:
        dist.shutdown()
    if not main_process:
        return
    r = summary.result
    if r is None:
        console.print(f"[bold green]done[/] in {summary.seconds:.0f}s (the dataset has no evaluation set).\n"
                      f"checkpoint: {summary.checkpoint}", highlight=False)
        return
    matched = " (prototypes matched to classes)" if r.matching != "identity" else ""
    skipped = f" ({r.unreadable} unreadable left out)" if r.unreadable else ""
    console.print(
        f"[bold green]done[/] in {summary.seconds:.0f}s: top-1 [bold]{r.top1:.2f}%[/], top-5 {r.top5:.2f}% on "
        f"{r.n} {r.split} images{skipped}{matched}.\ncheckpoint: {summary.checkpoint}\n"
        f"evaluate again: semiclust eval --checkpoint {summary.checkpoint}",
        highlight=False,
    )


MAX_JSON_CONFUSION = 100  # classes; above this the matrix is left out of --json (it is in the PNG)
WORST_CLASSES = 10


def _eval_data(state: dict, overrides: list[str]):
    """The checkpoint's recipe with --set overrides applied (e.g. a new data.options.root), validated."""
    from semiclust.recipe import apply_overrides, validate

    raw = apply_overrides(json.loads(json.dumps(state["recipe"])), overrides) if overrides else state["recipe"]
    return validate(raw, "the checkpoint's recipe with --set overrides")


def _labeled_memory(dataset, state: dict):
    """The labeled subset the checkpoint trained with, as a split, or (None, why not)."""
    from semiclust.data.datasets import split_rows
    from semiclust.data.subsets import listing_change

    indices = state.get("labeled_indices")
    if indices is None or not len(indices):
        return None, "the checkpoint records no labeled subset"
    changed = listing_change(indices, dataset.train, state.get("labeled_files"))
    if changed:
        return None, f"the training data differ from those the checkpoint recorded ({changed})"
    return split_rows(dataset.train, indices), None


def _print_dry_run(recipe, processes: int) -> None:
    from semiclust.engine.plan import dry_run

    if processes < 1:
        raise SemiclustError("--processes must be at least 1.")
    plan = dry_run(recipe, processes)
    n, params = plan.numbers, plan.parameters
    table = Table(title=f"{recipe.name}: {recipe.method.name} on {plan.dataset} (dry run, {processes} process(es))",
                  show_header=False)
    table.add_column(style="bold")
    table.add_column()
    evaluation = "no evaluation set" if plan.eval_images is None else f"{plan.eval_images:,} evaluation images"
    accumulated = f" x {recipe.optim.accumulate_steps} accumulated" if recipe.optim.accumulate_steps > 1 else ""
    teacher = f"; EMA teacher {plan.teacher_parameters:,}" if plan.teacher_parameters else ""
    rows = [
        ("data", f"{plan.train_images:,} training images, {plan.labeled:,} labeled, {evaluation}, {plan.classes} classes"),
        ("labeled subset", plan.labeled_identity),
        ("global batch", f"{n.global_unlabeled:,} unlabeled + {n.global_labeled:,} labeled images per step "
                         f"({recipe.data.batch.unlabeled} + {recipe.data.batch.labeled} per process{accumulated})"),
        ("steps", f"{n.steps_per_epoch:,} per epoch x {recipe.schedule.epochs} epochs = {n.total_steps:,}; "
                  f"warm-up {n.warmup_steps:,}"),
        ("learning rate", f"{n.peak_lr:.4g} after scaling ({recipe.optim.lr:g} per {recipe.optim.lr_reference_batch} images)"
                          if recipe.optim.lr_reference_batch else f"{n.peak_lr:.4g} (not scaled)"),
        ("parameters", f"backbone {params['backbone']:,}, head {params['head']:,}, prototypes {params['prototypes']:,}; "
                       f"trainable {params['trainable']:,}{teacher}"),
        ("optimiser", plan.optimizer),
        ("activations", f"~{plan.activation_gib:.2f} GiB per process kept for backward ({plan.precision}; "
                        "an estimate from the layer outputs of a 2-image probe)"),
    ]
    if plan.init:
        rows.append(("init", plan.init))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    console.print("dry run: nothing was trained or written.", highlight=False)


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
) -> None:
    """Top-1/top-5 of the prototype classifier (the teacher for Daino), per-class accuracy, a confusion matrix
    PNG and a weighted kNN on backbone features (labeled subset as memory), on the recipe's evaluation split."""
    from semiclust.data.datasets import build_dataset
    from semiclust.engine.checkpoint import checkpoint_file, load_checkpoint
    from semiclust.engine.trainer import resolve_device
    from semiclust.evaluate import EvalViews, classifier_from_checkpoint, evaluation_report
    from semiclust.plot import plot_confusion

    target = resolve_device(device)
    state = load_checkpoint(checkpoint)
    network, _ = classifier_from_checkpoint(state)
    network.to(target)
    recipe = _eval_data(state, overrides or [])
    dataset = build_dataset(recipe.data.dataset, recipe.data.options)
    if dataset.test is None:
        raise SemiclustError(f"dataset '{dataset.name}' of this checkpoint's recipe has no evaluation split; "
                             "give one with --set (e.g. data.options.eval=eval.csv for labeled_list).")
    if len(dataset.classes) != state["classifier"]["num_classes"]:
        raise SemiclustError(f"the dataset now has {len(dataset.classes)} classes but the checkpoint was trained "
                             f"with {state['classifier']['num_classes']}; point --set data.options at the same data.")
    mean, std = tuple(state["mean"]), tuple(state["std"])
    views = EvalViews(dataset.test, recipe.data.eval, mean, std, recipe.eval.batch_size, target, recipe.data.loader)
    memory, no_memory = (None, "--knn-k 0") if knn <= 0 else _labeled_memory(dataset, state)
    memory_views = None if memory is None else EvalViews(memory, recipe.data.eval, mean, std, recipe.eval.batch_size,
                                                         target, recipe.data.loader)
    report = evaluation_report(network, views, dataset.test_split_name, list(state["classes"]),
                               match=state["classifier"]["matched"], memory=memory_views, knn_k=max(knn, 1),
                               knn_temperature=knn_temperature)
    png = None
    if not no_confusion:
        evaluated = checkpoint_file(checkpoint)
        png = confusion or evaluated.with_name(f"{evaluated.stem}_confusion.png")
        plot_confusion(report.confusion, report.classes, png,
                       f"{recipe.name}, step {state['step']}: top-1 {report.result.top1:.2f}% on {report.result.n} images")
    if as_json:
        print(json.dumps({**report.as_dict(include_confusion=len(report.classes) <= MAX_JSON_CONFUSION),
                          "checkpoint": str(checkpoint), "step": state["step"], "confusion_png": str(png) if png else None}))
        return
    r = report.result
    table = Table(title=f"{recipe.name} ({recipe.method.name}), step {state['step']}")
    for column in ("split", "images", "top-1 %", "top-5 %", "matching", "kNN top-1 %"):
        table.add_column(column)
    knn_cell = f"{report.knn_top1:.2f} (k {knn}, {report.knn_memory} labeled)" if report.knn_top1 is not None else "-"
    table.add_row(r.split, str(r.n) + (f" ({r.unreadable} unreadable)" if r.unreadable else ""), f"{r.top1:.2f}",
                  f"{r.top5:.2f}", r.matching, knn_cell)
    console.print(table)
    ranked = sorted(zip(report.classes, report.per_class.tolist(), report.confusion.sum(dim=1).tolist()),
                    key=lambda row: (row[1] != row[1], row[1]))  # worst first, classes without images last
    shown = ranked if len(ranked) <= 2 * WORST_CLASSES else ranked[:WORST_CLASSES]
    per_class = Table(title="per-class accuracy" + ("" if shown is ranked else f" ({WORST_CLASSES} worst)"))
    for column in ("class", "images", "top-1 %"):
        per_class.add_column(column)
    for name, accuracy, count in shown:
        per_class.add_row(name, str(count), "-" if accuracy != accuracy else f"{accuracy:.1f}")
    console.print(per_class)
    if report.knn_top1 is None and no_memory != "--knn-k 0":
        console.print(f"kNN diagnostic skipped: {no_memory}.", highlight=False)
    if png:
        console.print(f"confusion matrix: {png}", highlight=False)


@app.command()
def export(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="A checkpoint written by `semiclust train`."),
    out: Path = typer.Option(..., "--out", "-o", help="Destination .safetensors file."),
    content: str = typer.Option("backbone", "--content",
                                help="backbone (loads in plain timm) or classifier (backbone + head + prototypes)."),
) -> None:
    """Export the evaluated network (Daino: the teacher) to safetensors with its metadata."""
    from semiclust.export import export_checkpoint

    meta = export_checkpoint(checkpoint, out, content)
    console.print(f"wrote {out}: {content} of {meta['architecture']} (step {meta['step']}, {meta['num_classes']} classes, "
                  f"recipe sha256 {meta['recipe_sha256'][:12]})", highlight=False)
    if content == "backbone":
        kwargs = "".join(f", {k}={v!r}" for k, v in json.loads(meta["timm_kwargs"]).items())
        console.print(f"load it with timm: timm.create_model({meta['architecture']!r}, pretrained=True, num_classes=0, "
                      f"pretrained_cfg_overlay=dict(file={str(out)!r}){kwargs})", highlight=False, markup=False)
    else:
        console.print(f"load it with semiclust: semiclust.load_classifier({str(out)!r}); or "
                      f"semiclust predict --model {out} IMAGES...", highlight=False, markup=False)


@app.command()
def predict(
    inputs: list[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
    model: Path = typer.Option(..., "--model", "-m", help="A classifier exported with `semiclust export --content classifier`."),
    top_k: int = typer.Option(5, "--top-k", "-k", help="Classes per image."),
    output_format: str = typer.Option("table", "--format", "-f", help="table, csv or json."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write csv/json here instead of standard output."),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    workers: int = typer.Option(0, help="Decoding worker processes."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """Top-k classes with probabilities for each image, using the evaluation transform stored in the export."""
    from semiclust.engine.trainer import resolve_device
    from semiclust.export import load_classifier
    from semiclust.predict import as_csv, as_json, collect_images, predict_files

    if output_format not in ("table", "csv", "json"):
        raise SemiclustError(f"--format must be table, csv or json, not '{output_format}'.")
    if top_k < 1:
        raise SemiclustError("--top-k must be at least 1.")
    classifier = load_classifier(model, resolve_device(device))
    paths = collect_images(inputs)
    predictions = predict_files(classifier, paths, top_k, batch_size, workers)
    if output_format != "table":
        text = as_csv(predictions, min(top_k, len(classifier.classes))) if output_format == "csv" else as_json(predictions)
        if out is None:
            print(text, end="" if text.endswith("\n") else "\n")
        else:
            out.write_text(text)
            console.print(f"wrote {len(predictions)} predictions to {out}", highlight=False)
    else:
        table = Table(title=f"{model.name}: top-{min(top_k, len(classifier.classes))}")
        for column in ("image", "classes (probability)"):
            table.add_column(column)
        for p in predictions:
            cell = p.error and f"unreadable: {p.error}" or ", ".join(f"{c} ({v:.1%})" for c, v in zip(p.classes, p.probabilities))
            table.add_row(p.path, cell)
        console.print(table)
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

    console.print(f"wrote {plot_run(run_dir, out)}", highlight=False)


@recipe_app.command("show")
def recipe_show(
    recipe: str = typer.Argument(..., help="Recipe YAML file or shipped recipe name."),
    overrides: Optional[list[str]] = SetOption,
) -> None:
    """Print the fully resolved recipe: every default filled in, overrides applied."""
    from semiclust.recipe import dump_yaml, load_recipe

    print(dump_yaml(load_recipe(recipe, overrides or [])), end="")


@recipe_app.command("reference")
def recipe_reference() -> None:
    """Print the recipe reference (every key, type, default, meaning) as Markdown, generated from the schema."""
    from semiclust.recipe_reference import render_reference

    print(render_reference(), end="")


@recipe_app.command("validate")
def recipe_validate(recipes: list[str] = typer.Argument(..., help="Recipe files or shipped recipe names.")) -> None:
    """Check recipes; lists every invalid one and exits 2 if any is invalid."""
    from semiclust.recipe import load_recipe

    failures = 0
    for item in recipes:
        try:
            load_recipe(item)
            console.print(f"[green]ok[/]  {item}", highlight=False)
        except SemiclustError as err:
            failures += 1
            err_console.print(f"[red]invalid[/]  {err}", highlight=False, soft_wrap=True)
    if failures:
        raise typer.Exit(2)


MAX_CLASS_ROWS = 40


@data_app.command("check")
def data_check(
    recipe: str = typer.Argument(..., help="Recipe YAML file or shipped recipe name."),
    overrides: Optional[list[str]] = SetOption,
    sample: int = typer.Option(1000, help="Decode every labeled image and this many of the others (and eval)."),
    all_files: bool = typer.Option(False, "--all", help="Decode every image file (slow on large datasets)."),
) -> None:
    """Load the dataset as the recipe describes: class counts, the labeled subset, image sizes and every
    problem found (missing files, unreadable images, empty classes, stray labels, labeled/eval overlap).
    Exits 0 only when there is none."""
    from rich.progress import Progress

    from semiclust.data.check import check_data
    from semiclust.recipe import load_recipe

    resolved = load_recipe(recipe, overrides or [])
    with Progress(console=err_console, transient=True, disable=not err_console.is_terminal) as progress:
        task = progress.add_task("decoding images", total=None)
        report = check_data(resolved, None if all_files else sample,
                            lambda done, total: progress.update(task, completed=done, total=total))
    dataset = report.dataset
    table = Table(title=f"{dataset.name}: {dataset.num_classes} classes (recipe {resolved.name})")
    for column in ("class", "labeled", "unlabeled", "eval"):
        table.add_column(column, justify="left" if column == "class" else "right")
    rows = report.rows if len(report.rows) <= MAX_CLASS_ROWS else report.rows[: MAX_CLASS_ROWS // 2]
    for row in rows:
        table.add_row(row.name, str(row.labeled), str(row.unlabeled), str(row.eval))
    if len(rows) < len(report.rows):
        fewest = min(report.rows, key=lambda r: r.labeled)
        table.add_row(f"... {len(report.rows) - len(rows)} more (fewest labeled: {fewest.name})", "", "", "")
    if report.unlabeled_only:
        table.add_row("(no label)", "-", str(report.unlabeled_only), "-")
    table.add_row("total", str(sum(r.labeled for r in report.rows)),
                  str(sum(r.unlabeled for r in report.rows) + report.unlabeled_only),
                  str(sum(r.eval for r in report.rows)) if dataset.test is not None else "no eval set", style="bold")
    console.print(table)
    console.print("unlabeled stream: every training image, its label unused", highlight=False)
    if report.subset is not None:
        console.print(f"labeled subset: {len(report.subset.indices)} images, {report.subset.identity}", highlight=False)
    console.print(f"image sizes: {report.sizes}", highlight=False)
    console.print(f"files: {report.decoded}", highlight=False)
    if report.ok:
        console.print("[bold green]no problems found[/]")
        return
    console.print(f"[bold red]{len(report.problems)} problem(s):[/]")
    for problem in report.problems:
        console.print(f"  - {problem}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


LISTABLE = ("backbones", "assignments", "datasets", "methods", "recipes")


@app.command("list")
def list_names(
    what: str = typer.Argument(..., help="backbones | assignments | datasets | methods | recipes"),
    pattern: Optional[str] = typer.Argument(None, help="Shell-style filter, e.g. 'resnet*'."),
) -> None:
    """List registered names (timm backbones included)."""
    from semiclust.registry import unknown_name_message

    if what not in LISTABLE:
        message = unknown_name_message("listing", what, list(LISTABLE))
        raise SemiclustError(message.replace("semiclust list listings", "semiclust list --help"))
    if what == "backbones":
        from semiclust.models.backbones import backbone_names

        names = backbone_names(pattern)
    elif what == "assignments":
        from semiclust.assign import ASSIGNMENTS

        names = ASSIGNMENTS.names(pattern)
    elif what == "datasets":
        from semiclust.data.datasets import DATASETS

        names = DATASETS.names(pattern)
    elif what == "methods":
        from semiclust.methods import METHODS

        names = [f"{n}: {METHODS.get(n).summary}" for n in METHODS.names(pattern)]
    else:
        from semiclust.recipes_dir import shipped_recipes

        names = [f"{name}: {path}" for name, path in shipped_recipes(pattern).items()]
    for name in names:
        print(name)
    if not names:
        err_console.print(f"no {what} match '{pattern}'")
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app and turns user errors into one paragraph and an exit code."""
    try:
        app(args=argv, prog_name="semiclust")
    except SemiclustError as err:
        label = "[bold yellow]stopped:[/]" if type(err).__name__ == "TrainingStopped" else "[bold red]error:[/]"
        err_console.print(f"{label} {err}", highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
