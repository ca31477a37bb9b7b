"""The CLI in-process (one torch import for the whole file): exit codes, one-paragraph errors, outputs."""
import json

import pytest
import yaml

from semiclust.cli import main
from tests.helpers import TINY_RECIPE


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    captured = capsys.readouterr()
    return info.value.code or 0, captured.out, captured.err


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_RECIPE))
    return path


def test_recipe_show_prints_resolved_values_with_overrides(capsys, recipe_file):
    code, out, _ = run(capsys, "recipe", "show", str(recipe_file), "--set", "method.temperature=0.25")
    shown = yaml.safe_load(out)
    assert code == 0 and shown["method"]["temperature"] == 0.25
    assert shown["method"]["assignment"] == {"name": "sinkhorn", "epsilon": 0.05, "iterations": 3, "prior": "uniform",
                                             "prior_momentum": 0.99, "prior_floor": 0.1, "prior_temperature": 0.1}


def test_invalid_recipe_exits_2_with_one_paragraph_and_no_traceback(capsys, tmp_path):
    raw = {**TINY_RECIPE, "method": {"name": "suave", "temprature": 0.2}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    code, out, err = run(capsys, "recipe", "show", str(bad))
    assert code == 2 and "Traceback" not in err
    assert "method.temprature" in err and "did you mean 'method.temperature'" in err
    assert err.strip().count("\n\n") == 0


def test_bad_override_type_exits_2(capsys, recipe_file):
    code, _, err = run(capsys, "train", str(recipe_file), "--set", "schedule.epochs=lots")
    assert code == 2 and "'schedule.epochs' = 'lots'" in err and "Traceback" not in err


def test_validate_reports_each_file(capsys, recipe_file, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY_RECIPE, "data": {**TINY_RECIPE["data"], "dataset": "digts"}}))
    code, out, err = run(capsys, "recipe", "validate", str(recipe_file), str(bad))
    assert code == 2 and f"ok  {recipe_file}" in out and "Did you mean 'digits'" in err
    code, _, _ = run(capsys, "recipe", "validate", "digits_suave", "digits_daino", "digits_supervised")
    assert code == 0


def test_list_commands(capsys):
    code, out, _ = run(capsys, "list", "backbones", "resnet18*")
    assert code == 0 and "resnet18_cifar" in out.split() and "resnet18" in out.split()
    code, out, _ = run(capsys, "list", "assignments")  # each registered entry with its docstring's first line
    assert out.splitlines() == ["center_sharpen: Centered, sharpened softmax (DINO); the center is updated by EMA after "
                                "computing targets.", "sinkhorn: Equipartitioned soft clusters (SwAV), one Sinkhorn-Knopp "
                                "run per target crop."]
    code, out, _ = run(capsys, "list", "datasets")
    assert {"digits", "synthetic"} <= {line.split(":")[0] for line in out.splitlines()}
    code, out, _ = run(capsys, "list", "recipes", "digits_*")
    assert "digits_suave:" in out
    code, _, err = run(capsys, "list", "backbone")
    assert code == 2 and "did you mean 'backbones'" in err.lower()


def test_export_of_a_missing_checkpoint_or_to_a_wrong_suffix(capsys, tmp_path):
    code, _, err = run(capsys, "export", "--checkpoint", str(tmp_path / "x.pt"), "--out", str(tmp_path / "x.safetensors"))
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "export", "--checkpoint", str(tmp_path / "x.pt"), "--out", str(tmp_path / "x.bin"))
    assert code == 2 and "must end in .safetensors" in err


def test_eval_of_missing_or_corrupt_checkpoint(capsys, tmp_path):
    code, _, err = run(capsys, "eval", "--checkpoint", str(tmp_path / "none.pt"))
    assert code == 2 and "does not exist" in err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 not really a checkpoint")
    code, _, err = run(capsys, "eval", "--checkpoint", str(corrupt))
    assert code == 2 and "truncated, corrupt" in err and "Traceback" not in err


def test_train_then_eval_reproduces_the_final_top1(capsys, recipe_file, tmp_path):
    out_dir = tmp_path / "run"
    code, out, _ = run(capsys, "train", str(recipe_file), "--out", str(out_dir), "--set", "schedule.epochs=3")
    assert code == 0 and "top-1" in out
    final = [json.loads(l) for l in (out_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in l][-1]
    code, out, _ = run(capsys, "eval", "--checkpoint", str(out_dir / "checkpoints" / "final.pt"), "--json")
    result = json.loads(out)
    assert code == 0 and result["top1"] == final["top1"] and result["top5"] == final["top5"]
    assert result["n"] == 32 and result["split"] == "test"
    # curves: a real PNG with the four panels' worth of pixels
    code, out, _ = run(capsys, "plot", str(out_dir))
    png = out_dir / "curves.png"
    assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    # the same folder is refused without --resume / --overwrite
    code, _, err = run(capsys, "train", str(recipe_file), "--out", str(out_dir))
    assert code == 2 and "already holds a run" in err


def test_plot_without_metrics_is_a_clear_error(capsys, tmp_path):
    code, _, err = run(capsys, "plot", str(tmp_path))
    assert code == 2 and "has no metrics.jsonl" in err


@pytest.mark.parametrize("budget, said", [("10", "'10' has no unit"), ("ten minutes", "is not a duration")])
def test_a_bad_train_budget_is_said_about_the_option_typed(capsys, recipe_file, tmp_path, budget, said):
    """`train --budget 10` names --budget and how to write a duration, not a recipe key or a --set override the user
    never typed; nothing is written."""
    code, _, err = run(capsys, "train", str(recipe_file), "--budget", budget, "--out", str(tmp_path / "run"))
    assert code == 2 and err.startswith("error: --budget:") and said in err, err
    assert "--set override" not in err and "Traceback" not in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["method.name=[suave]", "method.name={a: 1}", "method.assignment.name=[sinkhorn]"])
def test_a_part_name_that_is_not_a_string_is_one_paragraph_not_a_traceback(capsys, recipe_file, override):
    """A list or a mapping where a method's or an assignment's name goes was looked up in the registries as it was
    (TypeError: unhashable type, a traceback); it is a validation error naming the key, exit 2."""
    key = override.split("=")[0]
    code, _, err = run(capsys, "recipe", "show", str(recipe_file), "--set", override)
    assert code == 2 and "Traceback" not in err and key in err and "is not a valid recipe" in err, err


def test_a_saved_recipe_with_a_part_name_that_is_not_a_string_is_named(tmp_path):
    """The same in a run's saved recipe (what --resume and eval read): a SemiclustError naming method.name."""
    from semiclust.config.loader import with_method_defaults
    from semiclust.config.validation import validate_saved
    from semiclust.errors import SemiclustError

    raw = with_method_defaults(yaml.safe_load(yaml.safe_dump(TINY_RECIPE)))
    raw["method"]["name"] = ["suave"]
    with pytest.raises(SemiclustError, match="method.name"):
        validate_saved(raw, "the run's recipe.yaml")


def test_recipe_init_names_a_too_short_budget_as_the_option_typed(capsys, tmp_path):
    """`recipe init --budget 5s` is refused about --budget before any timing (it wrote a recipe that its own
    validation then refused, naming schedule.budget and a --set override); nothing is written."""
    out = tmp_path / "x.yaml"
    code, _, err = run(capsys, "recipe", "init", "--dataset", "synthetic", "--budget", "5s", "--out", str(out))
    assert code == 2 and err.startswith("error: --budget: a budget shorter than 10 seconds") and not out.exists(), err
