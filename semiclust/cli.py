"""The `semiclust` command line: thin wrappers that parse, call the library and print with rich."""
from __future__ import annotations

import json
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
) -> None:
    """Train a model as the recipe says; writes recipe, labeled subset, metrics and checkpoints to --out."""
    from semiclust.engine import dist
    from semiclust.engine.trainer import train as run_training
    from semiclust.recipe import load_recipe

    resolved = load_recipe(recipe, overrides or [])
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


@app.command("eval")
def evaluate_checkpoint(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="A checkpoint .pt file (or its run directory)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """Top-1/top-5 of the prototype classifier (the teacher for Daino) on the recipe's evaluation split."""
    from semiclust.data.datasets import build_dataset
    from semiclust.engine.checkpoint import load_checkpoint
    from semiclust.engine.trainer import resolve_device
    from semiclust.evaluate import EvalViews, classifier_from_checkpoint, evaluate

    target = resolve_device(device)
    state = load_checkpoint(checkpoint)
    network, recipe = classifier_from_checkpoint(state)
    network.to(target)
    dataset = build_dataset(recipe.data.dataset, recipe.data.options)
    if dataset.test is None:
        raise SemiclustError(f"dataset '{dataset.name}' of this checkpoint's recipe has no evaluation split; "
                             "give one in data.options (e.g. eval: for labeled_list) to evaluate.")
    views = EvalViews(dataset.test, recipe.data.eval, tuple(state["mean"]), tuple(state["std"]), recipe.eval.batch_size,
                      target, recipe.data.loader)
    result = evaluate(network, views, dataset.test_split_name, match=state["classifier"]["matched"])
    if as_json:
        print(json.dumps({**result.as_dict(), "checkpoint": str(checkpoint), "step": state["step"]}))
        return
    table = Table(title=f"{recipe.name} ({recipe.method.name}), step {state['step']}")
    for column in ("split", "images", "top-1 %", "top-5 %", "matching"):
        table.add_column(column)
    table.add_row(result.split, str(result.n), f"{result.top1:.2f}", f"{result.top5:.2f}", result.matching)
    console.print(table)


@app.command()
def export(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="A checkpoint written by `semiclust train`."),
    out: Path = typer.Option(..., "--out", "-o", help="Destination .safetensors file."),
) -> None:
    """Export to safetensors (not implemented yet in this release)."""
    raise SemiclustError(
        "`semiclust export` is not implemented yet in this release: safetensors export with timm-loadable "
        "metadata is planned for the next one. Until then, the checkpoint itself is readable with "
        "torch.load(path, weights_only=True).",
        exit_code=1,
    )


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
