"""`semiclust label suggest` end to end on tiny data, through the CLI: a self-supervised run on a nested folder with
no labels, the list in the order to label and its contact sheet (HTML that names only files that exist, PNG); the
filled-in list into a `labeled_list` recipe that starts from the run's weights; rows left unlabeled refused; the next
round from a trained run; a registered in-memory dataset named by training indices; and bad input as one paragraph,
exit 2, with nothing lost.

The width timing of `recipe init` is replaced by a fixed narrow width and the runs train two epochs (--set
schedule.budget=null schedule.epochs=2), so that the file runs in seconds; one slow test keeps a real budget."""
from __future__ import annotations

import base64
import csv
import io
import json
import os
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch
import yaml
from typer.testing import CliRunner

from semiclust import api
from semiclust.cli import app
from semiclust.config import init as recipe_init
from semiclust.data.datasets import build_dataset
from semiclust.engine.checkpoint import load_checkpoint
from semiclust.engine.setup import build_student
from semiclust.label.lists import read_provenance, read_rows
from semiclust.methods import METHODS
from semiclust.config.loader import load_recipe
from tests.data.files import save, stripes
from tests.label.pages import Sheet
from tests.helpers import TINY_RECIPE
from tests.test_cli import run as cli

pytestmark = pytest.mark.slow  # each test reads a run trained here (a few seconds on 2 cores)
SHORT = ["--set", "schedule.budget=null", "--set", "schedule.epochs=2", "--set", "runtime.threads=1",
         "--set", "runtime.device=cpu", "--set", "runtime.progress=none"]
CLASSES = ("ant", "bee", "cat", "dog")


def photo_folder(root: Path, per_class: int = 6) -> Path:
    """24 16-px stripe images of 4 classes in nested folders, the class in each file's name (the simulated labeler)."""
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            save(root / ("a" if i % 2 else "b/c") / f"{name}_{i}.png", stripes(label, label * 100 + i, size=16))
    return root


def narrow_width(monkeypatch) -> None:
    """`recipe init`'s width timing (seconds of timed steps per candidate) replaced by one narrow width."""
    monkeypatch.setattr(recipe_init, "choose_width", lambda *args: (8, [recipe_init.Measured(8, 0.01, 100.0)]))


def invoke(*argv: str):
    done = CliRunner().invoke(app, list(argv))
    assert done.exit_code == 0, (done.output, done.exception)
    return " ".join(done.stdout.split())


@pytest.fixture(scope="module")
def suggested(tmp_path_factory) -> dict:
    """One suggestion of 6 images from the 24-image folder (its self-supervised run kept in runs/suggest)."""
    root = tmp_path_factory.mktemp("suggest")
    photos = photo_folder(root / "photos")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            narrow_width(patch)
            stdout = invoke("label", "suggest", "--data", str(photos), "--n", "6", "--out", str(root / "to_label.csv"),
                            "--run", str(root / "runs" / "suggest"), *SHORT)
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "photos": photos, "csv": root / "to_label.csv", "run": root / "runs" / "suggest",
            "stdout": stdout}


def filled(suggested: dict, name: str = "filled.csv", blank: tuple[int, ...] = ()) -> Path:
    """The suggestion list with each label written in from the file's name (rows in `blank` left empty)."""
    lines = []
    for line in suggested["csv"].read_text().splitlines():
        if line.startswith("#") or line == "path,label":
            lines.append(line)
            continue
        path = line.rstrip(",")
        row = sum(1 for item in lines if not item.startswith("#") and item != "path,label")
        lines.append(f"{path}," if row in blank else f"{path},{Path(path).name.split('_')[0]}")
    out = suggested["root"] / name
    out.write_text("\n".join(lines) + "\n")
    return out


