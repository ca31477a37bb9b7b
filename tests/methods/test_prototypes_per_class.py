"""Several prototypes per class (`model.head.prototypes_per_class: k`, issue 24): the class probability is the
sum of its k prototypes' probabilities, unlabeled targets spread the class marginal evenly over each group, the
labeled loss is the class log-likelihood, k = 1 is the release bit for bit, and every consumer of a classifier
(evaluation, export, predict, ONNX) sees C classes. The maths is checked against independent numpy."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from semiclust import api
from semiclust.assign import build_assigner
from semiclust.assign.sinkhorn import SinkhornSpec
from semiclust.assign.center_sharpen import CenterSharpenSpec
from semiclust.engine.checkpoint import classifier_network, load_checkpoint
from semiclust.engine.trainer import train
from semiclust.errors import SemiclustError
from semiclust.models.network import Network, class_log_probabilities, class_scores
from semiclust.config.loader import resolve
from tests.helpers import TINY_RECIPE


def numpy_class_probabilities(scores: np.ndarray, k: int, tau: float) -> np.ndarray:
    """softmax over all C * k prototypes, then each class's k consecutive probabilities summed."""
    logits = scores / tau
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    return p.reshape(len(p), -1, k).sum(axis=2)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_class_scores_give_the_summed_probabilities_of_each_group(k):
    scores = torch.rand(7, 4 * k, generator=torch.Generator().manual_seed(k)) * 2 - 1  # cosines
    pooled = class_scores(scores, k, 0.1)
    assert pooled.shape == (7, 4)
    expected = numpy_class_probabilities(scores.double().numpy(), k, 0.1)
    assert np.allclose(torch.softmax(pooled.double() / 0.1, dim=1).numpy(), expected, atol=1e-6)
    assert np.allclose(class_log_probabilities(scores, k, 0.1).double().exp().numpy(), expected, atol=1e-6)
    assert np.allclose(expected.sum(axis=1), 1.0)


