"""The documentation stays true: the generated recipe reference is current, every key is explained, every
page is linked from the README, and every `semiclust` command shown in README.md and docs/ runs."""
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from semiclust.cli import main
from semiclust.errors import SemiclustError
from semiclust.config.reference import render_reference, undocumented_keys
from tests.data.files import labeled_list_dataset

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = ("torchrun", "srun", "python3 -m venv", "pip ")  # launchers and installs: covered by the distributed and CI tests


def test_recipe_reference_is_generated_from_the_current_schema():
    assert (ROOT / "docs" / "recipe-reference.md").read_text() == render_reference(), (
        "docs/recipe-reference.md is stale: run `semiclust recipe reference > docs/recipe-reference.md`")


def test_every_recipe_key_is_explained():
    assert undocumented_keys() == []


def test_every_docs_page_is_linked_from_the_readme_and_every_link_resolves():
    readme = (ROOT / "README.md").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        assert f"docs/{page.name}" in readme, f"{page.name} is not linked from README.md"
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+?)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.name} links to missing '{target}'"


def documented_commands() -> list[tuple[str, str]]:
    """(page, command) for every `semiclust ...` line of every ```bash block, continuations joined."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = re.sub(r"\s+#.*$", "", line).strip()
                if "semiclust" in line and not line.startswith("#"):
                    found.append((page.name, line))
    return found


def test_the_docs_show_commands_at_all():
    commands = [c for _, c in documented_commands()]
    assert len(commands) > 25 and any(c.startswith("semiclust eval") for c in commands)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with what the docs' commands refer to: the shipped recipes, two short runs (the runs the
    docs train, made with 1 epoch), a folder of photos and a labeled list for the `labeled_list` example."""
    from semiclust.engine.trainer import train
    from semiclust.config.loader import load_recipe

    folder = tmp_path_factory.mktemp("docs")
    (folder / "recipes").symlink_to(ROOT / "recipes")
    labeled_list_dataset(folder / "mine", per_class=13, unlabeled_per_class=30, eval_per_class=2)  # fits the batches
    for name in ("labels.csv", "eval.csv"):  # the README's example: lists and photos/ in the working directory
        text = (folder / "mine" / name).read_text().replace("labeled/", "mine/labeled/").replace("held_out/", "mine/held_out/")
        (folder / name).write_text(text)
    shutil.copytree(folder / "mine" / "pool", folder / "photos")
    for recipe, run in (("digits_daino", "runs/daino"), ("digits_suave", "runs/digits_suave")):
        train(load_recipe(recipe, ["schedule.epochs=1", "schedule.warmup_epochs=0", "runtime.progress=none"]), folder / run)
    return folder


def run_documented(command: str) -> int:
    argv = shlex.split(command)
    if argv[:3] == ["python", "-m", "semiclust"]:
        argv = ["semiclust", *argv[3:]]
    argv = argv[1:]
    expanded = []
    for arg in argv:
        expanded += sorted(str(p) for p in Path().glob(arg)) if "*" in arg else [arg]
    if expanded[0] == "train" and "--dry-run" not in expanded:
        expanded.append("--dry-run")  # training as documented would take minutes: plan it instead
    with pytest.raises(SystemExit) as info:
        main(expanded)
    return info.value.code or 0


