"""Experiment trackers: a short digits run logged to W&B (offline), MLflow (a local sqlite store) and
TensorBoard is read back with each library's own reader, and holds metrics.jsonl's scalars and the recipe;
a tracker that is not installed is an error naming its extra, before anything is written."""
import glob
import json
import sys

import pytest
import yaml

from semiclust import api
from semiclust.engine.loggers import mlflow_key
from semiclust.engine.metrics import read_metrics
from semiclust.errors import SemiclustError
from semiclust.config.validation import flat_values
from tests.helpers import wandb_records

SHORT = ["schedule.epochs=1", "schedule.warmup_epochs=0", "runtime.progress=none", "runtime.log_every_steps=2",
         "checkpoint.every_epochs=0"]


def expected_scalars(run_dir) -> dict[str, dict[int, float]]:
    """metrics.jsonl's numbers as {section/key: {step: value}}: what every tracker must hold."""
    scalars: dict[str, dict[int, float]] = {}
    for record in read_metrics(run_dir / "metrics.jsonl"):
        for key, value in record.items():
            if key not in ("type", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                scalars.setdefault(f"{record['type']}/{key}", {})[record["step"]] = float(value)
    return scalars


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """digits_suave for one epoch (11 steps), logged to W&B offline and to MLflow in a sqlite file."""
    pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install 'semiclust[wandb]')")
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'semiclust[mlflow]')")
    folder = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # MLflow keeps artifacts in ./mlruns beside a sqlite store
        patch.setenv("WANDB_SILENT", "true")
        recipe = api.load_recipe("digits_suave", SHORT + ["runtime.loggers=[wandb, mlflow]",
                                                          "runtime.tracking.wandb_mode=offline",
                                                          f"runtime.tracking.mlflow_uri={uri}"])
        summary = api.train(recipe, folder / "digits-run")
    return summary, recipe, uri


def test_mlflow_holds_the_scalars_the_recipe_and_the_figures(tracked_run):
    from mlflow.tracking import MlflowClient

    summary, recipe, uri = tracked_run
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("semiclust").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "digits-run" and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    expected = expected_scalars(summary.run_dir)
    assert set(runs[0].data.metrics) == set(expected) and "train/loss" in expected and "eval/top1" in expected
    for key, values in expected.items():
        assert {m.step: m.value for m in client.get_metric_history(run_id, key)} == values, key
    assert runs[0].data.params == {mlflow_key(k): str(v) for k, v in flat_values(recipe.model_dump(mode="json")).items()}
    recipe_file = client.download_artifacts(run_id, "recipe.yaml", str(summary.run_dir.parent))
    assert yaml.safe_load(open(recipe_file)) == recipe.model_dump(mode="json")
    assert sorted(a.path for a in client.list_artifacts(run_id, "figures")) == ["figures/curves.png",
                                                                              "figures/final_confusion.png"]
    assert json.loads((summary.run_dir / "trackers.json").read_text())["mlflow"] == run_id