def test_the_list_names_images_of_the_folder_in_order_and_the_run_is_kept(suggested):
    """6 distinct images of the folder, label empty, paths relative to the list's folder; the comments name the kept
    run, its checkpoint and the images; the run is SwAV on the unlabeled pool."""
    rows = read_rows(suggested["csv"])
    assert len(rows) == 6 and all(row.label == "" for row in rows)
    files = [(suggested["root"] / row.path).resolve() for row in rows]
    assert len(set(files)) == 6 and all(f.is_file() and suggested["photos"].resolve() in f.parents for f in files)
    origin = read_provenance(suggested["csv"])
    assert origin.checkpoint == (suggested["run"] / "checkpoints" / "final.pt").resolve() and origin.checkpoint.is_file()
    assert origin.run == suggested["run"].resolve() and origin.images == suggested["photos"].resolve()
    recipe = load_recipe(suggested["run"] / "recipe.yaml")
    assert recipe.method.name == "swav" and recipe.data.dataset == "pool"
    assert recipe.data.options["root"] == str(suggested["photos"].resolve()) and recipe.data.options["clusters"] == 30
    assert f"wrote {suggested['csv']}: 6 of 24 images to label, in order" in suggested["stdout"]
    assert "rule: typical" in suggested["stdout"] and "semiclust recipe init --labels" in suggested["stdout"]


def test_the_contact_sheet_shows_every_suggested_image_and_names_only_files_that_exist(suggested):
    """The HTML (openable from disk) has one figure per row of the list, ranked in the list's order and grouped in
    cluster sections; every link is a relative path to an existing file; every thumbnail is an embedded PNG. The PNG
    grid is a real image."""
    from PIL import Image

    page = suggested["csv"].with_suffix(".html")
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<meta charset=\"utf-8\">" in text
    sheet = Sheet()
    sheet.feed(text)
    rows = read_rows(suggested["csv"])
    assert sorted(rank for rank, _, _ in sheet.figures) == list(range(1, 7))
    assert {rank: path for rank, path, _ in sheet.figures} == {i: row.path for i, row in enumerate(rows, 1)}
    assert len(set(sheet.sections)) == len(sheet.sections) and all(s.startswith("cluster-") for s in sheet.sections)
    for section in sheet.sections:  # a cluster's figures are together, in rank order
        ranks = [rank for rank, _, where in sheet.figures if where == section]
        assert ranks == sorted(ranks)
    assert len(sheet.links) == 6 and all(not os.path.isabs(unquote(link)) for link in sheet.links)
    assert all((page.parent / unquote(link)).is_file() for link in sheet.links)
    assert len(sheet.images) == 6 and all(src.startswith("data:image/png;base64,") for src in sheet.images)
    for src in sheet.images:
        assert Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size == (128, 128)
    with Image.open(suggested["csv"].with_suffix(".png")) as grid:
        assert grid.format == "PNG" and grid.size[0] > 300


def test_the_filled_list_becomes_a_labeled_list_recipe_that_starts_from_the_run(suggested, capsys):
    """`recipe init --labels filled.csv` (no --data: the list names the folder): a labeled_list recipe of the folder
    whose labeled images are the 6 rows with their classes, the run's network, and model.init at its checkpoint; the
    student built from it holds the run's backbone and head weights exactly (SwAV's cluster prototypes are not
    classes and are not loaded)."""
    labels = filled(suggested)
    out = suggested["root"] / "my.yaml"
    code, stdout, err = cli(capsys, "recipe", "init", "--labels", str(labels), "--out", str(out), "--budget", "1m")
    assert code == 0, err
    recipe = load_recipe(out)
    assert recipe.data.dataset == "labeled_list" and recipe.data.labels.fraction == 1.0
    assert recipe.data.options == {"labeled": str(labels.resolve()), "unlabeled": [str(suggested["photos"].resolve())]}
    checkpoint = suggested["run"] / "checkpoints" / "final.pt"
    assert recipe.model.init.path == checkpoint.resolve() and recipe.model.init.what == "backbone_head"
    run_recipe = load_recipe(suggested["run"] / "recipe.yaml")
    assert recipe.model.backbone == run_recipe.model.backbone and recipe.model.head == run_recipe.model.head
    assert "the network of the suggestion run" in " ".join(stdout.split())
    data = build_dataset(recipe.data.dataset, recipe.data.options)
    assert not data.problems and len(data.train) == 24 and int((data.train.labels >= 0).sum()) == 6
    named = {Path(row.path).name.split("_")[0] for row in read_rows(labels)}
    assert data.classes == sorted(named)
    student, report = build_student(recipe, data.channels, data.num_classes, METHODS.get("suave"))
    saved = load_checkpoint(checkpoint).method
    assert report is not None and not report.missing
    for key, tensor in student.state_dict().items():
        if key.startswith(("backbone.", "head.")):
            assert torch.equal(tensor, saved[f"student.{key}"]), key
    assert not any(key.startswith("prototypes.") for key in report.loaded)


