"""`semiclust compare`: three tiny runs (two seeds, two learning rates) give the recipe differences, final and
best top-1, time and images/s computed here from their files, and one readable PNG of their curves."""
import copy
import json
import statistics

import pytest
from PIL import Image

from semiclust import api
from semiclust.cli import main
from semiclust.compare import recipe_differences, run_labels, training_seconds
from semiclust.engine.checkpoint import load_checkpoint
from semiclust.errors import SemiclustError
from tests.helpers import TINY_RECIPE, make_recipe

CHANGES = [{"seed": 0}, {"seed": 1}, {"seed": 0, "optim": {"lr": 0.1}}]


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    paths = []
    for index, change in enumerate(CHANGES):
        raw = copy.deepcopy(TINY_RECIPE)
        raw["eval"] = {"every_epochs": 1}  # an evaluation per epoch: best and final can differ
        raw["seed"] = change["seed"]
        raw["optim"].update(change.get("optim", {}))
        api.train(make_recipe(raw), folder / f"run{index}")
        paths.append(folder / f"run{index}")
    return paths


def records(path, kind):
    return [r for r in map(json.loads, (path / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def test_compare_reports_what_the_run_files_say(three_runs):
    comparison = api.compare(three_runs)
    assert comparison.differences == {"seed": [0, 1, 0], "optim.lr": [0.05, 0.05, 0.1]}
    for path, run in zip(three_runs, comparison.runs):
        evals, train = records(path, "eval"), records(path, "train")
        assert len(evals) == 2 and run.label == path.name and run.finished
        assert run.final["top1"] == load_checkpoint(path / "checkpoints" / "final.pt").eval["top1"] == evals[-1]["top1"]
        assert run.best["top1"] == max(r["top1"] for r in evals)
        assert run.images_per_second == statistics.median(r["img_per_s"] for r in train)
        assert run.seconds == train[-1]["elapsed_s"]
    assert comparison.png == three_runs[0].parent / "compare.png"
    image = Image.open(comparison.png)
    assert image.size == (1800, 500) and len(image.convert("RGB").getcolors(1 << 20)) > 50  # drawn, not blank


def test_the_cli_prints_one_row_per_run_and_writes_the_png(three_runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    png = tmp_path / "sweep.png"
    with pytest.raises(SystemExit) as done:
        main(["compare", *map(str, three_runs), "--out", str(png)])
    out = capsys.readouterr().out
    assert done.value.code in (0, None) and png.read_bytes()[:4] == b"\x89PNG"
    assert "3 runs; recipes differ in: seed, optim.lr" in out and f"curves: {png}" in out
    for index, line in enumerate(l for l in out.splitlines() if l.startswith("│ run")):
        assert f"run{index}" in line and f"seed={CHANGES[index]['seed']}" in line
    with pytest.raises(SystemExit) as done:
        main(["compare", str(tmp_path)])
    assert done.value.code == 2 and "is not a run directory (no recipe.yaml)" in capsys.readouterr().err


def test_differences_labels_and_resumed_time_by_hand():
    recipes = [{"name": "a", "seed": 0, "data": {"crops": [{"size": 8}, {"size": 4}]}},
               {"name": "b", "seed": 0, "data": {"crops": [{"size": 8}, {"size": 6}]}, "extra": 1}]
    assert recipe_differences(recipes) == {"data.crops[1].size": [4, 6], "extra": [None, 1]}  # not the name
    assert run_labels(["x/a/s0", "x/b/s0", "x/c/s1"]) == ["a/s0", "b/s0", "c/s1"]
    resumed = [{"elapsed_s": 1.0}, {"elapsed_s": 5.0}, {"elapsed_s": 2.0}, {"elapsed_s": 3.5}]  # restarted at 0
    assert training_seconds(resumed) == 8.5 and training_seconds([]) is None
    with pytest.raises(SemiclustError, match="at least one run"):
        api.compare([])