def test_wandb_offline_holds_the_scalars_the_recipe_and_the_figures(tracked_run):
    summary, recipe, _ = tracked_run
    (path,) = glob.glob(str(summary.run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    records = wandb_records(path)
    kinds = [r.WhichOneof("record_type") for r in records]
    run = records[kinds.index("run")].run
    assert run.display_name == "digits-run" and run.project == "semiclust"
    logged: dict[str, dict[int, float]] = {}
    for record in (r.history for r, kind in zip(records, kinds) if kind == "history"):
        items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.item}
        for key, value in items.items():
            if not key.startswith("_") and not key.startswith("figures/"):
                logged.setdefault(key, {})[items["_step"]] = float(value)
    assert logged == expected_scalars(summary.run_dir)
    config = {}
    for record in (r for r, kind in zip(records, kinds) if kind in ("run", "config")):
        updates = record.run.config.update if record.WhichOneof("record_type") == "run" else record.config.update
        config.update({u.key: json.loads(u.value_json) for u in updates if not u.key.startswith("_")})
    assert config == recipe.model_dump(mode="json")
    saved = {f.path for r, kind in zip(records, kinds) if kind == "files" for f in r.files.files}
    assert {"curves.png", "final_confusion.png"} <= saved
    assert (summary.run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_tensorboard_from_the_old_flag_holds_the_scalars(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'semiclust[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = api.load_recipe("digits_suave", SHORT + ["runtime.tensorboard=true"])  # a recipe of before loggers
    assert recipe.runtime.active_loggers == ["tensorboard"]
    summary = api.train(recipe, tmp_path / "run")
    events = EventAccumulator(str(summary.run_dir / "tensorboard"))
    events.Reload()
    expected = expected_scalars(summary.run_dir)
    assert set(events.Tags()["scalars"]) == set(expected)
    for key, values in expected.items():
        assert {e.step: e.value for e in events.Scalars(key)} == pytest.approx(values, rel=1e-6), key  # float32
    assert set(events.Tags()["images"]) == {"figures/curves", "figures/final_confusion"}


@pytest.mark.parametrize("name, extra", [("wandb", "wandb"), ("mlflow", "mlflow"), ("tensorboard", "tensorboard")])
def test_a_missing_tracker_is_an_error_naming_its_extra_before_anything_is_written(name, extra, tmp_path, monkeypatch):
    module = "torch.utils.tensorboard" if name == "tensorboard" else name
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` raises ImportError now
    recipe = api.load_recipe("digits_suave", SHORT + [f"runtime.loggers=[{name}]"])
    with pytest.raises(SemiclustError, match=rf"needs the '{name}' package.*pip install 'semiclust\[{extra}\]'"):
        api.train(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(SemiclustError, match=rf"semiclust\[{extra}\]"):
        api.dry_run(recipe)
    if name == "tensorboard":
        with pytest.raises(SemiclustError, match="set runtime.tensorboard: false"):
            api.dry_run(api.load_recipe("digits_suave", ["runtime.tensorboard=true"]))


def test_resume_continues_the_same_mlflow_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'semiclust[mlflow]')")
    from mlflow.tracking import MlflowClient

    from tests.helpers import TINY_RECIPE, make_recipe

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = {**TINY_RECIPE, "runtime": {**TINY_RECIPE["runtime"], "loggers": ["mlflow"], "tracking": {"mlflow_uri": uri}}}
    recipe = make_recipe(raw)
    first = api.train(recipe, tmp_path / "run")
    assert [p.name for p in (first.run_dir / "checkpoints").glob("step_*.pt")] == ["step_000000006.pt"]
    first.checkpoint.unlink()  # as if the run had been killed after its first epoch's checkpoint
    api.train(recipe, tmp_path / "run", resume=True)
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("semiclust").experiment_id])
    assert run.info.run_id == json.loads((first.run_dir / "trackers.json").read_text())["mlflow"]
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert steps == [2, 4, 6, 8, 8, 10, 10, 12, 12]  # steps 7-12 were trained twice, and logged twice


def test_a_tracker_that_cannot_start_is_named_and_the_started_ones_hear_the_run_failed(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install 'semiclust[wandb]')")
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'semiclust[mlflow]')")
    from mlflow.tracking import MlflowClient

    def no_network(**kwargs):
        raise RuntimeError("the W&B server could not be reached")

    monkeypatch.setattr(wandb, "init", no_network)
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = api.load_recipe("digits_suave", SHORT + ["runtime.loggers=[mlflow, wandb]",
                                                      f"runtime.tracking.mlflow_uri={uri}"])
    with pytest.raises(SemiclustError, match="could not start the W&B run .*could not be reached.*wandb_mode: offline"):
        api.train(recipe, tmp_path / "run")
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("semiclust").experiment_id])
    assert run.info.status == "FAILED"


def test_a_tracker_failing_during_the_run_is_dropped_with_a_warning(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'semiclust[mlflow]')")
    from semiclust.engine.loggers import MlflowLogger

    def gone(self, scalars, step):
        raise ConnectionError("the tracking server went away")

    monkeypatch.setattr(MlflowLogger, "log_scalars", gone)
    monkeypatch.chdir(tmp_path)
    recipe = api.load_recipe("digits_suave", SHORT + ["runtime.progress=plain", "runtime.loggers=[mlflow]",
                                                      f"runtime.tracking.mlflow_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    summary = api.train(recipe, tmp_path / "run")
    assert summary.result is not None and len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 7  # 6 train + 1 eval
    assert "MlflowLogger stopped logging (ConnectionError: the tracking server went away)" in capsys.readouterr().out