def test_rows_left_unlabeled_are_one_paragraph_naming_how_many_and_where(suggested, capsys):
    labels = filled(suggested, "half.csv", blank=(1, 4))
    out = suggested["root"] / "half.yaml"
    code, _, err = cli(capsys, "recipe", "init", "--labels", str(labels), "--out", str(out), "--budget", "1m")
    rows = read_rows(labels)
    assert code == 2 and not out.exists()
    assert f"'{labels}' has 2 of 6 row(s) without a label: line {rows[1].line} ('{rows[1].path}'), line {rows[4].line}" in err
    assert "Write each image's class after its comma" in err
    assert err.startswith("error: ") and "Traceback" not in err and err.strip().count("\n\n") == 0


def test_the_next_round_picks_unlabeled_images_of_a_trained_run(suggested, capsys):
    """From a Suave run on the filled list: 4 images by the uncertain rule, none of them labeled or in --exclude."""
    labels = filled(suggested, "round1.csv")
    recipe = suggested["root"] / "round1.yaml"
    code, _, err = cli(capsys, "recipe", "init", "--labels", str(labels), "--out", str(recipe), "--budget", "1m")
    assert code == 0, err
    trained = suggested["root"] / "runs" / "round1"
    api.train(recipe, trained, overrides=[item for item in SHORT if item != "--set"])
    out = suggested["root"] / "next.csv"
    code, stdout, err = cli(capsys, "label", "suggest", "--checkpoint", str(trained), "--n", "4", "--exclude",
                            str(labels), "--out", str(out))
    assert code == 0, err
    picked = {(out.parent / row.path).resolve() for row in read_rows(out)}
    labeled = {(labels.parent / row.path).resolve() for row in read_rows(labels)}
    assert len(picked) == 4 and not picked & labeled
    assert "rule: uncertain" in " ".join(stdout.split()) and out.with_suffix(".html").is_file()
    assert read_provenance(out).checkpoint == (trained / "checkpoints" / "final.pt").resolve()


def test_a_registered_in_memory_dataset_is_named_by_training_index(tmp_path, capsys, monkeypatch):
    """--dataset synthetic: the pool is its training split without labels; the list names training indices and the
    sheet embeds the pixels (no file to link). From a Suave run of it (--checkpoint), its labeled subset is never
    suggested."""
    narrow_width(monkeypatch)
    out = tmp_path / "picks.csv"
    code, _, err = cli(capsys, "label", "suggest", "--dataset", "synthetic", "--n", "5", "--out", str(out), "--run",
                       str(tmp_path / "ssl"), *SHORT)
    assert code == 0, err
    indices = [int(row.path) for row in read_rows(out)]
    assert len(set(indices)) == 5 and all(0 <= i < 4 * 32 for i in indices)
    assert read_provenance(out).dataset == "synthetic"
    sheet = Sheet()
    sheet.feed(out.with_suffix(".html").read_text())
    assert not sheet.links and len(sheet.images) == 5
    raw = {**TINY_RECIPE, "schedule": {"epochs": 1}}
    api.train(load_recipe_dict(tmp_path, raw), tmp_path / "suave")
    subset = set(json.loads((tmp_path / "suave" / "labeled_subset.json").read_text())["indices"])
    code, _, err = cli(capsys, "label", "suggest", "--checkpoint", str(tmp_path / "suave"), "--n", "20", "--out",
                       str(tmp_path / "next.csv"))
    assert code == 0, err
    again = {int(row.path) for row in read_rows(tmp_path / "next.csv")}
    assert len(again) == 20 and not again & subset


def load_recipe_dict(folder: Path, raw: dict):
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_recipe(path)


