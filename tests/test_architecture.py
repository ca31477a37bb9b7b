"""The layers of docs/architecture.md hold in the code: every module of semiclust/ is on the map, no import
(module-level or inside a function) points up a layer, and the imports form no cycle."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "semiclust"
MAP = ROOT / "docs" / "architecture.md"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(parts) or "semiclust"


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def documented_layers(text: str) -> dict[str, int]:
    """Module -> layer, read from the table under '## Layers' of docs/architecture.md."""
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for number, cells in re.findall(r"^\| (\d) [^|]*\| (.*) \|$", section, re.M):
        for name in re.findall(r"`([^`]+)`", cells):
            assert name not in layers, f"{name} is listed twice in the layer table"
            layers[name] = int(number)
    return layers


def resolve(target: str, known: dict[str, Path]) -> str | None:
    """The semiclust module an import names (`semiclust.x.y` or a name inside it), or None."""
    if target != "semiclust" and not target.startswith("semiclust."):
        return None
    name = target.removeprefix("semiclust").removeprefix(".") or "semiclust"
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in known else None


def imports_in(source: str, this: str, is_package: bool, known: dict[str, Path]) -> set[str]:
    """Every semiclust module the source of module `this` imports, anywhere in it (functions and
    TYPE_CHECKING blocks too)."""
    package = this if is_package else this.rsplit(".", 1)[0] if "." in this else "semiclust"
    found = set()
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = ("semiclust." + package if package != "semiclust" else "semiclust").split(".")
                base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            module = resolve(target, known)
            if module is not None and module != this:
                found.add(module)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_in(path.read_text(), name, path.name == "__init__.py", known) for name, path in known.items()}


def upward_imports(edges: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    return [f"{module} (layer {layers[module]}) imports {target} (layer {layers[target]})"
            for module, targets in edges.items() for target in sorted(targets)
            if module in layers and target in layers and layers[target] > layers[module]]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_every_module_is_on_the_map_and_the_map_names_only_modules():
    layers, present = documented_layers(MAP.read_text()), set(modules())
    assert sorted(present - layers.keys()) == [], "modules missing from docs/architecture.md's layer table"
    assert sorted(layers.keys() - present) == [], "docs/architecture.md lists modules that do not exist"


def test_no_import_points_up_the_layers():
    assert upward_imports(graph(), documented_layers(MAP.read_text())) == []


def test_the_imports_form_no_cycle():
    assert cycles(graph()) == []


@pytest.mark.parametrize("source, expected", [
    ("from semiclust.data import datasets\n", {"data", "data.datasets"}),
    ("def f():\n    from semiclust.api import train\n", {"api"}),
    ("import semiclust.engine.dist as d\n", {"engine.dist"}),
    ("from . import losses\n", {"methods", "methods.losses"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from semiclust.engine.setup import Run\n", {"engine.setup"}),
])
def test_the_checker_sees_every_kind_of_import(source, expected):
    """Module-level, function-local, aliased, relative and type-checking imports are all found (a checker
    that missed one would pass on a cycle)."""
    assert imports_in(source, "methods.probe", False, modules()) == expected


def test_a_cycle_and_an_upward_import_are_caught():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert upward_imports({"low": {"high"}, "high": {"low"}}, {"low": 1, "high": 3}) == [
        "low (layer 1) imports high (layer 3)"]


# ---------------------------------------------------------------- issue 26: names and parts that show
ROOT_MODULES_AT_MOST = 12
# Words a checkpoint's dict shares with other formats of semiclust, which spell them in their own modules: a recipe
# (`method`, `recipe` in an export's card), metrics.jsonl records (`step`, `epoch`, `eval`, `corrupt_images`), the
# export metadata and timm's config (`classes`, `mean`, `std`, `in_chans`, `num_classes`, `prototypes`,
# `semiclust_version`, `labeled_sha256`, `labeled_list_sha256`, `format`, `format_version`, timm's `classifier`),
# device names (`cuda`) and the name of the validation split in an evaluation result (`validation`).
SHARED_WORDS = {"method", "recipe", "step", "epoch", "eval", "corrupt_images", "classes", "mean", "std", "in_chans",
                "num_classes", "prototypes", "semiclust_version", "labeled_sha256", "labeled_list_sha256", "format",
                "format_version", "classifier", "cuda", "validation"}


def string_constants(source: str) -> set[str]:
    return {node.value for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Constant)
            and isinstance(node.value, str)}


def test_the_checkpoint_keys_are_spelled_in_one_module():
    """Only engine/checkpoint.py reads and writes a checkpoint's dict; every other module reads the typed
    Checkpoint by attribute, so the keys only a checkpoint has appear nowhere else as strings."""
    import dataclasses

    from semiclust.engine.checkpoint import Checkpoint, ClassifierInfo, RankState

    keys = {f.name for kind in (Checkpoint, ClassifierInfo, RankState) for f in dataclasses.fields(kind)}
    assert SHARED_WORDS - keys == {"format", "format_version"} and len(keys - SHARED_WORDS) >= 15
    spelled = {name: sorted(string_constants(path.read_text()) & (keys - SHARED_WORDS))
               for name, path in modules().items() if name != "engine.checkpoint"}
    assert {name: found for name, found in spelled.items() if found} == {}


def test_the_package_root_holds_at_most_twelve_modules():
    root = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(root) <= ROOT_MODULES_AT_MOST, root


def test_the_api_imports_without_aliases():
    """Names that do not collide: semiclust/api.py needs no `import ... as` (it imported six functions so)."""
    tree = ast.parse((PACKAGE / "api.py").read_text())
    aliased = [alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
               for alias in node.names if alias.asname]
    assert aliased == []


def test_no_gradient_scaler_branch_and_one_evaluation_class():
    """The scaler is GradScaler(enabled=...) with unconditional calls (nanoGPT); one class named Evaluation."""
    sources = {name: path.read_text() for name, path in modules().items()}
    assert [name for name, text in sources.items() if re.search(r"scaler is (not )?None", text)] == []
    defined = [name for name, text in sources.items() if re.search(r"^class Evaluation\b", text, re.M)]
    assert defined == ["api"]
