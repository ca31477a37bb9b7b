"""What real data needs beyond the release: a validation split held out of training with best.pt chosen on it,
a weight average of the student evaluated and exported beside it, and a head warm-up that leaves a pretrained
backbone bit-unchanged, then trains it, resuming exactly across the switch."""
import copy
import json
import shutil

import pytest
import torch

from semiclust.engine.checkpoint import load_checkpoint
from semiclust.engine.setup import build_core, draw_subset
from semiclust.engine.trainer import train
from semiclust.methods.ema import average_update
from semiclust.config.loader import resolve
from tests.helpers import TINY_RECIPE


def tiny(**sections) -> dict:
    raw = copy.deepcopy(TINY_RECIPE)
    for dotted, value in sections.items():
        section, key = dotted.split("__")
        raw.setdefault(section, {})[key] = value
    return raw


def test_the_validation_split_is_held_out_of_both_streams_and_leaves_the_labeled_subset_unchanged():
    """Validation images are labeled training images outside the subset; no stream ever draws one."""
    recipe = resolve(tiny(data__validation={"per_class": 3}))
    core = build_core(recipe, lambda data: draw_subset(data, recipe), rank=0, world=1)
    held = set(core.validation.indices.tolist())
    assert len(held) == 12 and not held & set(core.subset.indices.tolist())
    assert torch.bincount(core.dataset.train.labels[core.validation.indices], minlength=4).tolist() == [3] * 4
    drawn = {i for step in range(3 * core.unlabeled.batches_per_pass) for i in core.unlabeled.indices(step).tolist()}
    assert len(drawn) == 96 - 12 and not drawn & held  # every other training image, never a validation one
    plain = resolve(tiny())
    assert torch.equal(draw_subset(core.dataset, plain).indices, core.subset.indices)


def test_a_run_with_validation_keeps_best_pt_and_reports_final_and_best(tmp_path):
    """best.pt is the evaluation with the highest validation top-1; the summary holds its and the final test top-1."""
    raw = tiny(data__validation={"per_class": 3}, eval__every_epochs=1, schedule__epochs=4)
    summary = train(resolve(raw), tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if r["type"] == "eval"]
    assert len(evaluations) == 4 and all("validation_top1" in r for r in evaluations)
    best_record = max(evaluations, key=lambda r: (r["validation_top1"], -r["step"]))
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert summary.best.step == best.step == best_record["step"]
    assert summary.best.top1 == best.validation["top1"] == best_record["validation_top1"]
    assert summary.best.test.top1 == best_record["top1"] and summary.result.top1 == evaluations[-1]["top1"]
    saved = json.loads((tmp_path / "run" / "validation_subset.json").read_text())
    labeled = json.loads((tmp_path / "run" / "labeled_subset.json").read_text())
    assert len(saved["indices"]) == 12 and not set(saved["indices"]) & set(labeled["indices"])


