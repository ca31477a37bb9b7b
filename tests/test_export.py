"""Export to safetensors: plain timm loads the backbone with the same features; the classifier round-trips."""
import json

import pytest
import timm
import torch

from semiclust import load_classifier
from semiclust.engine.checkpoint import load_checkpoint
from semiclust.errors import SemiclustError
from semiclust.engine.checkpoint import classifier_network
from semiclust.export import export_checkpoint, recipe_sha256


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
    assert json.loads(meta["classes"]) == state["classes"] and meta["recipe_sha256"] == recipe_sha256(state["recipe"])
    assert meta["labeled_sha256"] == state["labeled_sha256"] and json.loads(meta["mean"]) == state["mean"]
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
        expected = network(images) / state["recipe"]["method"]["temperature"]
    assert torch.equal(classifier(images), expected)
    assert classifier.classes == state["classes"] and classifier.view.size == 16


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