def test_one_prototype_per_class_is_the_release_bit_for_bit():
    scores = torch.randn(5, 4)
    assert class_scores(scores, 1, 0.1) is scores  # the same tensor: no arithmetic at all
    torch.manual_seed(0)
    default = Network(resolve(copy.deepcopy(TINY_RECIPE)).model, 1, 4, "unit")
    raw = copy.deepcopy(TINY_RECIPE)
    raw["model"]["head"]["prototypes_per_class"] = 1
    torch.manual_seed(0)
    explicit = Network(resolve(raw).model, 1, 4, "unit")
    images = torch.randn(3, 1, 8, 8)
    for a, b in zip(default.state_dict().values(), explicit.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(default.eval()(images), explicit.eval()(images))
    assert torch.equal(default(images), default.prototype_scores(images))


@pytest.mark.parametrize("k", [2, 3])
def test_sinkhorn_spreads_the_class_marginal_evenly_over_each_group(k):
    """Uniform: every prototype gets B / (C k) of the batch; a labeled prior: class c gets B p_c, split evenly."""
    classes, batch = 4, 240
    scores = torch.rand(batch, classes * k, generator=torch.Generator().manual_seed(1)) * 2 - 1
    uniform = build_assigner(SinkhornSpec(iterations=50), classes, k)
    q = uniform([scores], 0)[0]
    assert q.shape == (batch, classes * k) and torch.allclose(q.sum(1), torch.ones(batch), atol=1e-4)
    assert torch.allclose(q.sum(0), torch.full((classes * k,), batch / (classes * k)), rtol=1e-3)
    labeled = build_assigner(SinkhornSpec(iterations=50, prior="labeled", prior_floor=0.0), classes, k)
    counts = torch.tensor([1.0, 2.0, 3.0, 4.0])
    labeled.prior.use_counts(counts)
    q = labeled([scores], 0)[0]
    per_prototype = (batch * counts / counts.sum()).repeat_interleave(k) / k
    assert torch.allclose(q.sum(0), per_prototype, rtol=1e-3)
    assert torch.allclose(q.sum(0).reshape(classes, k).sum(1), batch * counts / counts.sum(), rtol=1e-3)


def test_the_estimated_prior_and_the_center_are_per_group():
    k, classes = 3, 4
    assigner = build_assigner(CenterSharpenSpec(prior="estimated", prior_momentum=0.0), classes, k)
    assert assigner.center.shape == (1, classes * k) and assigner.prior.estimate.shape == (classes,)
    scores = torch.randn(16, classes * k)
    targets = assigner([scores], 0)[0]
    assert targets.shape == (16, classes * k)
    expected = numpy_class_probabilities(scores.double().numpy(), k, 0.1).mean(axis=0)
    assert np.allclose(assigner.prior.estimate.numpy(), expected, atol=1e-6)
    assert torch.allclose(assigner.prior.log_prior().exp().reshape(classes, k).sum(1), assigner.prior.estimate,
                          atol=1e-6)


def test_the_labeled_loss_is_the_class_log_likelihood(monkeypatch):
    """Suave's labeled part with k = 2 equals -mean log(sum of the labeled class's prototype probabilities),
    computed here independently (numpy) from the labeled rows' prototype scores the step produced."""
    from semiclust.data.batches import StepBatch
    from semiclust.engine.setup import build_method

    raw = copy.deepcopy(TINY_RECIPE)
    raw["model"]["head"]["prototypes_per_class"] = 2
    raw["method"].update({"label_smoothing": 0.0, "mixup": {"enabled": False}})
    method = build_method(resolve(raw), num_classes=4, in_chans=1, steps_per_epoch=6)
    seen = []
    real = Network.class_scores
    monkeypatch.setattr(Network, "class_scores", lambda self, scores: seen.append(scores.detach().clone())
                        or real(self, scores))
    labels = torch.tensor([0, 1, 2, 3, 1])
    batch = StepBatch(unlabeled=[torch.randn(6, 1, 8, 8), torch.randn(6, 1, 8, 8), torch.randn(6, 1, 4, 4)],
                      labeled=torch.randn(5, 1, 8, 8), labeled_targets=torch.nn.functional.one_hot(labels, 4).float())
    out = method.train().training_step(batch, 0)
    (scores,) = seen
    assert scores.shape == (5, 8)
    probabilities = numpy_class_probabilities(scores.double().numpy(), 2, 0.1)
    expected = -np.log(probabilities[np.arange(5), labels.numpy()]).mean()
    assert out.parts["loss_labeled"].item() == pytest.approx(expected, rel=1e-5)


def test_methods_without_labels_refuse_several_prototypes_per_class():
    raw = copy.deepcopy(TINY_RECIPE)
    raw["model"]["head"]["prototypes_per_class"] = 2
    raw["method"] = {"name": "swav"}
    with pytest.raises(SemiclustError, match="trains without labels, so its prototypes are clusters"):
        resolve(raw)


@pytest.fixture(scope="module")
def grouped_run(tmp_path_factory):
    """One epoch of Suave with 3 prototypes per class (12 prototypes, 4 classes) on 3-channel 16-px data."""
    from tests.helpers import timm_recipe

    raw = timm_recipe("tinyconv", {"widths": [8, 16]})
    raw["model"]["head"]["prototypes_per_class"] = 3
    return train(resolve(raw), tmp_path_factory.mktemp("grouped") / "run")


def test_a_grouped_classifier_gives_c_classes_in_eval_export_and_predict(grouped_run, tmp_path):
    from PIL import Image

    from semiclust.data.datasets import build_dataset

    state = load_checkpoint(grouped_run.checkpoint)
    assert state.method["student.prototypes.weight"].shape[0] == 12
    report = api.evaluate(grouped_run.checkpoint, knn=0, write_confusion=False).report
    assert len(report.classes) == 4 and report.confusion.shape == (4, 4)
    assert report.result.top1 == pytest.approx(grouped_run.result.top1)
    network, recipe = classifier_network(state)
    api.export(grouped_run.checkpoint, tmp_path / "m.safetensors", content="classifier")
    classifier = api.load_classifier(tmp_path / "m.safetensors")
    dataset = build_dataset("synthetic", {"num_classes": 4, "size": 16, "channels": 3, "test_per_class": 2})
    images = dataset.test.images[:4].float().div(255)
    with torch.no_grad():
        logits = classifier(images)
        prototype = network.eval().prototype_scores(images)
    assert logits.shape == (4, 4)
    expected = numpy_class_probabilities(prototype.double().numpy(), 3, recipe.method.temperature)
    assert np.allclose(logits.softmax(dim=1).double().numpy(), expected, atol=1e-5)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(dataset.test.images[i].permute(1, 2, 0).numpy()).save(folder / f"img{i}.png")
    predictions = api.predict(tmp_path / "m.safetensors", [folder], top_k=4)
    assert all(len(p.classes) == 4 and sum(p.probabilities) == pytest.approx(1.0, abs=1e-4) for p in predictions)
    api.export(grouped_run.checkpoint, tmp_path / "hub", format="hub")
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert config["num_classes"] == 0 and len(config["semiclust"]["classes"]) == 4  # the backbone, and its 4 classes


def test_a_grouped_classifier_exports_to_onnx_with_c_class_logits(grouped_run, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'semiclust[onnx]')")
    pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install 'semiclust[onnx]')")
    api.export(grouped_run.checkpoint, tmp_path / "m.onnx", format="onnx")
    network, recipe = classifier_network(load_checkpoint(grouped_run.checkpoint))
    images = torch.randn(3, 3, 16, 16)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    logits = torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])
    with torch.no_grad():
        expected = network.eval()(images) / recipe.method.temperature
    assert logits.shape == (3, 4) and (logits - expected).abs().max() <= 1e-4
