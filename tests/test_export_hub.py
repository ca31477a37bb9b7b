"""`semiclust export --format hub`: a process that imports only timm and torch loads the folder with
`timm.create_model('local-dir:...')` and gets semiclust's features; the model card says what the model is."""
import json

import pytest
import torch
import yaml

from semiclust import api
from semiclust.engine.checkpoint import classifier_network, load_checkpoint
from semiclust.errors import SemiclustError
from semiclust.export.safetensors import recipe_sha256
from tests.helpers import run_python

ONLY_TIMM = """
import json, sys, timm, torch
model = timm.create_model('local-dir:hub', pretrained=True).eval()
with torch.no_grad():
    torch.save(model(torch.load('images.pt')), 'features.pt')
assert not [name for name in sys.modules if name.startswith('semiclust')], 'semiclust was imported'
print(json.dumps([list(model.pretrained_cfg['mean']), list(model.pretrained_cfg['input_size'])]))
"""


@pytest.mark.parametrize("run_name, architecture, features", [("trained_run", "test_resnet", 96), ("vit_run", "test_vit", 64)])
def test_plain_timm_loads_the_folder_with_semiclusts_features(run_name, architecture, features, request, tmp_path):
    run = request.getfixturevalue(run_name)
    meta = api.export(run.checkpoint, tmp_path / "hub", format="hub")
    state = load_checkpoint(run.checkpoint)
    network, _ = classifier_network(state)
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    torch.save(images, tmp_path / "images.pt")
    result = run_python(ONLY_TIMM, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "features.pt"), network.eval().backbone(images))
    assert json.loads(result.stdout) == [state.mean, [3, 16, 16]]  # timm's data config is the evaluation view's
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert config["architecture"] == architecture and config["num_classes"] == 0 and config["num_features"] == features
    assert config["pretrained_cfg"]["mean"] == state.mean and config["pretrained_cfg"]["input_size"] == [3, 16, 16]
    assert sorted(p.name for p in (tmp_path / "hub").iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                                    "recipe.yaml"]
    assert yaml.safe_load((tmp_path / "hub" / "recipe.yaml").read_text()) == state.recipe
    assert meta["recipe_sha256"] == recipe_sha256(state.recipe) and meta["file_format"] == "hub"


def test_the_model_card_names_method_data_subset_result_protocol_and_version(trained_run, tmp_path):
    api.export(trained_run.checkpoint, tmp_path / "hub", format="hub")
    card = (tmp_path / "hub" / "README.md").read_text()
    state = load_checkpoint(trained_run.checkpoint)
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "timm" and "suave" in front["tags"]
    for expected in (f"top-1 **{state.eval['top1']:.2f}%**", f"{state.eval['n']} images of the `test` split",
                     "**final** step 6 (not the best evaluation during training)", "prototype classifier of the trained network",
                     state.labeled_sha256, recipe_sha256(state.recipe), "semiclust 0.1.0", "`synthetic`",
                     "8 training images", "timm.create_model('local-dir:DIR', pretrained=True)", "SwAV + labels"):
        assert expected in card, expected
    assert "import semiclust" not in card  # a timm architecture needs nothing of semiclust


def test_semiclusts_own_backbones_load_from_the_folder_after_importing_semiclust_models(tinyconv_run, tmp_path):
    import timm

    import semiclust.models  # noqa: F401  (what the card tells the reader to do first)

    api.export(tinyconv_run.checkpoint, tmp_path / "hub", format="hub")
    assert "import semiclust.models" in (tmp_path / "hub" / "README.md").read_text()
    model = timm.create_model(f"local-dir:{tmp_path / 'hub'}", pretrained=True).eval()
    network, _ = classifier_network(load_checkpoint(tinyconv_run.checkpoint))
    images = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(images), network.eval().backbone(images))


def test_the_folder_is_written_only_where_nothing_else_would_be_replaced(trained_run, tmp_path):
    api.export(trained_run.checkpoint, tmp_path / "hub", format="hub")
    api.export(trained_run.checkpoint, tmp_path / "hub", format="hub")  # a previous hub export is replaced
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(SemiclustError, match="already holds files and is not a previous"):
        api.export(trained_run.checkpoint, other, format="hub")
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    with pytest.raises(SemiclustError, match="is a file"):
        api.export(trained_run.checkpoint, other / "notes.txt", format="hub")
    with pytest.raises(SemiclustError, match="cannot hold --content classifier"):
        api.export(trained_run.checkpoint, tmp_path / "hub2", content="classifier", format="hub")
