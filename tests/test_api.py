"""The library API (semiclust/api.py), one test per function, each checked against what the lower layers
compute on their own (the CLI is a thin face over the same functions)."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import semiclust
from semiclust import api
from semiclust.data.datasets import build_dataset
from semiclust.engine.checkpoint import classifier_network, load_checkpoint
from semiclust.errors import SemiclustError
from semiclust.config.schema import Recipe
from tests.helpers import TINY_RECIPE


@pytest.fixture
def tiny_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(TINY_RECIPE))  # JSON is YAML
    return path


def test_load_recipe_reads_files_and_shipped_names_and_applies_overrides(tiny_file):
    recipe = api.load_recipe(tiny_file, ["optim.lr=0.2", "method.name=daino"])
    assert isinstance(recipe, Recipe) and recipe.optim.lr == 0.2
    assert recipe.model.head.layers == 3 and recipe.method.assignment.name == "center_sharpen"  # daino's defaults
    assert type(recipe.method.assignment).__name__ == "CenterSharpenSpec"  # its own section class checked it
    assert api.load_recipe("digits_suave").name == "digits_suave"
    assert api.load_recipe(recipe, ["seed=3"]).seed == 3 and api.load_recipe(recipe) is recipe
    with pytest.raises(SemiclustError, match="did you mean 'optim.lr'"):
        api.load_recipe(tiny_file, ["optim.lrr=0.2"])



@pytest.mark.parametrize("method, section, check", [
    ("suave", {"queue": {"length": 64, "start_epoch": 1}}, lambda m: m.queue.length == 64),
    ("daino", {"teacher": {"momentum": 0.95, "momentum_end": 0.99}}, lambda m: m.spec.teacher.momentum_end == 0.99)])
def test_a_recipe_validated_without_the_registries_gets_its_methods_own_section(method, section, check):
    """`Recipe.model_validate(raw)` (a notebook's way) leaves the method section generic, where Suave's queue and
    Daino's teacher were plain dicts: building the method failed with AttributeError and a misspelt key passed.
    api.load_recipe and build_method check the section with the method's own class."""
    from semiclust.config.loader import with_method_defaults
    from semiclust.config.schema import MethodSpec
    from semiclust.engine.setup import build_method

    raw = with_method_defaults({**TINY_RECIPE, "method": {"name": method, **section}})
    generic = Recipe.model_validate(raw)
    assert type(generic.method) is MethodSpec
    assert check(build_method(generic, 3, 3, 5))
    loaded = api.load_recipe(generic)
    assert type(loaded.method) is not MethodSpec and check(build_method(loaded, 3, 3, 5))
    misspelt = Recipe.model_validate({**raw, "method": {**raw["method"], "temprature": 0.2}})
    with pytest.raises(SemiclustError, match="temprature"):
        api.load_recipe(misspelt)

def test_train_writes_the_run_and_returns_its_final_evaluation(tiny_file, tmp_path):
    summary = api.train(tiny_file, tmp_path / "run", overrides=["schedule.epochs=1"])
    state = load_checkpoint(summary.checkpoint)
    assert summary.steps == state.step == 6 and summary.main_process
    assert state.eval["top1"] == summary.result.top1
    assert (tmp_path / "run" / "recipe.yaml").is_file() and (tmp_path / "run" / "labeled_subset.json").is_file()


def test_dry_run_plans_what_training_does_for_any_process_count(tiny_file):
    one, two = api.dry_run(tiny_file, 1), api.dry_run(tiny_file, 2)  # the same recipe: batches are global
    assert (one.numbers.steps_per_epoch, one.numbers.global_unlabeled) == (6, 16)  # 96 images / 16 per step
    assert (two.numbers.steps_per_epoch, two.numbers.global_unlabeled) == (6, 16)  # the same global batch
    assert (one.numbers.process_unlabeled, one.numbers.process_labeled) == (16, 8)
    assert (two.numbers.process_unlabeled, two.numbers.process_labeled) == (8, 4)  # each process's share
    assert one.parameters == two.parameters and one.labeled == 8
    with pytest.raises(SemiclustError, match="at least 1"):
        api.dry_run(tiny_file, 0)


def test_evaluate_reproduces_the_final_top1_and_writes_the_confusion_png(trained_run, tmp_path):
    png = tmp_path / "confusion.png"
    evaluation = api.evaluate(trained_run.run_dir, confusion=png, knn=5)
    assert evaluation.report.result.top1 == trained_run.result.top1
    assert evaluation.step == load_checkpoint(trained_run.checkpoint).step
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and evaluation.confusion_png == png
    assert evaluation.report.knn_memory == 8 and evaluation.knn_skipped is None  # 2 labeled per class, 4 classes
    assert int(evaluation.report.confusion.sum()) == evaluation.report.result.n
    nothing = api.evaluate(trained_run.checkpoint, write_confusion=False, knn=0)
    assert nothing.confusion_png is None and nothing.report.knn_top1 is None


def test_export_and_load_classifier_round_trip_the_checkpoints_network(trained_run, tmp_path):
    out = tmp_path / "model.safetensors"
    meta = api.export(trained_run.run_dir, out, content="classifier")
    classifier = api.load_classifier(out)
    assert semiclust.load_classifier is api.load_classifier  # also reachable from the package root
    network, recipe = classifier_network(load_checkpoint(trained_run.checkpoint))
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = network.eval()(images) / recipe.method.temperature
    assert torch.equal(classifier(images), expected) and meta["content"] == "classifier"


def test_predict_classifies_image_files_as_the_classifier_does(trained_run, tmp_path):
    out = tmp_path / "model.safetensors"
    api.export(trained_run.checkpoint, out, content="classifier")
    classifier = api.load_classifier(out)
    dataset = build_dataset("synthetic", {"num_classes": 4, "size": 16, "channels": 3, "test_per_class": 2})
    for i in range(3):
        Image.fromarray(dataset.test.images[i].permute(1, 2, 0).numpy()).save(tmp_path / f"img{i}.png")
    predictions = api.predict(out, [tmp_path], top_k=2)
    assert [p.path.rsplit("/", 1)[1] for p in predictions] == ["img0.png", "img1.png", "img2.png"]
    for i, prediction in enumerate(predictions):
        probabilities = classifier(classifier.preprocess(dataset.test.images[i])[None]).softmax(dim=1)[0]
        assert prediction.classes == [classifier.classes[c] for c in probabilities.topk(2).indices]
    with pytest.raises(SemiclustError, match="--top-k must be at least 1"):
        api.predict(classifier, [tmp_path], top_k=0)


def test_check_data_reports_counts_and_problems(tiny_file):
    report = api.check_data(tiny_file)
    assert report.ok and [r.labeled for r in report.rows] == [2, 2, 2, 2] and sum(r.eval for r in report.rows) == 32
    broken = api.check_data(tiny_file, overrides=["data.labels={per_class: 30}"])  # a class has only 24 images
    assert not broken.ok and "'class_0' has 24" in " ".join(broken.problems)


def test_catalogue_lists_each_kind_from_its_registry():
    catalogue = api.catalogue()
    assert set(catalogue) == {"backbones", "assignments", "datasets", "methods", "recipes"}
    assert catalogue["assignments"].names() == ["center_sharpen", "sinkhorn"]
    assert {"suave", "daino", "swav", "dino", "supervised"} == set(catalogue["methods"].names())
    assert "resnet18_cifar" in catalogue["backbones"].names("resnet18*")
    assert "digits_suave" in catalogue["recipes"].names() and catalogue["methods"].summary("suave").startswith("SwAV")


def test_a_method_subclass_registered_without_a_section_takes_its_bases(monkeypatch):
    """`@METHODS.register("my_suave") class MySuave(Suave)` with no `spec=`: it got the plain section, so
    method.queue was refused as another method's option and, without it, building failed (no `queue`); it now takes
    Suave's section, as it takes Suave's parts."""
    from semiclust.config.loader import with_method_defaults
    from semiclust.engine.setup import build_method
    from semiclust.methods.suave import Suave
    from semiclust.registry import METHODS

    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))
    monkeypatch.setattr(METHODS, "_specs", dict(METHODS._specs))

    @METHODS.register("my_suave")
    class MySuave(Suave):
        """Suave under another name."""

    assert METHODS.spec("my_suave") is METHODS.spec("suave")
    recipe = api.load_recipe(Recipe.model_validate(with_method_defaults(
        {**TINY_RECIPE, "method": {"name": "my_suave", "queue": {"length": 64, "start_epoch": 1}}})))
    method = build_method(recipe, 3, 3, 5)
    assert isinstance(method, MySuave) and method.queue.length == 64


def test_the_package_functions_are_not_shadowed_by_the_submodules_of_the_same_name():
    """`semiclust.predict`, `.compare` and `.export` are functions (the package docstring's API), although
    submodules of the same names exist and importing the api imports them (which bound the modules there)."""
    import semiclust.compare  # noqa: F401 - imported again: nothing rebinds
    import semiclust.predict  # noqa: F401

    for name in semiclust.API:
        assert getattr(semiclust, name) is getattr(api, name), name
    assert callable(semiclust.predict) and callable(semiclust.export) and callable(semiclust.compare)
