"""Export to safetensors: plain timm loads the backbone with the same features; the classifier round-trips."""
import json

import pytest
import timm
import torch

from semiclust import load_classifier
from semiclust.engine.checkpoint import load_checkpoint
from semiclust.errors import SemiclustError
from semiclust.engine.checkpoint import classifier_network
from semiclust.export.safetensors import export_checkpoint, recipe_sha256
from tests.helpers import run_python


@pytest.fixture(scope="module")
def trained(trained_run):
    state = load_checkpoint(trained_run.checkpoint)
    network, _ = classifier_network(state)
    return trained_run.checkpoint, state, network.eval()


def test_exported_backbone_loads_in_plain_timm_with_the_same_features(trained, tmp_path):
    checkpoint, state, network = trained
    out = tmp_path / "backbone.safetensors"
    meta = export_checkpoint(checkpoint, out, "backbone")
    model = timm.create_model(meta["architecture"], pretrained=True, num_classes=0,
                              pretrained_cfg_overlay=dict(file=str(out)), **json.loads(meta["timm_kwargs"])).eval()
    fresh = timm.create_model(meta["architecture"], num_classes=0).eval()  # what random weights would give
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(images), network.backbone(images))
        assert not torch.allclose(fresh(images), network.backbone(images))
    assert json.loads(meta["classes"]) == state.classes and meta["recipe_sha256"] == recipe_sha256(state.recipe)
    assert meta["labeled_sha256"] == state.labeled_sha256 and json.loads(meta["mean"]) == state.mean
    assert json.loads(meta["input_size"]) == [3, 16, 16] and meta["content"] == "backbone"


def test_small_image_backbones_load_through_timm_too(tmp_path):
    from semiclust.models.backbones import create_backbone

    backbone = create_backbone("tinyconv", {"widths": [4, 8]}, in_chans=1).eval()
    from safetensors.torch import save_file

    save_file(backbone.state_dict(), str(tmp_path / "tiny.safetensors"))
    again = timm.create_model("tinyconv", pretrained=True, num_classes=0, widths=[4, 8], in_chans=1,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "tiny.safetensors"))).eval()
    images = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(again(images), backbone(images))
    with pytest.raises(SemiclustError, match="no published weights"):
        timm.create_model("tinyconv", pretrained=True)


def test_whole_classifier_round_trips_with_the_same_logits(trained, tmp_path):
    checkpoint, state, network = trained
    out = tmp_path / "classifier.safetensors"
    export_checkpoint(checkpoint, out, "classifier")
    classifier = load_classifier(out)
    images = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = network(images) / state.recipe["method"]["temperature"]
    assert torch.equal(classifier(images), expected)
    assert classifier.classes == state.classes and classifier.view.size == 16


def test_corrupt_truncated_or_backbone_only_files_are_clear_errors(trained, tmp_path):
    checkpoint, _, _ = trained
    out = tmp_path / "classifier.safetensors"
    export_checkpoint(checkpoint, out, "classifier")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    with pytest.raises(SemiclustError, match="could not be read as safetensors.*truncated, corrupt"):
        load_classifier(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(SemiclustError, match="could not be read as safetensors"):
        load_classifier(garbage)
    backbone = tmp_path / "backbone.safetensors"
    export_checkpoint(checkpoint, backbone, "backbone")
    with pytest.raises(SemiclustError, match="holds only a backbone"):
        load_classifier(backbone)
    with pytest.raises(SemiclustError, match="must end in .safetensors"):
        export_checkpoint(checkpoint, tmp_path / "model.pt", "classifier")
    with pytest.raises(SemiclustError, match="does not exist"):
        load_classifier(tmp_path / "missing.safetensors")


def printed_timm_code(capsys, checkpoint, out) -> tuple[str, list[str]]:
    """`semiclust export` of the backbone: everything it printed, and the code lines it gave for timm."""
    from semiclust.cli import main

    with pytest.raises(SystemExit) as done:
        main(["export", "-c", str(checkpoint), "--out", str(out)])
    printed = capsys.readouterr().out
    assert done.value.code in (0, None), printed
    return printed, [line.strip() for line in printed.split("load it with timm:", 1)[1].strip().splitlines()]


FEATURES = """
import torch
model = model.eval()
with torch.no_grad():
    torch.save(model(torch.load('images.pt')), 'features.pt')
"""


@pytest.mark.parametrize("run_name, small", [("tinyconv_run", True), ("trained_run", False)])
def test_the_printed_timm_code_loads_the_backbone_in_a_fresh_process(run_name, small, request, tmp_path, capsys):
    """The hint `semiclust export` prints is run as it is, in a process that imports only what it says; for
    semiclust's own backbones it must say to import semiclust.models (without it timm does not know the name)."""
    run = request.getfixturevalue(run_name)
    printed, code = printed_timm_code(capsys, run.checkpoint, tmp_path / "backbone.safetensors")
    assert ("import semiclust.models" in printed and "Unknown model" in printed) == small
    network, _ = classifier_network(load_checkpoint(run.checkpoint))
    channels = network.backbone.state_dict()[next(iter(network.backbone.state_dict()))].shape[1]
    images = torch.randn(3, channels, 16, 16, generator=torch.Generator().manual_seed(2))
    torch.save(images, tmp_path / "images.pt")
    result = run_python("\n".join(code) + FEATURES, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "features.pt"), network.eval().backbone(images))
    if small:  # the import the hint adds is needed: without it timm does not know the architecture
        without = run_python("\n".join(line for line in code if "semiclust" not in line) + FEATURES, tmp_path)
        assert without.returncode != 0 and "Unknown model" in without.stderr
