"""The training loop end to end on generated data, checkpoints, and failure handling."""
import copy
import json

import pytest
import torch

from semiclust.engine import checkpoint as checkpoint_module
from semiclust.engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from semiclust.engine.trainer import train
from semiclust.errors import SemiclustError
from semiclust.storage.atomic import WriteFailed
from semiclust.methods.base import Method, StepResult
from semiclust.config.loader import resolve as validate
from tests.helpers import TINY_RECIPE, make_recipe, poison_loss_at


def recipe_for(method_name: str, **changes):
    """The tiny recipe with `method_name`; each keyword merges a dict into that top-level section."""
    raw = copy.deepcopy(TINY_RECIPE)
    raw["method"]["name"] = method_name
    for key, value in changes.items():
        raw[key] = {**raw.get(key, {}), **value}
    return validate(raw)


@pytest.mark.parametrize("method", ["suave", "daino", "swav", "dino", "supervised"])
def test_every_method_trains_and_writes_its_artefacts(tmp_path, method):
    summary = train(recipe_for(method), tmp_path / method)
    run = tmp_path / method
    assert (run / "recipe.yaml").exists() and (run / "labeled_subset.json").exists()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in records if r["type"] == "train"]
    assert train_rows and all(r["loss"] is not None and r["loss"] > 0 for r in train_rows)
    evals = [r for r in records if r["type"] == "eval"]
    assert evals[-1]["top1"] == summary.result.top1 and evals[-1]["n"] == 32
    assert evals[-1]["matching"] == ("hungarian" if method in ("swav", "dino") else "identity")
    state = torch.load(summary.checkpoint, weights_only=True)  # plain tensors and Python values only
    assert state["step"] == summary.steps and state["recipe"]["method"]["name"] == method


