"""Training on image files end to end: a labeled_list dataset read by loader workers, corrupt files, resume."""
import copy
import json
import shutil

import pytest
import torch

from semiclust.engine.checkpoint import periodic_checkpoints
from semiclust.engine.trainer import train
from semiclust.errors import SemiclustError
from semiclust.config.loader import resolve as validate
from tests.data.files import corrupt, labeled_list_dataset
from tests.helpers import TINY_RECIPE


def file_recipe(options: dict, **data_changes) -> dict:
    raw = copy.deepcopy(TINY_RECIPE)
    raw["data"].update({"dataset": "labeled_list", "options": options, "labels": {"fraction": 1.0},
                        "eval": {"size": 8, "resize": 10}, "loader": {"workers": 1, "prefetch": 2}, **data_changes})
    raw["checkpoint"] = {"every_epochs": 0, "every_steps": 3, "keep_last": 5}
    raw["runtime"]["threads"] = 2
    return raw


@pytest.fixture()
def dataset_options(tmp_path):
    options = labeled_list_dataset(tmp_path / "data", per_class=6, unlabeled_per_class=10, eval_per_class=4)
    corrupt(tmp_path / "data" / "pool" / "broken.png")
    return options


def test_labeled_list_trains_end_to_end_skipping_a_corrupt_file_and_resumes_exactly(tmp_path, dataset_options):
    recipe = validate(file_recipe(dataset_options))
    summary = train(recipe, tmp_path / "run")
    run = tmp_path / "run"
    assert summary.result.n == 16 and summary.result.split == "eval list" and summary.steps == 8  # 65 files // 16 x 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("corrupt_images", 0) for r in records if r["type"] == "train") >= 1
    state = torch.load(summary.checkpoint, weights_only=True)
    assert len(state["labeled_files"]) == 24 and all(f.endswith(".png") for f in state["labeled_files"])
    subset = json.loads((run / "labeled_subset.json").read_text())
    assert subset["files"] == state["labeled_files"] and subset["sha256"] == state["labeled_sha256"]

    resumed = tmp_path / "resumed"  # the same run cut back to its step-3 checkpoint, then resumed
    shutil.copytree(run, resumed)
    (resumed / "checkpoints" / "final.pt").unlink()
    for saved in periodic_checkpoints(resumed / "checkpoints"):
        if int(saved.stem.split("_")[1]) != 3:
            saved.unlink()
    again = train(recipe, resumed, resume=True)
    assert again.steps == 5
    final = torch.load(again.checkpoint, weights_only=True)["method"]
    for name, value in state["method"].items():
        assert torch.equal(final[name], value), f"{name} differs after resume"


def test_corrupt_file_fails_the_run_when_the_recipe_says_so(tmp_path, dataset_options):
    recipe = validate(file_recipe(dataset_options, corrupt_images="fail"))
    with pytest.raises(SemiclustError, match=r"unreadable training image '.*broken.png'.*corrupt_images: skip"):
        train(recipe, tmp_path / "run")


def test_listing_problems_stop_training_before_it_starts(tmp_path, dataset_options):
    csv = tmp_path / "data" / "labels.csv"
    csv.write_text(csv.read_text() + "labeled/not_there.png,cat\n")
    with pytest.raises(SemiclustError, match=r"1 problem\(s\).*not_there.png.*semiclust data check"):
        train(validate(file_recipe(dataset_options)), tmp_path / "run")


def test_resume_refuses_data_whose_listing_changed(tmp_path, dataset_options):
    raw = file_recipe(dataset_options)
    raw["schedule"]["epochs"] = 1
    recipe = validate(raw)
    train(recipe, tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "final.pt").unlink()
    shutil.copy(tmp_path / "data" / "pool" / "u0_0.png", tmp_path / "data" / "pool" / "a_new_image.png")
    with pytest.raises(SemiclustError, match=r"data changed since this run started \(the training split had 65 images"):
        train(recipe, tmp_path / "run", resume=True)


def test_a_budget_is_calibrated_on_a_folder_that_holds_fewer_steps_than_are_measured(tmp_path, dataset_options):
    """The calibration measures up to 203 steps while the run's length still stands at one epoch (4 steps here):
    the file loader's positions ended there ("generator raised StopIteration", a traceback, for any small folder
    not decoded into memory). The measured steps are put back: the run's length is as before, the batches restart."""
    import time

    from semiclust.engine.budget import calibrate
    from semiclust.engine.run_dir import RunFiles
    from semiclust.engine.setup import build_run

    raw = file_recipe(dataset_options, cache="off", loader={"workers": 0})  # no worker start-ups to wait for
    raw["schedule"] = {"budget": "2m"}  # the plan's length is not what is tested: room for a slow machine
    files = RunFiles(tmp_path / "run")
    files.checkpoints.mkdir(parents=True)
    run = build_run(validate(raw), files, torch.device("cpu"), resume=False)
    assert run.batches.files is not None and run.numbers.total_steps == run.numbers.steps_per_epoch == 4
    plan = calibrate(run, files, 120.0, time.time())
    assert plan.total_steps > 4 and plan.step_s > 0
    assert run.numbers.total_steps == 4  # plan_budget retargets to the plan
