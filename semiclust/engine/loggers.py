"""Experiment trackers beside metrics.jsonl: TensorBoard, Weights & Biases and MLflow, behind one interface.

Each logger takes the run's scalars at a step (the figures of every metrics.jsonl record), its config (the
resolved recipe), files (the final curves and confusion PNGs) and a close with the run's outcome. Each
tracker is an optional extra, imported only when a recipe lists it (`runtime.loggers`); the run is named
after its directory, and W&B / MLflow run ids are kept in <run>/trackers.json so that `--resume`
continues the same tracker run. Only rank 0 opens loggers (engine/reporter.py).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Protocol

import yaml

from semiclust.engine.run_dir import RunFiles
from semiclust.errors import SemiclustError
from semiclust.extras import require
from semiclust.config.schema import Recipe, Tracking
from semiclust.storage.atomic import write_text
from semiclust.config.validation import flat_values


class Logger(Protocol):
    """What the reporter asks of a tracker."""

    def log_config(self, config: dict[str, Any]) -> None: ...

    def log_scalars(self, scalars: dict[str, float], step: int) -> None: ...

    def log_file(self, path: Path, step: int) -> None: ...

    def close(self, outcome: str) -> None: ...  # finished, stopped (a signal; --resume continues) or failed


def import_tracker(name: str, enabled_by_flag: bool = False):
    """The package behind logger `name`, or an error naming its extra."""
    module, package = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
                       "mlflow": ("mlflow", "mlflow")}[name]
    fix = "set runtime.tensorboard: false" if enabled_by_flag else f"remove {name} from runtime.loggers"
    return require(module, name, f"runtime.loggers: {name}", fix, package)


class TensorBoardLogger:
    """<run>/tensorboard: scalars, the recipe as text, PNG files as images."""

    def __init__(self, files: RunFiles, enabled_by_flag: bool):
        self.writer = import_tracker("tensorboard", enabled_by_flag).SummaryWriter(str(files.tensorboard))

    def log_config(self, config: dict[str, Any]) -> None:
        self.writer.add_text("recipe", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```")

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def log_file(self, path: Path, step: int) -> None:
        if path.suffix == ".png":
            import numpy as np
            from PIL import Image

            self.writer.add_image(f"figures/{path.stem}", np.asarray(Image.open(path).convert("RGB")), step,
                                  dataformats="HWC")

    def close(self, outcome: str) -> None:
        self.writer.close()


class WandbLogger:
    """A W&B run in <run>/wandb (offline with tracking.wandb_mode: offline): history, config, files."""

    def __init__(self, files: RunFiles, tracking: Tracking, run_id: str | None):
        wandb = import_tracker("wandb")
        self.wandb = wandb
        try:  # console off: the progress display is semiclust's, not a W&B log
            self.run = wandb.init(project=tracking.project, name=files.root.resolve().name, dir=str(files.root),
                                  mode=tracking.wandb_mode, id=run_id, resume="allow" if run_id else None,
                                  settings=wandb.Settings(console="off"))
        except Exception as err:  # wandb's own errors: not logged in, no network in online mode, ...
            raise tracker_error("W&B", err, "set runtime.tracking.wandb_mode: offline, or run `wandb login`") from None
        self.id = self.run.id

    def log_config(self, config: dict[str, Any]) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def log_file(self, path: Path, step: int) -> None:
        self.run.save(str(path), base_path=str(path.parent), policy="now")
        if path.suffix == ".png":
            self.run.log({f"figures/{path.stem}": self.wandb.Image(str(path))}, step=step)

    def close(self, outcome: str) -> None:
        self.run.finish(exit_code=0 if outcome == "finished" else 1)


class MlflowLogger:
    """An MLflow run in the experiment `tracking.project`: metrics, the recipe as params and recipe.yaml, files."""

    def __init__(self, files: RunFiles, tracking: Tracking, run_id: str | None):
        mlflow = import_tracker("mlflow")
        self.entities = mlflow.entities
        try:
            self.client = mlflow.tracking.MlflowClient(tracking_uri=tracking.mlflow_uri)
            experiment = self.client.get_experiment_by_name(tracking.project)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(tracking.project)
            if run_id is None:
                run_id = self.client.create_run(experiment_id, run_name=files.root.resolve().name,
                                                tags={"semiclust.run_dir": str(files.root.resolve())}).info.run_id
            else:
                self.client.update_run(run_id, status="RUNNING")
        except Exception as err:  # MlflowException, connection errors, a refused store
            raise tracker_error("MLflow", err, "check runtime.tracking.mlflow_uri (or MLFLOW_TRACKING_URI)") from None
        self.id = run_id

    def log_config(self, config: dict[str, Any]) -> None:
        params = [self.entities.Param(mlflow_key(key), str(value)[:500]) for key, value in flat_values(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.id, params=params[start:start + 100])
        self.client.log_text(self.id, yaml.safe_dump(config, sort_keys=False), "recipe.yaml")

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.id, metrics=[self.entities.Metric(k, v, now, step) for k, v in scalars.items()])

    def log_file(self, path: Path, step: int) -> None:
        self.client.log_artifact(self.id, str(path), artifact_path="figures")

    def close(self, outcome: str) -> None:
        self.client.set_terminated(self.id, {"finished": "FINISHED", "stopped": "KILLED"}.get(outcome, "FAILED"))


def mlflow_key(key: str) -> str:
    """A dotted recipe key as MLflow allows it (no brackets): data.unlabeled.crops[0].size -> data.unlabeled.crops.0.size."""
    return key.replace("[", ".").replace("]", "")


def tracker_error(tracker: str, err: Exception, fix: str) -> SemiclustError:
    first = str(err).strip().splitlines()[0][:300] if str(err).strip() else "no message"
    return SemiclustError(f"could not start the {tracker} run ({type(err).__name__}: {first}); {fix}.")


def check_installed(recipe: Recipe) -> None:
    """Fail before anything is written when a logger the recipe asks for is not installed."""
    for name in recipe.runtime.active_loggers:
        import_tracker(name, name == "tensorboard" and "tensorboard" not in recipe.runtime.loggers)


def open_loggers(files: RunFiles, recipe: Recipe, resume: bool) -> list[Logger]:
    """The recipe's loggers, each told the recipe; W&B and MLflow continue their run on --resume."""
    runtime = recipe.runtime
    saved = json.loads(files.trackers.read_text()) if resume and files.trackers.is_file() else {}
    loggers: list[Logger] = []
    try:
        for name in runtime.active_loggers:
            if name == "tensorboard":
                loggers.append(TensorBoardLogger(files, "tensorboard" not in runtime.loggers))
            else:
                kind = WandbLogger if name == "wandb" else MlflowLogger
                loggers.append(kind(files, runtime.tracking, saved.get(name)))
                saved[name] = loggers[-1].id
    except BaseException:  # one tracker could not start: the ones already started hear that the run failed
        for logger in loggers:
            logger.close("failed")
        raise
    if saved:
        write_text(files.trackers, json.dumps(saved, indent=1) + "\n")
    config = recipe.model_dump(mode="json")
    for logger in loggers:
        logger.log_config(config)
    return loggers