def test_every_documented_command_runs(workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("COLUMNS", "200")
    failures = []
    for page, command in documented_commands():
        if command.startswith(NOT_RUN) or " && " in command:
            continue
        code = run_documented(command)
        output = capsys.readouterr()
        if code != 0:
            failures.append(f"{page}: `{command}` exited {code}: {(output.err or output.out)[-400:]}")
    assert not failures, "\n".join(failures)


def test_the_extending_examples_work(monkeypatch, tmp_path):
    """Runs the ```python blocks of docs/extending.md, then uses what they registered: the backbone and the
    dataset directly, the assignment and the method each in a real training run through the recipe loader."""
    import copy
    import types

    import torch

    from semiclust import api
    from semiclust.assign import ASSIGNMENTS
    from semiclust.data.datasets import build_dataset
    from semiclust.models.backbones import create_backbone
    from semiclust.registry import DATASETS, METHODS
    from tests.helpers import TINY_RECIPE

    for registry in (ASSIGNMENTS, DATASETS, METHODS):  # the examples' entries are gone after the test
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(registry, "_specs", dict(registry._specs))
    module = types.ModuleType("docs_extending_examples")  # timm's register_model looks its module up
    sys.modules[module.__name__] = module
    for block in re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "extending.md").read_text(), re.S):
        exec(compile(block, "docs/extending.md", "exec"), module.__dict__)  # noqa: S102 - our own documentation
    backbone = create_backbone("small_net", {"width": 8}, in_chans=1)
    assert backbone(torch.randn(2, 1, 8, 8)).shape == (2, 8) and backbone.num_features == 8
    dataset = build_dataset("noise_squares", {"per_class": 4})
    assert len(dataset.train) == 8 and dataset.classes == ["left", "right"]
    raw = copy.deepcopy(TINY_RECIPE)
    raw["method"]["assignment"] = {"name": "sharpened_softmax", "temperature": 0.5}
    raw["schedule"]["epochs"] = 1
    recipe = api.load_recipe(write_recipe(tmp_path, raw))
    assert type(recipe.method.assignment).__name__ == "SharpenedSoftmaxSpec" and recipe.method.assignment.temperature == 0.5
    summary = api.train(recipe, tmp_path / "run")
    assert summary.steps == 6 and load_saved_recipe(summary)["method"]["assignment"] == {"name": "sharpened_softmax",
                                                                                         "temperature": 0.5}
    with pytest.raises(SemiclustError, match="did you mean 'method.assignment.temperature'"):
        api.load_recipe(write_recipe(tmp_path, raw), ["method.assignment.temprature=0.2"])
    trains_the_example_method(tmp_path, TINY_RECIPE)


def trains_the_example_method(tmp_path: Path, tiny: dict) -> None:
    """docs/extending.md's `teacher_suave`: its own option validated and saved, its teacher checkpointed beside the
    student and following it, another method's option refused naming it."""
    import copy

    import torch

    from semiclust import api
    from semiclust.engine.checkpoint import load_checkpoint

    raw = copy.deepcopy(tiny)
    raw["method"] = {"name": "teacher_suave", "mean_teacher": {"momentum": 0.9}}
    raw["schedule"]["epochs"] = 1
    recipe = api.load_recipe(write_recipe(tmp_path, raw))
    assert recipe.method.mean_teacher.momentum == 0.9 and recipe.model.head.layers == 2  # the method's defaults
    summary = api.train(recipe, tmp_path / "method_run")
    assert summary.steps == 6 and load_saved_recipe(summary)["method"]["mean_teacher"] == {"momentum": 0.9}
    saved = load_checkpoint(summary.checkpoint)
    assert saved.held_networks() == ["student", "teacher"]
    student, teacher = saved.network_tensors("student"), saved.network_tensors("teacher")
    assert student.keys() == teacher.keys() and not all(torch.equal(student[k], teacher[k]) for k in student)
    with pytest.raises(SemiclustError, match="method 'teacher_suave' does not take 'queue'"):
        api.load_recipe(write_recipe(tmp_path, raw), ["method.queue.length=64"])
    with pytest.raises(SemiclustError, match="did you mean 'method.mean_teacher.momentum'"):
        api.load_recipe(write_recipe(tmp_path, raw), ["method.mean_teacher.momentun=0.5"])


def write_recipe(folder: Path, raw: dict) -> Path:
    import json

    path = folder / "recipe.yaml"
    path.write_text(json.dumps(raw))
    return path


def load_saved_recipe(summary) -> dict:
    import yaml

    return yaml.safe_load((summary.run_dir / "recipe.yaml").read_text())
