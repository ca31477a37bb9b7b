"""Damaged, hostile or unusual files and outputs of evaluation, export and the run readers (issue 22): export
metadata bounded before anything is allocated, a bounded confusion PNG for many classes, a wrong-shaped tensor
named, damaged metrics.jsonl / recipe.yaml / checkpoint fields reported, printed commands that paste, top-5 of
five classes or fewer marked, a plain pickle named, and a read-only checkpoint folder that still evaluates."""
import io
import json
import pickle
import shlex
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from rich.console import Console

from semiclust import api
from semiclust.cli import main
from semiclust.engine.checkpoint import load_checkpoint
from semiclust.engine.metrics import read_metrics
from semiclust.errors import SemiclustError
from semiclust.evaluation.metrics import EvalReport, EvalResult, accuracy_result, per_class_accuracy
from semiclust.export.safetensors import export_checkpoint
from semiclust.models.classifier import load_export
from semiclust.version import __version__
from tests.helpers import run_python


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    captured = capsys.readouterr()
    return info.value.code or 0, captured.out, captured.err


def one_paragraph(message: str) -> bool:
    return "Traceback" not in message and message.strip().count("\n\n") == 0


@pytest.fixture(scope="module")
def exported(tinyconv_run, tmp_path_factory):
    """The tiny run's classifier exported once: (tensors, metadata) to rewrite in each test."""
    from safetensors import safe_open

    path = tmp_path_factory.mktemp("export") / "model.safetensors"
    export_checkpoint(tinyconv_run.checkpoint, path, "classifier")
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata())


def rewritten(exported, folder: Path, name: str = "edited.safetensors", tensors=None, **changes) -> Path:
    from safetensors.torch import save_file

    weights, metadata = exported
    path = folder / name
    save_file(tensors if tensors is not None else weights, str(path), metadata={**metadata, **changes})
    return path


# ---------------------------------------------------------------- item 9: export metadata bounded before use
VIEW = {"size": 8, "resize": None, "interpolation": "bilinear"}
BAD_METADATA = [
    ("eval_view", json.dumps({**VIEW, "size": 60000}), ["eval_view.size", "60000", "4096"]),
    ("eval_view", json.dumps({**VIEW, "resize": 10**8}), ["eval_view.resize", "100000000", "4096"]),
    ("eval_view", json.dumps({**VIEW, "interpolation": "lanczos"}), ["eval_view.interpolation", "lanczos"]),
    ("eval_view", "[" * 100_000 + "]" * 100_000, ["eval_view", "JSON"]),
    ("num_classes", "1000000000", ["num_classes", "1000000000"]),
    ("classes", '"cat"', ["classes", "a list of class names"]),
    ("in_chans", "100", ["in_chans", "100", "16"]),
    ("mean", "[0.5, 0.5, 0.5, 0.5, 0.5]", ["mean", "5 values", "1 (in_chans)"]),
    ("std", "[0.0]", ["std", "0.0", "above 0"]),
    ("temperature", "nan", ["temperature", "nan"]),
    ("prototypes", "cosine", ["prototypes", "cosine"]),
    ("format_version", "one", ["format_version", "one"]),
    ("model_spec", json.dumps({"backbone": {"name": "tinyconv", "kwargs": {"widths": [8, 16]}},
                               "head": {"hidden": 10**8, "out": 8}}), ["model_spec.head.hidden", "100000000"]),
]


@pytest.mark.parametrize("key, value, fragments", BAD_METADATA, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(BAD_METADATA)])
def test_export_metadata_values_are_checked_against_bounds_before_use(exported, tmp_path, key, value, fragments):
    path = rewritten(exported, tmp_path, **{key: value})
    with pytest.raises(SemiclustError) as info:
        load_export(path)
    message = str(info.value)
    assert all(fragment in message for fragment in fragments), message
    assert "\n" not in message and len(message) < 700 and str(path) in message


def test_a_newer_export_format_asks_for_a_newer_semiclust(exported, tmp_path):
    with pytest.raises(SemiclustError, match="format_version 7: .*newer semiclust"):
        load_export(rewritten(exported, tmp_path, format_version="7"))


