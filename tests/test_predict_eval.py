"""`semiclust predict` and the `semiclust eval` report, against independent calculations."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from semiclust.cli import main
from semiclust.data.datasets import build_dataset
from semiclust.evaluation.metrics import confusion_matrix, knn_scores, per_class_accuracy
from semiclust.export.safetensors import export_checkpoint
from semiclust.models.classifier import load_export


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    captured = capsys.readouterr()
    return info.value.code or 0, captured.out, captured.err


def test_predict_writes_one_csv_row_per_image_matching_the_classifier(trained_run, tmp_path, capsys):
    model = tmp_path / "model.safetensors"
    export_checkpoint(trained_run.checkpoint, model, "classifier")
    dataset = build_dataset("synthetic", {"num_classes": 4, "size": 16, "channels": 3, "train_per_class": 24,
                                          "test_per_class": 8})
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    for i in range(6):
        target = folder / ("nested" if i % 2 else "") / f"img{i}.png"
        Image.fromarray(dataset.test.images[i * 5].permute(1, 2, 0).numpy()).save(target)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    code, _, err = run(capsys, "predict", str(folder), "--model", str(model), "--format", "csv", "--out",
                       str(tmp_path / "p.csv"), "--top-k", "3")
    assert code == 0 and "1 of 7 file(s) could not be read" in err
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 7 and rows[0]["path"].endswith("broken.jpg") and rows[0]["error"]
    classifier = load_export(model)
    for row in rows[1:]:
        index = int(row["path"].rsplit("img", 1)[1].split(".")[0]) * 5
        with torch.no_grad():
            probabilities = classifier(classifier.preprocess(dataset.test.images[index]).unsqueeze(0)).softmax(1)[0]
        top = probabilities.topk(3)
        assert [row[f"class_{r}"] for r in (1, 2, 3)] == [classifier.classes[c] for c in top.indices]
        assert [float(row[f"probability_{r}"]) for r in (1, 2, 3)] == pytest.approx(top.values.tolist(), abs=1e-6)
    code, out, _ = run(capsys, "predict", str(folder / "img0.png"), "--model", str(model), "--format", "json")
    assert code == 0 and json.loads(out)[0]["classes"][0] in classifier.classes


def test_predict_refuses_a_backbone_only_export(trained_run, tmp_path, capsys):
    backbone = tmp_path / "backbone.safetensors"
    export_checkpoint(trained_run.checkpoint, backbone, "backbone")
    code, _, err = run(capsys, "predict", str(tmp_path), "--model", str(backbone))
    assert code == 2 and "holds only a backbone" in err


def test_confusion_and_per_class_accuracy_match_a_direct_count():
    rng = np.random.default_rng(0)
    labels, predicted = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    matrix = confusion_matrix(torch.from_numpy(predicted), torch.from_numpy(labels), 6)
    for t in range(6):
        for p in range(6):
            assert matrix[t, p] == int(((labels == t) & (predicted == p)).sum())
    recall = per_class_accuracy(matrix)
    assert recall[2] == pytest.approx(100 * ((labels == 2) & (predicted == 2)).sum() / (labels == 2).sum())
    assert torch.isnan(recall[5])  # no images of class 5


def test_knn_votes_match_a_brute_force_loop():
    g = torch.Generator().manual_seed(0)
    memory, queries = torch.randn(30, 8, generator=g), torch.randn(7, 8, generator=g)
    memory_labels = torch.randint(0, 3, (30,), generator=g)
    votes = knn_scores(memory, memory_labels, queries, 3, k=5, temperature=0.1, chunk=3)
    for q in range(7):
        sims = [float(torch.dot(queries[q], m) / (queries[q].norm() * m.norm())) for m in memory]
        nearest = sorted(range(30), key=lambda i: -sims[i])[:5]
        expected = [sum(np.exp(sims[i] / 0.1) for i in nearest if memory_labels[i] == c) for c in range(3)]
        assert votes[q].tolist() == pytest.approx(expected, rel=1e-4)


def test_eval_reports_per_class_confusion_png_and_knn(trained_run, tmp_path, capsys):
    png = tmp_path / "confusion.png"
    code, out, _ = run(capsys, "eval", "--checkpoint", str(trained_run.checkpoint), "--json", "--confusion", str(png))
    report = json.loads(out)
    assert code == 0 and report["top1"] == trained_run.result.top1 and png.stat().st_size > 1000
    matrix = torch.tensor(report["confusion"])
    assert matrix.sum() == report["n"] == 32
    assert report["top1"] == pytest.approx(100 * matrix.diagonal().sum().item() / 32)
    assert list(report["per_class"]) == ["class_0", "class_1", "class_2", "class_3"]
    assert report["knn_memory"] == 8 and 0 <= report["knn_top1"] <= 100
    code, out, _ = run(capsys, "eval", "--checkpoint", str(trained_run.checkpoint), "--no-confusion", "--knn-k", "0")
    assert code == 0 and "per-class accuracy" in out and "kNN" in out


def test_eval_knn_memory_all_votes_with_every_labeled_training_image(trained_run, capsys):
    """`--knn-memory all`: the memory is all 96 training images with their labels (not the 8 labeled), and the
    figure is the weighted kNN of the checkpoint's own features computed here; a bad value is named."""
    from semiclust.data.eval_views import EvalViews
    from semiclust.engine.checkpoint import classifier_network, load_checkpoint
    from semiclust.evaluation.metrics import features_and_scores, topk_accuracy
    from semiclust.config.validation import validate_saved

    checkpoint = str(trained_run.checkpoint)
    code, out, _ = run(capsys, "eval", "-c", checkpoint, "--json", "--no-confusion", "--knn-memory", "all",
                       "--knn-k", "5")
    report = json.loads(out)
    assert code == 0 and report["knn_memory"] == 96 and report["knn_source"] == "all"
    state = load_checkpoint(trained_run.checkpoint)
    network, _ = classifier_network(state)
    dataset = build_dataset("synthetic", {"num_classes": 4, "size": 16, "channels": 3, "train_per_class": 24,
                                          "test_per_class": 8})
    recipe = validate_saved(state.recipe, "the checkpoint's recipe")

    def features(split):
        views = EvalViews(split, recipe.data.eval, tuple(state.mean), tuple(state.std), 64,
                          torch.device("cpu"), recipe.data.loader)
        return features_and_scores(network, views)

    memory, _, memory_labels = features(dataset.train)
    queries, _, labels = features(dataset.test)
    expected = topk_accuracy(knn_scores(memory, memory_labels, queries, 4, k=5), labels, 1)
    assert report["knn_top1"] == pytest.approx(expected)
    code, out, err = run(capsys, "eval", "-c", checkpoint, "--no-confusion", "--knn-memory", "every")
    assert code != 0 and "--knn-memory must be 'labeled'" in " ".join((out + err).split())


def test_top_k_accuracy_is_exact_for_round_fractions():
    from semiclust.evaluation.metrics import topk_accuracy

    labels = torch.zeros(360, dtype=torch.long)
    scores = torch.zeros(360, 3)
    scores[:324, 0] = 1.0  # 324 right, the rest predict class 1
    scores[324:, 1] = 1.0
    assert topk_accuracy(scores, labels, 1) == 90.0 and topk_accuracy(scores, labels, 2) == 100.0


def test_the_predictions_table_keeps_long_paths_whole_on_a_narrow_terminal():
    """A path longer than the terminal is folded onto more lines, never cut with an ellipsis: the end of the path
    (the file name) is what tells the images apart."""
    from rich.console import Console

    from semiclust.predict import Prediction
    from semiclust.render import predictions_table

    path = "/data/" + "/".join(f"folder_{i:02d}" for i in range(8)) + "/image_0001_unique_name.png"
    console = Console(width=50, record=True, color_system=None)
    console.print(predictions_table("top-2", [Prediction(path, ["cat", "dog"], [0.75, 0.25])]))
    text = console.export_text()
    first_column = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.count("│") >= 2)
    assert first_column == path and "…" not in text