def test_the_cli_prints_final_and_best_each_labelled(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from semiclust.cli import app

    raw = tiny(data__validation={"per_class": 3}, eval__every_epochs=1, schedule__epochs=2)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    out = CliRunner().invoke(app, ["train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "final top-1" in text and "best on validation (chosen by the validation split, never by the test" in text
    assert "validation top-1" in text and "test top-1" in text


def test_the_weight_average_is_momentum_times_itself_plus_the_rest_of_the_student():
    """average_update: every parameter and float buffer a <- m a + (1 - m) s; integer buffers copied."""
    torch.manual_seed(0)
    average, student = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    for module in (average, student):
        module.weight.data.normal_()
        module.running_mean.normal_()
    student.num_batches_tracked += 7
    expected = {k: 0.9 * v + 0.1 * student.state_dict()[k] for k, v in average.state_dict().items() if v.is_floating_point()}
    average_update(average, student, 0.9)
    for key, value in expected.items():
        torch.testing.assert_close(average.state_dict()[key], value)
    assert average.num_batches_tracked.item() == 7


def test_suave_with_an_average_evaluates_it_beside_and_exports_it(tmp_path):
    """method.ema: checkpoint holds ema.*, the online network is reported beside, `--network ema` exports the average."""
    from semiclust import api

    raw = tiny(method__ema={"enabled": True, "evaluate": True, "momentum": 0.9})
    summary = train(resolve(raw), tmp_path / "run")
    state = load_checkpoint(summary.checkpoint).method
    ema_keys = [k for k in state if k.startswith("ema.")]
    assert not torch.equal(state["ema.backbone.features.0.weight"], state["student.backbone.features.0.weight"])
    assert ema_keys == ["ema." + k[len("student."):] for k in state if k.startswith("student.")]
    assert set(summary.beside) == {"online"}
    for network, prefix in (("ema", "ema."), ("student", "student.")):
        out = tmp_path / f"{network}.safetensors"
        api.export(summary.checkpoint, out, content="classifier", network=network)
        classifier = api.load_classifier(out)
        weights = classifier.network.state_dict()
        some = [k for k in weights if (prefix + k) in state][:5]
        assert some and all(torch.equal(weights[k], state[prefix + k]) for k in some)


def backbone_of(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("student.backbone.")}


def test_head_warm_up_leaves_the_backbone_bit_unchanged_then_trains_it_and_resumes_exactly(tmp_path):
    """optim.backbone_warmup_epochs 1 at lr scale 0: after epoch 1 the backbone (weights and BatchNorm statistics)
    equals its start, the head moved; after it the backbone trains; resumed mid-warm-up, the run ends bit-identical."""
    raw = tiny(optim__backbone_warmup_epochs=1, optim__backbone_warmup_lr_scale=0.0, schedule__epochs=3,
               checkpoint__every_steps=2, checkpoint__keep_last=100)
    recipe = resolve(raw)
    core = build_core(recipe, lambda data: draw_subset(data, recipe), rank=0, world=1)
    start = backbone_of(core.method.state_dict())
    summary = train(recipe, tmp_path / "run")
    spe = core.numbers.steps_per_epoch
    saved = {int(p.stem.split("_")[1]): p for p in (tmp_path / "run" / "checkpoints").glob("step_*.pt")}
    assert spe in saved and spe - 2 in saved, "the test needs checkpoints at and before the end of the warm-up"
    switch = load_checkpoint(saved[spe]).method
    final = load_checkpoint(summary.checkpoint).method
    assert any(not torch.equal(final[k], v) for k, v in start.items())  # trained after the warm-up
    assert all(torch.equal(switch[k], v) for k, v in start.items())
    assert any(not torch.equal(switch[k], core.method.state_dict()[k]) for k in switch if k.startswith("student.head."))
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "run", resumed)
    (resumed / "checkpoints" / "final.pt").unlink()
    for path in (resumed / "checkpoints").glob("step_*.pt"):
        if int(path.stem.split("_")[1]) != spe - 2:
            path.unlink()
    again = load_checkpoint(train(recipe, resumed, resume=True).checkpoint).method
    for key, value in final.items():
        assert torch.equal(again[key], value), f"{key} differs after resuming across the switch"


def test_a_scaled_backbone_lr_is_applied_to_the_backbone_groups_only():
    """lr scale 0.1 during the warm-up: backbone groups take 0.1 x the lr, the head and prototypes the lr itself."""
    from semiclust.engine.optim import build_optimizer, set_lr_and_decay

    recipe = resolve(tiny(optim__backbone_warmup_epochs=1, optim__backbone_warmup_lr_scale=0.1))
    core = build_core(recipe, lambda data: draw_subset(data, recipe), rank=0, world=1)
    optimizer = build_optimizer(core.method.student, recipe.optim, lr=0.5)
    set_lr_and_decay(optimizer, 0.5, 1e-4, backbone_scale=0.1)
    backbone = {id(p) for p in core.method.student.backbone.parameters()}
    for group in optimizer.param_groups:
        in_backbone = {id(p) in backbone for p in group["params"]}
        assert len(in_backbone) == 1
        assert group["lr"] == pytest.approx(0.05 if in_backbone.pop() else 0.5)