def one_paragraph(code: int, err: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err and err.strip().count("\n\n") == 0


def test_bad_input_is_one_paragraph_exit_2_and_nothing_is_lost(suggested, tmp_path, capsys, monkeypatch):
    """An empty folder, more images than the folder holds, a checkpoint of another folder, an unwritable or existing
    --out, the sheet's name as --out, no images named: each refused before any work, one paragraph, exit 2; no run
    folder is started and an existing list is left as it was."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    other = photo_folder(tmp_path / "other", per_class=1)
    (tmp_path / "a_file").write_text("not a folder")
    kept = tmp_path / "kept.csv"
    kept.write_text("path,label\nmine.png,cat\n")
    photos, run = str(suggested["photos"]), str(suggested["run"])
    cases = [
        (["--data", str(tmp_path / "empty"), "--n", "5", "--out", "a.csv"], "holds no images"),
        (["--data", photos, "--n", "100", "--out", "a.csv"], "--n 100 is more than the 24 images of"),
        (["--data", photos, "--n", "0", "--out", "a.csv"], "--n must be at least 1"),
        (["--checkpoint", run, "--data", str(other), "--n", "2", "--out", "a.csv"], "was trained on the images of"),
        (["--checkpoint", run, "--n", "25", "--out", "a.csv"], "--n 25 is more than the 24 readable images"),
        (["--data", photos, "--n", "2", "--out", str(tmp_path / "a_file" / "a.csv")], "cannot be written"),
        (["--data", photos, "--n", "2", "--out", str(kept)], "already exist(s)"),
        (["--data", photos, "--n", "2", "--out", "sheet.html"], "names the contact sheet"),
        (["--n", "2", "--out", "a.csv"], "give either --data FOLDER"),
        (["--checkpoint", str(tmp_path / "nowhere"), "--n", "2", "--out", "a.csv"], "nowhere"),
    ]
    for argv, says in cases:
        code, _, err = cli(capsys, "label", "suggest", *argv)
        one_paragraph(code, err)
        assert says in " ".join(err.split()), (argv, err)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "a.csv").exists()
    assert kept.read_text() == "path,label\nmine.png,cat\n"
    code, _, err = cli(capsys, "label", "suggest", "--checkpoint", run, "--n", "2", "--out", str(kept), "--force")
    assert code == 0, err
    assert len(read_rows(kept)) == 2 and kept.with_suffix(".html").is_file()


def test_a_suggestion_run_stays_inside_its_budget(tmp_path, capsys):
    """The real path, timing included: `--budget 25s` fixes the self-supervised run's length (budget.json) and the
    run ends inside it, counted from the start of the command."""
    photos = photo_folder(tmp_path / "photos")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.time()
    try:
        suggestion = api.suggest_labels(4, tmp_path / "picks.csv", data=photos, budget="25s", run_dir=tmp_path / "run",
                                        overrides=["runtime.threads=1", "runtime.device=cpu", "runtime.progress=none"],
                                        started=started)
    finally:
        torch.set_num_threads(threads)
    plan = json.loads((tmp_path / "run" / "budget.json").read_text())
    assert plan["budget_s"] == 25 and suggestion.trained
    assert suggestion.seconds["self_supervised_s"] <= 1.05 * 25, suggestion.seconds
    assert len(suggestion.indices) == 4 and list(csv.reader(open(tmp_path / "picks.csv")))[-1][1] == ""


def test_the_pass_over_the_images_reports_its_progress(suggested, tmp_path):
    """The feature pass calls `advance(done, total)` from 0 to every image (the CLI's progress bar); the same seed
    picks the same images from the same run."""
    seen: list[tuple[int, int]] = []
    first = api.suggest_labels(3, tmp_path / "a.csv", checkpoint=suggested["run"], seed=4,
                               advance=lambda done, total: seen.append((done, total)))
    again = api.suggest_labels(3, tmp_path / "b.csv", checkpoint=suggested["run"], seed=4)
    assert seen[0] == (0, 24) and seen[-1] == (24, 24) and len(seen) >= 2
    assert first.indices == again.indices and not first.trained and first.rule == "typical"
    assert set(first.seconds) == {"features_s", "selection_s"}


def test_a_run_that_has_not_left_its_uniform_start_is_named(suggested, tmp_path):
    """A SwAV run whose last loss is still near ln K (uniform predictions over its K prototypes) gets a note saying
    its picks are little better than random; one whose loss fell gets none."""
    import shutil

    from semiclust.label.features import open_run
    from semiclust.label.suggest import unlearned_note

    run = tmp_path / "run"
    shutil.copytree(suggested["run"], run)
    metrics = run / "metrics.jsonl"
    for loss, noted in ((3.39, True), (1.2, False)):
        metrics.write_text(json.dumps({"type": "train", "step": 8, "loss": loss}) + "\n")
        note = unlearned_note(open_run(run))
        assert (note is not None) == noted, note
    metrics.write_text(json.dumps({"type": "train", "step": 8, "loss": 3.39}) + "\n")
    assert "ln of its 30 prototypes: uniform predictions" in unlearned_note(open_run(run))
