"""`semiclust export --format onnx`: onnxruntime gives PyTorch's logits for a CNN and a ViT at any batch size,
the file carries the export's metadata, and `semiclust predict` runs it like the safetensors classifier."""
import sys

import pytest
import torch
from PIL import Image

from semiclust import api
from semiclust.data.datasets import build_dataset
from semiclust.engine.checkpoint import classifier_network, load_checkpoint
from semiclust.errors import SemiclustError

TOLERANCE = 1e-4  # max abs logit difference allowed between onnxruntime and PyTorch


def onnx_runtime():
    pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install 'semiclust[onnx]')")
    return pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'semiclust[onnx]')")


@pytest.mark.parametrize("run_name", ["trained_run", "vit_run"])  # test_resnet (a CNN) and test_vit
def test_onnxruntime_gives_the_logits_of_pytorch_at_any_batch_size(run_name, request, tmp_path):
    ort = onnx_runtime()
    run = request.getfixturevalue(run_name)
    out = tmp_path / "model.onnx"
    meta = api.export(run.checkpoint, out, format="onnx")
    network, recipe = classifier_network(load_checkpoint(run.checkpoint))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    differences = []
    for batch in (1, 7):  # the batch axis is dynamic: neither is the size the graph was traced with (2)
        images = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = network.eval()(images) / recipe.method.temperature
        logits = torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])
        assert logits.shape == expected.shape == (batch, 4)
        differences.append((logits - expected).abs().max().item())
    print(f"{run_name} ({meta['architecture']}): max abs logit difference onnxruntime - PyTorch {max(differences):.2e}")
    assert max(differences) <= TOLERANCE
    stored = dict(session.get_modelmeta().custom_metadata_map)
    assert stored == meta and stored["content"] == "classifier" and stored["file_format"] == "onnx"
    assert stored["eval_view"] == '{"size": 16, "resize": null, "interpolation": "bilinear"}'


def test_predict_runs_an_onnx_export_like_the_safetensors_classifier(trained_run, tmp_path):
    onnx_runtime()
    api.export(trained_run.checkpoint, tmp_path / "model.onnx", format="onnx")
    api.export(trained_run.checkpoint, tmp_path / "model.safetensors", content="classifier")
    dataset = build_dataset("synthetic", {"num_classes": 4, "size": 16, "channels": 3, "test_per_class": 2})
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(dataset.test.images[i].permute(1, 2, 0).numpy()).save(folder / f"img{i}.png")
    from_onnx = api.predict(tmp_path / "model.onnx", [folder], top_k=4)
    from_torch = api.predict(tmp_path / "model.safetensors", [folder], top_k=4)
    assert [p.classes for p in from_onnx] == [p.classes for p in from_torch]
    for a, b in zip(from_onnx, from_torch):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)
    assert api.load_classifier(tmp_path / "model.onnx").classes == dataset.classes


def test_damaged_or_foreign_onnx_files_are_clear_errors(trained_run, tmp_path):
    onnx_runtime()
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(SemiclustError, match="could not be read as ONNX"):
        api.load_classifier(garbage)
    with pytest.raises(SemiclustError, match="must end in .onnx"):
        api.export(trained_run.checkpoint, tmp_path / "model.safetensors", format="onnx")
    with pytest.raises(SemiclustError, match="cannot hold --content backbone; drop --content"):
        api.export(trained_run.checkpoint, tmp_path / "model.onnx", content="backbone", format="onnx")
    with pytest.raises(SemiclustError, match="does not exist"):
        api.load_classifier(tmp_path / "missing.onnx")


def test_without_the_onnx_extra_the_error_names_it(trained_run, tmp_path, monkeypatch):
    """Runs everywhere (CI has no onnx): a missing package is a one-paragraph error with the pip command."""
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(SemiclustError, match=r"needs the 'onnx' package.*pip install 'semiclust\[onnx\]'"):
        api.export(trained_run.checkpoint, tmp_path / "model.onnx", format="onnx")
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(SemiclustError, match=r"needs the 'onnxruntime' package.*semiclust\[onnx\]"):
        api.load_classifier(tmp_path / "model.onnx")
