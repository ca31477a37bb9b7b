"""Recipes and backbone arguments from hostile or careless hands (issue 22): YAML read in bounded memory (file
size, aliases, nesting) with duplicate keys refused; every value an error message shows is bounded; backbone
keyword arguments limited to plain architecture values wherever a network is built; `recipe init` never replaces
a file without --force; and the recipe errors that named pydantic types read as plain words."""
from __future__ import annotations

import copy
import json
import time

import pytest
import torch
import yaml

from semiclust.errors import SemiclustError
from semiclust.models.backbones import backbone_kwargs_problems, create_backbone
from semiclust.config.loader import apply_overrides, load_raw, load_recipe, parse_override, resolve
from semiclust.config.validation import MAX_RECIPE_BYTES, load_yaml, read_yaml
from tests.helpers import TINY_RECIPE
from tests.test_cli import run as cli


def error_for(raw: dict) -> str:
    with pytest.raises(SemiclustError) as info:
        resolve(raw, "r.yaml")
    return str(info.value)


def changed(path: str, value) -> dict:
    raw = copy.deepcopy(TINY_RECIPE)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return raw


def laughs(levels: int, indent: str = "  ") -> str:
    """The billion-laughs document: each level an anchored list of nine aliases of the level below (9**levels
    strings once expanded, from a few hundred bytes)."""
    lines = [f'{indent}l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels + 1):
        lines.append(f"{indent}l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def tiny_yaml() -> str:
    return yaml.safe_dump(TINY_RECIPE, sort_keys=False)


# ---------------------------------------------------------------- 9. alias and size limits
def test_a_billion_laughs_recipe_is_refused_in_bounded_time_and_memory(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(tiny_yaml() + "bomb:\n" + laughs(7))  # 9**7 = 4.8 million strings from 600 bytes
    started = time.perf_counter()
    with pytest.raises(SemiclustError) as info:
        load_recipe(path)
    message = str(info.value)
    assert time.perf_counter() - started < 5
    assert len(message) < 1000 and "\n" not in message
    assert "alias" in message and str(path) in message


def test_a_nested_alias_bomb_in_a_known_key_prints_a_short_error(tmp_path):
    """The 2 KB bomb of the issue put where a value is expected (its literal error rendered the whole value)."""
    path = tmp_path / "nested.yaml"
    path.write_text(tiny_yaml().replace("device: cpu", "device: *l6") + "x-anchors:\n" + laughs(6))
    text = path.read_text()
    path.write_text(text[text.index("x-anchors"):] + text[: text.index("x-anchors")])  # anchors before their use
    with pytest.raises(SemiclustError) as info:
        load_recipe(path)
    assert len(str(info.value)) < 1000 and "alias" in str(info.value)


def test_a_recursive_alias_and_deep_nesting_are_refused_not_a_traceback():
    with pytest.raises(SemiclustError, match="refers to itself"):
        load_yaml("a: &a [1, *a]\n", "recipe 'r.yaml'")
    with pytest.raises(SemiclustError, match="nested more than"):
        load_yaml("a: " + "[" * 2000 + "]" * 2000 + "\n", "recipe 'r.yaml'")
    with pytest.raises(SemiclustError, match="nested more than"):
        parse_override("data.options.x=" + "{a: " * 400 + "1" + "}" * 400)


def test_a_recipe_file_over_the_size_limit_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(tiny_yaml() + ("# padding\n" * (MAX_RECIPE_BYTES // 10 + 1)))
    with pytest.raises(SemiclustError) as info:
        load_raw(path)
    assert "1 MiB" in str(info.value) and str(path) in str(info.value)
    assert load_raw(_written(tmp_path / "ok.yaml", tiny_yaml()))["name"] == "tiny"


def _written(path, text):
    path.write_text(text)
    return path


def test_read_yaml_refuses_what_is_not_a_regular_file(tmp_path):
    """A run directory's recipe.yaml may be anything; a FIFO would block an open() forever."""
    import os

    fifo = tmp_path / "recipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(SemiclustError, match="not a regular file"):
        read_yaml(fifo, "run recipe")
    plain = _written(tmp_path / "plain.yaml", "a: 1\n")
    assert read_yaml(plain, "run recipe") == {"a": 1}
    for special in (fifo, "/dev/zero"):  # given as a recipe: named for what it is, not "does not exist"
        with pytest.raises(SemiclustError, match="not a regular file"):
            load_raw(special)


def test_an_alias_bomb_in_a_set_value_is_refused():
    bomb = "{" + ", ".join(f"k{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9) if i else '1, 1, 1, 1, 1, 1, 1, 1, 1'}]"
                           for i in range(8)) + "}"
    with pytest.raises(SemiclustError, match="alias"):
        apply_overrides(copy.deepcopy(TINY_RECIPE), [f"data.options.x={bomb}"])


def test_ordinary_anchors_and_merge_keys_still_load():
    text = "base: &base {size: 8, flip: 0.0}\nother:\n  <<: *base\n  size: 4\nlist: [*base, *base]\n"
    loaded = load_yaml(text, "recipe 'r.yaml'")
    assert loaded["other"] == {"size": 4, "flip": 0.0} and loaded["list"] == [{"size": 8, "flip": 0.0}] * 2


def test_every_value_an_error_shows_is_bounded():
    long_list = ["cuda"] * 5000
    for raw in (changed("runtime.device", long_list), changed("method.temperatur", long_list),
                changed("runtime.loggers", ["wandb"] * 5000), changed("data.dataset", "x" * 100_000),
                changed("method.name", "y" * 100_000), changed("runtime", {"k" * 100_000: 1}),
                changed("data.unlabeled.crops", [{"count": "x"}] * 200)):
        message = error_for(raw)
        assert len(message) < 2500, message[:300]
    with pytest.raises(SemiclustError) as info:
        apply_overrides({"a": "v" * 100_000}, ["a.b=1"])
    assert len(str(info.value)) < 500


# ---------------------------------------------------------------- 18. duplicate keys
def test_a_duplicate_key_is_refused_with_both_lines(tmp_path):
    path = _written(tmp_path / "dup.yaml", tiny_yaml() + "seed: 3\n")
    first = tiny_yaml().splitlines().index("seed: 0") + 1
    last = len(tiny_yaml().splitlines()) + 1
    with pytest.raises(SemiclustError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "'seed'" in message and f"lines {first} and {last}" in message and str(path) in message
    nested = _written(tmp_path / "nested.yaml", "name: x\nmodel:\n  head: {out: 8, out: 16}\n")
    with pytest.raises(SemiclustError, match=r"'out'.*line 3"):
        load_raw(nested)
    with pytest.raises(SemiclustError, match="'a'"):
        parse_override("data.options={a: 1, a: 2}")


def test_duplicate_key_on_the_command_line(capsys, tmp_path):
    path = _written(tmp_path / "dup.yaml", tiny_yaml() + "seed: 3\n")
    code, _, err = cli(capsys, "recipe", "validate", str(path))
    assert code == 2 and "seed" in err and "Traceback" not in err


# ---------------------------------------------------------------- 8. backbone kwargs
@pytest.mark.parametrize("key, value", [("checkpoint_path", "/etc/passwd"), ("pretrained", True),
                                        ("pretrained_cfg_overlay", {"file": "w.pt"}), ("cache_dir", "/tmp")])
def test_timm_loading_options_are_refused_in_a_recipe(key, value):
    message = error_for(changed("model.backbone.kwargs", {"widths": [8, 16], key: value}))
    assert f"'model.backbone.kwargs.{key}'" in message and "model.init" in message
    assert message.count(f"model.backbone.kwargs.{key}'") == 1


def test_keys_semiclust_sets_and_file_like_keys_and_values_are_refused():
    message = error_for(changed("model.backbone.kwargs", {"in_chans": 3, "num_classes": 10}))
    assert "'model.backbone.kwargs.in_chans'" in message and "data.options.channels" in message
    assert "'model.backbone.kwargs.num_classes'" in message and "semiclust sets" in message
    message = error_for(changed("model.backbone.kwargs", {"features_only": True}))
    assert "'model.backbone.kwargs.features_only'" in message and "pooled features" in message
    message = error_for(changed("model.backbone.kwargs", {"weights_file": "w"}))
    assert "'model.backbone.kwargs.weights_file'" in message and "file" in message
    message = error_for(changed("model.backbone.kwargs", {"norm": "../../etc/passwd"}))
    assert "'model.backbone.kwargs.norm'" in message and "plain values" in message


def test_the_backbone_kwargs_used_today_stay_allowed():
    for kwargs in ({"widths": [32, 64, 96], "convs_per_stage": 3, "norm": "none", "drop_rate": 0.1},
                   {"img_size": 16, "patch_size": 4, "dynamic_img_size": True, "drop_path_rate": 0.0},
                   {"layers": [1, 1, 1, 1]}, {"img_size": [224, 224], "global_pool": "", "act_layer": "gelu_tanh",
                                              "init_values": 1.0e-5, "exportable": True}):
        assert backbone_kwargs_problems(kwargs) == [], kwargs


def test_create_backbone_refuses_a_file_path_whatever_the_caller(tmp_path):
    victim = _written(tmp_path / "victim.pt", "not a checkpoint")
    with pytest.raises(SemiclustError) as info:
        create_backbone("tinyconv", {"widths": [4], "checkpoint_path": str(victim)}, in_chans=1)
    assert "'model.backbone.kwargs.checkpoint_path'" in str(info.value)


def test_an_export_whose_metadata_names_a_checkpoint_path_is_refused(tmp_path):
    """`predict` rebuilds the network from an export's metadata: the same check, before timm sees the path."""
    from safetensors.torch import save_file

    from semiclust.models.classifier import load_export

    victim = _written(tmp_path / "victim.pt", "not a checkpoint")
    spec = {"backbone": {"name": "tinyconv", "kwargs": {"widths": [4], "checkpoint_path": str(victim)}}}
    metadata = {"format": "semiclust", "format_version": "1", "content": "classifier", "model_spec": json.dumps(spec),
                "in_chans": "1", "num_classes": "2", "classes": '["a", "b"]', "prototypes": "unit",
                "eval_view": '{"size": 8}', "mean": "[0.5]", "std": "[0.5]", "temperature": "0.1"}
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"), metadata=metadata)
    with pytest.raises(SemiclustError, match="checkpoint_path"):
        load_export(tmp_path / "model.safetensors")


def test_dry_run_names_a_refused_kwarg_in_one_paragraph(capsys, tmp_path):
    raw = changed("model.backbone.kwargs", {"widths": [8, 16], "checkpoint_path": "/etc/passwd"})
    path = _written(tmp_path / "r.yaml", yaml.safe_dump(raw))
    code, _, err = cli(capsys, "train", str(path), "--dry-run")
    assert code == 2 and "checkpoint_path" in err and "Traceback" not in err


# ---------------------------------------------------------------- 19. budget and plain words
def test_a_budget_without_a_unit_says_so():
    for raw in (changed("schedule", {"budget": 10}), apply_overrides(copy.deepcopy(TINY_RECIPE),
                                                                      ["schedule.budget=10", "schedule.epochs=null"]),
                changed("schedule", {"budget": "10"})):
        message = error_for(raw)
        assert "unit" in message and "10m" in message and "valid string" not in message


def test_train_budget_without_a_unit_on_the_command_line(capsys):
    code, _, err = cli(capsys, "train", "digits_suave", "--budget", "10", "--dry-run")
    assert code == 2 and "unit" in err and "valid string" not in err and "Traceback" not in err


def test_union_and_section_errors_read_as_plain_words():
    message = error_for(changed("runtime.channels_last", "maybe"))
    assert "literal" not in message and "'runtime.channels_last' = 'maybe': expected 'auto' or true/false" in message
    message = error_for(changed("data.loader", {"workers": -1}))
    assert "constrained" not in message and "expected 'auto' or an integer greater than or equal to 0" in message
    for path, value in (("model", 3), ("data.eval", 3), ("schedule", "x")):
        message = error_for(changed(path, value))
        assert "instance of" not in message and "a section" in message, message
    message = error_for(changed("data.labels.list", 3))
    assert "pathlib" not in message and "a file path" in message


def test_a_hint_or_a_listing_is_not_followed_by_a_second_full_stop():
    message = error_for(changed("data.loader", {"workers": "autoo"}))
    assert "did you mean 'auto'? Fix the key" in message and "?." not in message
    message = error_for(changed("data.dataset", "digitz"))
    assert "`).." not in message and "(see `semiclust list datasets`). Fix the key" in message


# ---------------------------------------------------------------- 6. recipe init never replaces a file unasked
def test_recipe_init_refuses_an_existing_file_unless_forced(capsys, tmp_path, monkeypatch):
    from semiclust import api
    from semiclust.config.init import InitResult

    out = _written(tmp_path / "r.yaml", "mine: true\n")
    calls = []

    def fake_init(*args, **kwargs):
        calls.append(args)
        return InitResult(resolve(copy.deepcopy(TINY_RECIPE)), "name: new\n")

    monkeypatch.setattr(api, "init_recipe", fake_init)
    code, _, err = cli(capsys, "recipe", "init", "--data", str(tmp_path), "--out", str(out))
    assert code == 2 and "--force" in err and "Traceback" not in err and err.strip().count("\n\n") == 0
    assert out.read_text() == "mine: true\n" and not calls  # refused before any work
    code, _, err = cli(capsys, "recipe", "init", "--data", str(tmp_path), "--out", str(out), "--force")
    assert code == 0, err
    assert out.read_text() == "name: new\n" and len(calls) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