def test_predict_with_a_60000_pixel_eval_view_exits_2_before_allocating(exported, tmp_path, capsys):
    path = rewritten(exported, tmp_path, eval_view=json.dumps({**VIEW, "size": 60000}))
    image = tmp_path / "one.png"
    from PIL import Image

    Image.new("L", (8, 8)).save(image)
    code, out, err = run(capsys, "predict", str(image), "--model", str(path))
    assert code == 2 and one_paragraph(err) and "eval_view.size is 60000" in err and "4096" in err


def test_onnx_metadata_is_bounded_like_safetensors_metadata(exported, tmp_path, monkeypatch):
    """onnxruntime is an optional extra: a stand-in session carries the metadata of an ONNX export."""
    import semiclust.models.classifier as classifier_module

    _, metadata = exported
    onnx_meta = {**metadata, "file_format": "onnx", "onnx_input": "images", "onnx_output": "logits",
                 "eval_view": json.dumps({**VIEW, "size": 60000})}

    class Session:
        def __init__(self, path, providers):
            pass

        def get_modelmeta(self):
            return type("Meta", (), {"custom_metadata_map": onnx_meta})()

        def get_inputs(self):
            return [type("Arg", (), {"name": "images"})()]

        def get_outputs(self):
            return [type("Arg", (), {"name": "logits"})()]

    fake = type("onnxruntime", (), {"InferenceSession": Session, "get_available_providers": lambda: []})
    monkeypatch.setattr(classifier_module, "require", lambda *args, **kwargs: fake)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"stand-in")
    with pytest.raises(SemiclustError, match="eval_view.size is 60000"):
        load_export(model)
    onnx_meta.update(eval_view=json.dumps(VIEW), onnx_output="scores")
    with pytest.raises(SemiclustError, match="onnx_output is 'scores'.*logits"):
        load_export(model)


def test_hub_folder_config_of_another_shape_is_not_taken_for_a_previous_export(tmp_path):
    from semiclust.export.hub import check_hub_folder

    (tmp_path / "config.json").write_text("5")
    with pytest.raises(SemiclustError, match="not a previous `semiclust export --format hub`"):
        check_hub_folder(tmp_path)


