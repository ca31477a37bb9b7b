"""How the CLI shows results: rich tables and lines for a dry run, an evaluation, a data check, predictions
and a finished training. Pure presentation of what the library API returned."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from semiclust.api import Evaluation
from semiclust.compare import Comparison
from semiclust.data.check import DataReport
from semiclust.engine.dry_run import DryRun
from semiclust.engine.numbers import lr_description
from semiclust.engine.trainer import TrainSummary
from semiclust.evaluation.metrics import EvalResult, top5_note
from semiclust.export.safetensors import timm_load_code
from semiclust.label.suggest import Suggestion
from semiclust.predict import Prediction
from semiclust.config.schema import Recipe

MAX_JSON_CONFUSION = 100  # classes; above this the matrix is left out of --json (it is in the PNG)
WORST_CLASSES = 10
MAX_CLASS_ROWS = 40


def key_value_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    return table


def dry_run_rows(recipe: Recipe, plan: DryRun) -> list[tuple[str, str]]:
    n, params, optim = plan.numbers, plan.parameters, recipe.optim
    evaluation = "no evaluation set" if plan.eval_images is None else f"{plan.eval_images:,} evaluation images"
    accumulated = f" per micro-batch, {optim.accumulate_steps} micro-batches a step" if optim.accumulate_steps > 1 else ""
    teacher = f"; EMA teacher {plan.teacher_parameters:,}" if plan.teacher_parameters else ""
    lr = lr_description(recipe, n)
    rows = [
        ("data", f"{plan.train_images:,} training images, {plan.labeled:,} labeled, {evaluation}, {plan.classes} classes"),
        ("labeled subset", plan.labeled_identity),
        ("global batch", f"{n.global_unlabeled:,} unlabeled + {n.global_labeled:,} labeled images per step; each of "
                         f"{n.world} process(es) takes {n.process_unlabeled} + {n.process_labeled}{accumulated}"
                         + (" (data.batch.per: process)" if recipe.data.batch.per == "process" else "")),
        ("steps", (f"{n.steps_per_epoch:,} per epoch x {recipe.schedule.epochs} epochs = {n.total_steps:,}"
                   if recipe.schedule.epochs else f"{n.steps_per_epoch:,} per epoch; the budget ({recipe.schedule.budget}) "
                   "decides how many, by a calibration at the start of training") + f"; warm-up {n.warmup_steps:,}"),
        ("learning rate", lr),
        ("parameters", f"backbone {params['backbone']:,}, head {params['head']:,}, prototypes {params['prototypes']:,}; "
                       f"trainable {params['trainable']:,}{teacher}"),
        ("optimiser", plan.optimizer),
        ("activations", f"~{plan.activation_gib:.2f} GiB per process kept for backward ({plan.precision}; "
                        "what autograd saved in a 2-image training forward, scaled to the batch"
                        + (", with gradient checkpointing" if recipe.model.grad_checkpointing else "") + ")"),
    ]
    return rows + ([("init", plan.init)] if plan.init else []) + tracker_rows(recipe)


def tracker_rows(recipe: Recipe) -> list[tuple[str, str]]:
    """Where the run would be logged besides metrics.jsonl."""
    runtime, where = recipe.runtime, recipe.runtime.tracking
    places = {"tensorboard": "<run>/tensorboard", "wandb": f"W&B project '{where.project}'"
              + (f" ({where.wandb_mode})" if where.wandb_mode else ""),
              "mlflow": f"MLflow experiment '{where.project}' at {where.mlflow_uri or 'MLFLOW_TRACKING_URI or the default'}"}
    return [("trackers", "; ".join(f"{name}: {places[name]}" for name in runtime.active_loggers))] \
        if runtime.active_loggers else []


def show_dry_run(console: Console, recipe: Recipe, plan: DryRun, processes: int) -> None:
    title = f"{recipe.name}: {recipe.method.name} on {plan.dataset} (dry run, {processes} process(es))"
    console.print(key_value_table(title, dry_run_rows(recipe, plan)))
    console.print("dry run: nothing was trained or written.", highlight=False)


def show_trained(console: Console, summary: TrainSummary) -> None:
    """The end of `semiclust train`: the final result, the checkpoint and the command that evaluates it again
    (shell-quoted and never wrapped, so that it pastes from a terminal or a log)."""
    r = summary.result
    again = f"evaluate again: {shlex.join(['semiclust', 'eval', '--checkpoint', str(summary.checkpoint)])}"
    if r is None:
        console.print(f"[bold green]done[/] in {summary.seconds:.0f}s (the dataset has no evaluation set).\n"
                      f"checkpoint: {escape(str(summary.checkpoint))}\n{escape(again)}", highlight=False, soft_wrap=True)
        return
    matched = " (prototypes matched to classes)" if r.matching != "identity" else ""
    skipped = f" ({r.unreadable} unreadable left out)" if r.unreadable else ""
    budget = f"\nbudget: {summary.budget_used}" if summary.budget_used else ""
    beside = "".join(f"; {name} network: top-1 {b.top1:.2f}%" for name, b in (summary.beside or {}).items())
    console.print(
        f"[bold green]done[/] in {summary.seconds:.0f}s: final top-1 [bold]{r.top1:.2f}%[/]{top5_words(r)} on "
        f"{r.n} {escape(r.split)} images{skipped}{matched}{trivial_note(r)}{beside}.\n{escape(best_line(summary))}checkpoint: "
        f"{escape(str(summary.checkpoint))}{budget}\n{escape(again)}", highlight=False, soft_wrap=True)


def top5_words(result: EvalResult) -> str:
    """The top-5 after the top-1 (`, top-5 93.00%`); nothing with five classes or fewer, where it is always 100%."""
    return "" if result.top5_trivial else f", top-5 {result.top5:.2f}%"


def trivial_note(result: EvalResult) -> str:
    """The note that top-5 holds every class (five classes or fewer), in parentheses; else nothing."""
    return f" ({top5_note(result.num_classes)})" if result.top5_trivial else ""


def best_line(summary: TrainSummary) -> str:
    """The checkpoint the validation split chose, with its own test top-1 (data.validation), as one line."""
    best = summary.best
    if best is None or best.step is None:
        return ""
    test = f"{best.test.split} top-1 {best.test.top1:.2f}%" if best.test is not None else "no test split"
    return (f"best on validation (chosen by the validation split, never by the test split): step {best.step}, "
            f"validation top-1 {best.top1:.2f}%, {test}; {summary.checkpoint.parent / 'best.pt'}\n")


def evaluation_json(evaluation: Evaluation) -> str:
    report = evaluation.report
    return json.dumps({**report.as_dict(include_confusion=len(report.classes) <= MAX_JSON_CONFUSION),
                       "top5_trivial": report.result.top5_trivial,
                       "knn_source": evaluation.knn_source, "checkpoint": str(evaluation.checkpoint),
                       "step": evaluation.step,
                       "confusion_png": str(evaluation.confusion_png) if evaluation.confusion_png else None,
                       "confusion_shows": evaluation.confusion_shows, "confusion_skipped": evaluation.confusion_skipped})


def per_class_table(evaluation: Evaluation) -> Table:
    """The classes, worst first (classes without images last); only the worst ones when there are many."""
    report = evaluation.report
    ranked = sorted(zip(report.classes, report.per_class.tolist(), report.confusion.sum(dim=1).tolist()),
                    key=lambda row: (row[1] != row[1], row[1]))
    shown = ranked if len(ranked) <= 2 * WORST_CLASSES else ranked[:WORST_CLASSES]
    table = Table(title="per-class accuracy" + ("" if shown is ranked else f" ({WORST_CLASSES} worst)"))
    for column in ("class", "images", "top-1 %"):
        table.add_column(column)
    for name, accuracy, count in shown:
        table.add_row(name, str(count), "-" if accuracy != accuracy else f"{accuracy:.1f}")
    return table


def show_evaluation(console: Console, evaluation: Evaluation, knn: int) -> None:
    report, r, recipe = evaluation.report, evaluation.report.result, evaluation.recipe
    table = Table(title=f"{recipe.name} ({recipe.method.name}), step {evaluation.step}")
    for column in ("split", "images", "top-1 %", "top-5 %", "matching", "kNN top-1 %"):
        table.add_column(column)
    memory = "labeled" if evaluation.knn_source == "labeled" else "training images, all labels"
    knn_cell = f"{report.knn_top1:.2f} (k {knn}, {report.knn_memory} {memory})" if report.knn_top1 is not None else "-"
    table.add_row(r.split, str(r.n) + (f" ({r.unreadable} unreadable)" if r.unreadable else ""), f"{r.top1:.2f}",
                  f"{r.top5:.2f} *" if r.top5_trivial else f"{r.top5:.2f}", r.matching, knn_cell)
    console.print(table)
    if r.top5_trivial:
        console.print(f"* {top5_note(r.num_classes)}, so it says nothing about the classifier.", highlight=False,
                      soft_wrap=True)
    console.print(per_class_table(evaluation))
    if report.knn_top1 is None and evaluation.knn_skipped != "--knn-k 0":
        console.print(f"kNN diagnostic skipped: {evaluation.knn_skipped}.", highlight=False, markup=False, soft_wrap=True)
    if evaluation.confusion_png:
        shows = f" ({evaluation.confusion_shows})" if evaluation.confusion_shows else ""
        console.print(f"confusion matrix: {evaluation.confusion_png}{shows}", highlight=False, markup=False, soft_wrap=True)
    if evaluation.confusion_skipped:
        console.print(evaluation.confusion_skipped, highlight=False, markup=False, soft_wrap=True)


def class_table(report: DataReport, recipe_name: str) -> Table:
    dataset = report.dataset
    table = Table(title=f"{dataset.name}: {dataset.num_classes} classes (recipe {recipe_name})")
    for column in ("class", "labeled", "unlabeled", "eval"):
        table.add_column(column, justify="left" if column == "class" else "right")
    rows = report.rows if len(report.rows) <= MAX_CLASS_ROWS else report.rows[: MAX_CLASS_ROWS // 2]
    for row in rows:
        table.add_row(escape(row.name), str(row.labeled), str(row.unlabeled), str(row.eval))
    if len(rows) < len(report.rows):
        fewest = min(report.rows, key=lambda r: r.labeled)
        table.add_row(f"... {len(report.rows) - len(rows)} more (fewest labeled: {escape(fewest.name)})", "", "", "")
    if report.unlabeled_only:
        table.add_row("(no label)", "-", str(report.unlabeled_only), "-")
    table.add_row("total", str(sum(r.labeled for r in report.rows)),
                  str(sum(r.unlabeled for r in report.rows) + report.unlabeled_only),
                  str(sum(r.eval for r in report.rows)) if dataset.test is not None else "no eval set", style="bold")
    return table


def show_data_report(console: Console, report: DataReport, recipe_name: str) -> None:
    console.print(class_table(report, recipe_name))
    console.print("unlabeled stream: every training image, its label unused", highlight=False)
    if report.subset is not None:
        console.print(f"labeled subset: {len(report.subset.indices)} images, {report.subset.identity}", highlight=False,
                      markup=False)
    console.print(f"image sizes: {report.sizes}", highlight=False)
    console.print(f"files: {report.decoded}", highlight=False)
    if report.ok:
        console.print("[bold green]no problems found[/]")
        return
    console.print(f"[bold red]{len(report.problems)} problem(s):[/]")
    for problem in report.problems:
        console.print(f"  - {problem}", highlight=False, soft_wrap=True, markup=False)  # file names are not markup


def predictions_table(title: str, predictions: list[Prediction]) -> Table:
    """One row per image: its path whole (folded onto more lines on a narrow terminal, never cut with an ellipsis:
    it is what tells the images apart) and its top classes."""
    table = Table(title=title)
    for column in ("image", "classes (probability)"):
        table.add_column(column, overflow="fold")
    for p in predictions:
        cell = p.error and f"unreadable: {p.error}" or ", ".join(f"{c} ({v:.1%})" for c, v in zip(p.classes, p.probabilities))
        table.add_row(escape(p.path), escape(cell))
    return table


def show_export(console: Console, meta: dict[str, str], out: Path) -> None:
    """What was exported, and the code that loads it (plain timm for a backbone, semiclust for a classifier)."""
    kind = {"onnx": "ONNX ", "hub": "hub-format folder of the "}.get(meta.get("file_format", ""), "")
    console.print(f"wrote {out}: {kind}{meta['content']} of {meta['architecture']} (step {meta['step']}, "
                  f"{meta['num_classes']} classes, recipe sha256 {meta['recipe_sha256'][:12]})", highlight=False,
                  markup=False, soft_wrap=True)
    if meta["content"] == "backbone":
        code = "\n".join(f"    {line}" for line in timm_load_code(meta, str(out)))
        console.print(f"load it with timm:\n{code}", highlight=False, markup=False, soft_wrap=True)
    else:
        console.print(f"load it with semiclust: semiclust.load_classifier({str(out)!r}); or "
                      f"{shlex.join(['semiclust', 'predict', '--model', str(out)])} IMAGES...", highlight=False,
                      markup=False, soft_wrap=True)
    if meta.get("file_format") == "hub":
        console.print(f"publish it: {shlex.join(['huggingface-cli', 'upload', 'USER/REPO', str(out)])} (then "
                      "timm.create_model('hf-hub:USER/REPO', pretrained=True)); the model card is README.md",
                      highlight=False, markup=False, soft_wrap=True)


def shown_value(value) -> str:
    """A recipe value as a compare cell: text as it is, everything else as JSON (null for a missing key)."""
    return value if isinstance(value, str) else json.dumps(value)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s" if seconds < 600 else f"{int(seconds // 3600)}h {int(seconds % 3600 // 60):02d}m"


def comparison_table(comparison: Comparison) -> Table:
    """One row per run: its values of the differing recipe keys, final and best top-1, time and images/s."""
    differing = list(comparison.differences)
    split = next((r.final["split"] for r in comparison.runs if r.final), "evaluation")
    title = f"{len(comparison.runs)} runs; recipes differ in: {', '.join(differing) or 'nothing'}"
    table = Table(title=title)
    for column in ("run", "recipe differences", "final top-1 %", f"best top-1 % during training ({split})",
                   "time", "images/s"):
        table.add_column(column, justify="left" if column in ("run", "recipe differences") else "right")
    for index, run in enumerate(comparison.runs):
        cells = "\n".join(f"{key}={shown_value(values[index])}" for key, values in comparison.differences.items())
        cells = "(recipe.yaml damaged)" if run.recipe is None else cells
        final, best, speed = run.final, run.best, run.images_per_second
        table.add_row(escape(run.label) + ("" if run.finished else " (unfinished)"), escape(cells or "-"),
                      f"{final['top1']:.2f} (step {final['step']})" if final else "-",
                      f"{best['top1']:.2f} (step {best['step']})" if best else "-",
                      duration(run.seconds), f"{speed:,.0f}" if speed is not None else "-")
    return table


def show_comparison(console: Console, comparison: Comparison) -> None:
    console.print(comparison_table(comparison))
    for note in comparison.notes:
        console.print(f"warning: {note}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"curves: {comparison.png}", highlight=False, markup=False, soft_wrap=True)


def show_suggestion(console: Console, suggestion: Suggestion) -> None:
    """The end of `semiclust label suggest`: what was written, by which rule, from which run, how long each part
    took, and the next command."""
    out, times = suggestion.outputs, suggestion.seconds
    took = ", ".join(f"{name.removesuffix('_s').replace('_', ' ')} {duration(value)}" for name, value in times.items())
    unreadable = f" ({suggestion.unreadable} unreadable left out)" if suggestion.unreadable else ""
    before = f", {suggestion.labeled_before:,} already labeled or excluded" if suggestion.labeled_before else ""
    trained = " (trained now, kept for the warm start)" if suggestion.trained else ""
    after = ("the names are training indices of an in-memory dataset: train with them as data.labels: {list: FILE} "
             "(one index per line), see docs/labeling.md" if suggestion.indexed else
             "fill in the label column, then " + shlex.join(["semiclust", "recipe", "init", "--labels", str(out.csv),
                                                             "--out", "my.yaml"]))
    lines = [f"[bold green]wrote[/] {escape(str(out.csv))}: {len(suggestion.indices)} of {suggestion.pool_size:,} "
             f"images to label, in order{before}{unreadable}",
             f"contact sheet: {escape(str(out.html))} (open it in a browser) and {escape(str(out.png))}",
             f"rule: {suggestion.rule}; from {escape(str(suggestion.checkpoint))}{trained}", f"time: {took}",
             *[f"note: {escape(note)}" for note in suggestion.notes], f"next: {escape(after)}"]
    console.print("\n".join(lines), highlight=False, soft_wrap=True)