def test_learns_the_synthetic_classes(tmp_path):
    recipe = recipe_for("suave", schedule={"epochs": 15})
    assert train(recipe, tmp_path / "run").result.top1 >= 90.0


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(Checkpoint(step=1, method={"value": torch.tensor([1.0])}), path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", crash)
    with pytest.raises(WriteFailed, match="could not write .*c.pt': disk full"):
        save_checkpoint(Checkpoint(step=2, method={"value": torch.tensor([2.0])}), path)
    assert load_checkpoint(path).method["value"].item() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(Checkpoint(method={"value": torch.zeros(1000)}), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(SemiclustError, match="truncated, corrupt"):
        load_checkpoint(path)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(SemiclustError, match="not a semiclust checkpoint"):
        load_checkpoint(other)


def test_non_finite_loss_stops_with_step_parts_and_last_checkpoint(tmp_path, monkeypatch):
    poison_loss_at(monkeypatch, 8)
    with pytest.raises(SemiclustError) as info:
        train(recipe_for("suave", schedule={"epochs": 3}), tmp_path / "run")
    message = str(info.value)
    assert info.value.exit_code == 1
    assert "non-finite at step 8" in message and "loss_labeled" in message and "step_000000006.pt" in message
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "step_000000006.pt").step == 6  # 6 steps per epoch


def test_resume_requires_the_same_recipe(tmp_path):
    train(recipe_for("suave"), tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "final.pt").rename(tmp_path / "final.pt")
    changed = copy.deepcopy(TINY_RECIPE)
    changed["seed"] = 3
    with pytest.raises(SemiclustError, match=r"differs .* in 1 key\(s\) that would change what was already computed: "
                                             r"seed: 0 vs 3"):
        train(validate(changed), tmp_path / "run", resume=True)
    (tmp_path / "final.pt").rename(tmp_path / "run" / "checkpoints" / "final.pt")
    with pytest.raises(SemiclustError, match="already finished"):
        train(recipe_for("suave"), tmp_path / "run", resume=True)


@pytest.mark.slow
def test_digits_suave_beats_chance_by_far_in_a_short_run(tmp_path):
    """A 15-epoch digits run (~15 s): the prototype classifier must already be well above 80%."""
    from semiclust.config.loader import load_recipe

    recipe = load_recipe("digits_suave", ["schedule.epochs=15", "eval.every_epochs=0", "runtime.progress=none"])
    assert train(recipe, tmp_path / "run").result.top1 >= 80.0


def test_a_bounded_number_of_non_finite_steps_can_be_skipped(tmp_path, monkeypatch):
    original = Method.training_step

    def poisoned(self, batch, step, student=None):
        out = original(self, batch, step, student)
        if step in (3, 7):
            self.queue.embeddings.fill_(float("nan"))  # what NaN embeddings pushed by a bad step would do
            return StepResult(out.loss * float("inf"), out.parts)
        return out

    monkeypatch.setattr(Method, "training_step", poisoned)
    with_queue = {"method": {"queue": {"length": 32}}}
    summary = train(recipe_for("suave", runtime={"skip_nonfinite_steps": 2}, **with_queue), tmp_path / "ok")
    state = torch.load(summary.checkpoint, weights_only=True)
    assert state["skipped_steps"] == 2
    assert torch.isfinite(state["method"]["queue.embeddings"]).all()  # the skipped steps left no trace
    with pytest.raises(SemiclustError, match="non-finite at step 7 after skipping 1 bad step"):
        train(recipe_for("suave", runtime={"skip_nonfinite_steps": 1}, **with_queue), tmp_path / "stops")


def test_gradient_clipping_bounds_the_update(tmp_path):
    """One real training step (engine/step.py, the only update path) with plain SGD at lr 1: the update
    is minus the clipped gradient, so its norm is at most the clipping bound."""
    from semiclust.engine.run_dir import RunFiles
    from semiclust.engine.setup import build_run
    from semiclust.engine.step import train_step

    recipe = recipe_for("suave", optim={"lr": 1.0, "momentum": 0.0, "weight_decay": 0.0, "clip_grad_norm": 1e-3})
    run = build_run(recipe, RunFiles(tmp_path), torch.device("cpu"), resume=False)
    parameters = run.method.trainable_parameters()
    before = [p.detach().clone() for p in parameters]
    assert train_step(run, 0).finite
    # prototypes are renormalised after the step, so measure the other parameters' update
    moved = [(p.detach() - b).flatten() for p, b in zip(parameters, before) if p is not run.method.student.prototypes.weight]
    assert 0 < torch.cat(moved).norm() <= 1e-3 * (1 + 1e-4)


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """Supervised, BatchNorm-free, without random augmentation or mixup: the same global batch B in two
    accumulated micro-batches of B/2 takes exactly the stream positions of one batch of B, so the weights agree."""
    fixed_view = {"size": 8, "scale": [1.0, 1.0], "ratio": [1.0, 1.0], "flip": 0.0}
    raw = copy.deepcopy(TINY_RECIPE)
    raw["model"]["backbone"]["kwargs"]["norm"] = "none"
    raw["model"]["head"]["batchnorm"] = False
    raw["method"].update({"name": "supervised", "mixup": {"enabled": False}})
    raw["data"]["labeled"] = fixed_view
    raw["data"]["labels"] = {"per_class": 4}

    def run(unlabeled: int, labeled: int, accumulate: int, folder: str):
        changed = copy.deepcopy(raw)
        changed["data"]["batch"] = {"unlabeled": unlabeled, "labeled": labeled}
        changed["optim"]["accumulate_steps"] = accumulate
        summary = train(validate(changed), tmp_path / folder)
        return summary, torch.load(summary.checkpoint, weights_only=True)

    one, one_state = run(16, 16, 1, "one")
    two, two_state = run(16, 16, 2, "two")  # batches are per optimiser step: 8 + 8 per micro-batch
    assert one.steps == two.steps == 12  # 96 images / 16 per optimiser step x 2 epochs
    for name, value in one_state["method"].items():
        torch.testing.assert_close(two_state["method"][name], value, rtol=1e-5, atol=1e-6)


def test_resume_accepts_a_saved_recipe_from_before_a_key_was_added(tmp_path):
    """recipe.yaml of an older version lacks keys added since (with defaults); it means the same recipe."""
    import yaml

    from semiclust.engine.run_dir import RunFiles, decide_resume
    from semiclust.config.validation import dump_yaml

    recipe = make_recipe()
    files = RunFiles(tmp_path)
    old = yaml.safe_load(dump_yaml(recipe))
    del old["model"]["grad_checkpointing"], old["runtime"]["loggers"], old["runtime"]["tracking"]
    del old["data"]["max_image_pixels"]
    files.recipe.write_text(yaml.safe_dump(old))
    assert decide_resume(files, recipe).changes == {}  # the same recipe
    files.recipe.write_text(yaml.safe_dump({**old, "seed": 7}))
    with pytest.raises(SemiclustError, match="the recipe differs.*seed: 7 vs 0"):
        decide_resume(files, recipe)


def test_resume_accepts_a_saved_recipe_whose_assignment_section_predates_its_prior_keys(tmp_path):
    """A run directory written before method.assignment gained prior, prior_floor, ... (a section checked by the
    registered assignment) means the same recipe: the saved section takes the new keys' defaults, as live ones do."""
    import yaml

    from semiclust.engine.run_dir import RunFiles, decide_resume
    from semiclust.config.validation import dump_yaml

    recipe = make_recipe()
    files = RunFiles(tmp_path)
    old = yaml.safe_load(dump_yaml(recipe))
    for key in ("prior", "prior_floor", "prior_momentum", "prior_temperature"):
        del old["method"]["assignment"][key]
    files.recipe.write_text(yaml.safe_dump(old))
    assert decide_resume(files, recipe).changes == {}
    old["method"]["assignment"]["epsilon"] = 0.5
    files.recipe.write_text(yaml.safe_dump(old))
    with pytest.raises(SemiclustError, match="method.assignment.epsilon: 0.5 vs 0.05"):
        decide_resume(files, recipe)