# ---------------------------------------------------------------- item 13: a confusion PNG of 10,000 classes
def test_eval_of_10000_classes_prints_its_result_and_a_bounded_confusion_png(tmp_path):
    """A fake report of 10,000 classes (no training): the PNG is drawn and the result printed in a process whose
    peak memory is measured; the figure shows the most-confused classes and says so, as does the printed line."""
    code = f"""
import io, resource, torch
from pathlib import Path
from rich.console import Console
from semiclust import api, render
from semiclust.evaluation.metrics import EvalReport, EvalResult, per_class_accuracy
from tests.helpers import make_recipe
k = 10_000
confusion = torch.zeros(k, k, dtype=torch.long)
index = torch.arange(k)
confusion[index, index] = 5
confusion[index, (index * 7 + 1) % k] = torch.where(index % 97 == 0, 9, 1)
report = EvalReport(EvalResult(80.0, 95.0, 6 * k, "val", num_classes=k), [f"class {{i}}" for i in range(k)],
                    per_class_accuracy(confusion), confusion)
png = Path({str(tmp_path / 'c.png')!r})
evaluation = api.Evaluation(report, Path("final.pt"), 7, make_recipe(), png, "--knn-k 0")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
api.draw_confusion(evaluation, "10,000 classes")
buffer = io.StringIO()
render.show_evaluation(Console(file=buffer, width=120), evaluation, 0)
print(buffer.getvalue())
print(render.evaluation_json(evaluation)[-300:])
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    result = run_python(code, Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    grown_mib = int(result.stdout.split()[-1])
    assert grown_mib < 300, f"drawing the confusion and printing the result grew the process by {grown_mib} MiB"
    assert "80.00" in result.stdout and "(the 30 most-confused of 10,000 classes)" in result.stdout
    assert '"confusion_shows": "the 30 most-confused of 10,000 classes"' in result.stdout
    from PIL import Image

    with Image.open(tmp_path / "c.png") as image:
        assert max(image.size) < 5000


def test_many_classes_show_the_most_confused_ones_and_say_so():
    from semiclust.plot import confusion_shown

    k = 300
    confusion = torch.eye(k, dtype=torch.long) * 10
    confusion[3, 150] = 7  # class 3 taken for 150, 150 for 3: the most confused pair
    confusion[150, 3] = 6
    confusion[42, 43] = 2
    rows, note = confusion_shown(confusion)
    assert rows is not None and {3, 150, 42, 43} <= set(rows.tolist()) and len(rows) == 30
    assert note is not None and "most-confused" in note and "of 300 classes" in note
    assert confusion_shown(torch.eye(12, dtype=torch.long)) == (None, None)


def test_eval_prints_its_result_when_the_confusion_png_runs_out_of_memory(tinyconv_run, tmp_path, monkeypatch, capsys):
    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(api, "plot_confusion", no_memory)
    code, out, err = run(capsys, "eval", "-c", str(tinyconv_run.checkpoint), "--confusion", str(tmp_path / "c.png"),
                         "--knn-k", "0")
    assert code == 0 and "top-1" in out and "confusion matrix not drawn" in out and "memory" in out


# ---------------------------------------------------------------- item 14: a wrong-shaped tensor in a checkpoint
def edited_checkpoint(source: Path, target: Path, version: str | None = None) -> tuple[Path, str]:
    state = torch.load(source, weights_only=True)
    key = next(k for k in state["method"] if k.startswith(state["classifier"]["prefix"] + ".") and k.endswith("weight"))
    state["method"][key] = torch.zeros(2, 2)
    if version is not None:
        state["semiclust_version"] = version
    torch.save(state, target)
    return target, key.split(".", 1)[1]


def test_a_wrong_shaped_tensor_is_named_and_the_file_called_damaged(tinyconv_run, tmp_path):
    bad, key = edited_checkpoint(tinyconv_run.checkpoint, tmp_path / "edited.pt")
    for attempt in (lambda: export_checkpoint(bad, tmp_path / "x.safetensors", "classifier"),
                    lambda: api.evaluate(bad, write_confusion=False, knn=0)):
        with pytest.raises(SemiclustError) as info:
            attempt()
        message = str(info.value)
        assert f"'{key}'" in message and "(2, 2)" in message and "expected (" in message, message
        assert "damaged or edited" in message and "another version" not in message, message
    older, _ = edited_checkpoint(tinyconv_run.checkpoint, tmp_path / "older.pt", version="0.0.1")
    with pytest.raises(SemiclustError, match=rf"written by semiclust 0\.0\.1 \(this is {__version__}\)"):
        export_checkpoint(older, tmp_path / "y.safetensors", "classifier")


def test_a_wrong_shaped_tensor_in_an_export_is_named(exported, tmp_path):
    weights, _ = exported
    key = next(k for k in weights if k.endswith("weight"))
    path = rewritten(exported, tmp_path, tensors={**weights, key: torch.zeros(3)})
    with pytest.raises(SemiclustError, match=rf"'{key}' has shape \(3,\), expected \(.*damaged or edited"):
        load_export(path)


@pytest.mark.parametrize("change, words", [
    ({"classifier": {"prefix": "student", "prototypes": "unit", "in_chans": 1, "num_classes": 10**9, "matched": False}},
     "classifier.num_classes is 1000000000"),
    ({"mean": [0.5] * 5}, "mean is [0.5, 0.5, 0.5, 0.5, 0.5]"),
    ({"classes": "abcd"}, "classes is 'abcd'"),
    ({"std": [0.0]}, "std is [0.0]")])
def test_checkpoint_fields_are_bounded_before_a_network_is_built(tinyconv_run, tmp_path, change, words):
    state = torch.load(tinyconv_run.checkpoint, weights_only=True)
    torch.save({**state, **change}, tmp_path / "edited.pt")
    with pytest.raises(SemiclustError) as info:
        export_checkpoint(tmp_path / "edited.pt", tmp_path / "x.safetensors", "classifier")
    assert words in str(info.value) and "damaged or edited" in str(info.value)


# ---------------------------------------------------------------- item 15: damaged run files
GOOD = {"type": "train", "step": 1, "lr": 0.1, "loss": 1.0, "img_per_s": 10.0, "elapsed_s": 1.0}


def test_the_metrics_reader_skips_damaged_lines_and_recovers_glued_records(tmp_path):
    from semiclust.engine.metrics import read_metrics_file

    lines = [json.dumps(GOOD),
             json.dumps({**GOOD, "step": 2})[:30] + json.dumps({**GOOD, "step": 3}),  # a cut line, then a resume
             json.dumps({**GOOD, "step": 4}) + json.dumps({**GOOD, "step": 5}),  # two records on one line
             "not json at all", "[1, 2]", json.dumps({"type": "train", "step": "six"}),
             json.dumps({"type": "eval", "step": 6, "top1": 50.0, "top5": 90.0, "split": "test"}),
             json.dumps({**GOOD, "step": 7})[:25]]  # the last line cut short
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(("\n".join(lines)).encode() + b"\n\xff\xfe\n")
    read = read_metrics_file(path)
    assert [r["step"] for r in read.records] == [1, 3, 4, 5, 6]
    assert read.damaged == [2, 3, 4, 5, 6, 8, 9] and read.recovered == 3
    note = read.warning()
    assert str(path) in note and "7 damaged lines" in note and "line 2" in note and "3 records recovered" in note
    assert read_metrics(path) == read.records
    path.write_text(json.dumps(GOOD) + "\n")
    assert read_metrics_file(path).warning() is None


def damaged_run(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for name in ("recipe.yaml", "metrics.jsonl"):
        shutil.copy(source / name, target / name)
    return target


def test_plot_draws_a_run_whose_metrics_end_in_a_cut_line(tinyconv_run, tmp_path, capsys):
    run_dir = damaged_run(tinyconv_run.run_dir, tmp_path / "cut")
    text = (run_dir / "metrics.jsonl").read_text()
    (run_dir / "metrics.jsonl").write_text(text[:-20])
    code, out, err = run(capsys, "plot", str(run_dir))
    assert code == 0 and (run_dir / "curves.png").is_file()
    lines = text.count("\n")
    assert f"1 damaged line (line {lines})" in err and "metrics.jsonl" in err


def test_compare_names_a_run_with_a_damaged_recipe_and_still_compares(tinyconv_run, tmp_path, capsys):
    good = damaged_run(tinyconv_run.run_dir, tmp_path / "good")
    bad = damaged_run(tinyconv_run.run_dir, tmp_path / "bad")
    (bad / "recipe.yaml").write_text("name: [unclosed\n")
    with (bad / "metrics.jsonl").open("a") as file:
        file.write('{"type": "train", "st')
    code, out, err = run(capsys, "compare", str(good), str(bad), "--out", str(tmp_path / "c.png"))
    assert code == 0 and (tmp_path / "c.png").is_file(), err
    assert "recipe.yaml" in out and "left out of the recipe differences" in out and "bad" in out
    assert "1 damaged line" in out


def test_a_string_format_version_is_a_clear_error(tinyconv_run, tmp_path):
    state = torch.load(tinyconv_run.checkpoint, weights_only=True)
    for field, value, words in (("format_version", "1", "format_version is '1'"), ("format", 5, "no 'semiclust-checkpoint'")):
        torch.save({**state, field: value}, tmp_path / "edited.pt")
        with pytest.raises(SemiclustError, match=words):
            load_checkpoint(tmp_path / "edited.pt")


# ---------------------------------------------------------------- item 16: printed commands paste
def test_evaluate_again_is_quoted_and_never_wrapped():
    from semiclust.engine.trainer import TrainSummary
    from semiclust.render import show_trained

    folder = Path("/tmp/my runs/a rather long folder name that pushes the line past eighty columns")
    checkpoint = folder / "checkpoints" / "final.pt"
    result = EvalResult(71.5, 93.0, 360, "test")
    buffer = io.StringIO()
    show_trained(Console(file=buffer, width=80), TrainSummary(folder, checkpoint, result, 10, 3.0))
    line = next(line for line in buffer.getvalue().splitlines() if line.startswith("evaluate again: "))
    assert shlex.split(line.removeprefix("evaluate again: ")) == ["semiclust", "eval", "--checkpoint", str(checkpoint)]


def test_export_lines_are_quoted_and_never_wrapped():
    from semiclust.render import show_export

    out = Path("/tmp/my exports/a rather long file name that pushes the line past eighty columns.safetensors")
    meta = {"content": "classifier", "architecture": "tinyconv", "step": "6", "num_classes": "3", "recipe_sha256": "ab" * 32}
    buffer = io.StringIO()
    show_export(Console(file=buffer, width=80), meta, out)
    line = next(line for line in buffer.getvalue().splitlines() if "semiclust predict" in line)
    command = line.split("; or ", 1)[1]
    assert shlex.split(command) == ["semiclust", "predict", "--model", str(out), "IMAGES..."]
    hub = Path("/tmp/my exports/hub folder")
    buffer = io.StringIO()
    show_export(Console(file=buffer, width=80), {**meta, "content": "backbone", "file_format": "hub",
                                                 "timm_kwargs": "{}"}, hub)
    line = next(line for line in buffer.getvalue().splitlines() if line.startswith("publish it: "))
    assert shlex.split(line.removeprefix("publish it: ").split(" (then", 1)[0]) == [
        "huggingface-cli", "upload", "USER/REPO", str(hub)]


# ---------------------------------------------------------------- item 19: smaller ones
def test_top5_of_five_classes_or_fewer_is_marked_as_always_100():
    from semiclust.engine.trainer import TrainSummary
    from semiclust.render import evaluation_json, show_evaluation, show_trained
    from tests.helpers import make_recipe

    scores, labels = torch.randn(12, 3), torch.arange(12) % 3
    result, used = accuracy_result(scores, labels, "val", False, 0)
    assert result.num_classes == 3 and result.top5 == 100.0 and result.top5_trivial
    assert not accuracy_result(torch.randn(12, 6), torch.arange(12) % 6, "val", False, 0)[0].top5_trivial
    confusion = torch.eye(3, dtype=torch.long) * 4
    report = EvalReport(result, ["a", "b", "c"], per_class_accuracy(confusion), confusion)
    evaluation = api.Evaluation(report, Path("final.pt"), 6, make_recipe(), None, "--knn-k 0")
    shown = json.loads(evaluation_json(evaluation))
    assert shown["top5"] == 100.0 and shown["top5_trivial"] is True and shown["num_classes"] == 3
    buffer = io.StringIO()
    show_evaluation(Console(file=buffer, width=200), evaluation, 0)
    assert "top-5 is 100% with 3 classes" in buffer.getvalue()
    buffer = io.StringIO()
    show_trained(Console(file=buffer, width=200), TrainSummary(Path("r"), Path("r/final.pt"), result, 6, 1.0))
    assert "top-5 100.00%" not in buffer.getvalue() and "top-5 is 100% with 3 classes" in buffer.getvalue()


def test_a_plain_pickle_is_named_as_not_a_torch_save_file(tmp_path):
    path = tmp_path / "model.pt"
    with path.open("wb") as file:
        pickle.dump({"weights": [1, 2, 3]}, file)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(SemiclustError) as info:
            load_checkpoint(path)
    message = str(info.value)
    assert "plain Python pickle" in message and "not a torch.save file" in message
    assert "never unpickles" in message


@pytest.fixture
def read_only_folder(monkeypatch):
    """Make one folder refuse new files as a read-only one would (the tests run as root, whom chmod does not stop)."""
    refused: list[Path] = []
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and any(Path(dir).resolve() == folder.resolve() for folder in refused):
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return refused


def test_eval_of_a_checkpoint_in_a_read_only_folder_skips_the_default_png(tinyconv_run, read_only_folder, capsys):
    read_only_folder.append(tinyconv_run.checkpoint.parent)
    code, out, err = run(capsys, "eval", "-c", str(tinyconv_run.checkpoint), "--knn-k", "0")
    assert code == 0 and "top-1" in out and "not written" in out and "--confusion PATH" in out, err
    assert "confusion matrix: " not in out
    explicit = tinyconv_run.checkpoint.parent / "mine.png"
    code, out, err = run(capsys, "eval", "-c", str(tinyconv_run.checkpoint), "--confusion", str(explicit))
    assert code == 2 and "cannot be written" in err and "top-1" not in out
