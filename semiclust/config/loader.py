"""The recipe loader: a YAML file (or a shipped recipe's name) and `--set` overrides into a `Recipe`.

Between reading and validating it does what needs the registries, which the schema must not know:
fills in the defaults of the chosen method (head shape, assignment, optimiser), so that `semiclust
recipe show` prints every value that will run; validates registered parts' sections with their own
classes; and checks every registered name (dataset, backbone, method, assignment) with a close match.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from semiclust.assign import ASSIGNMENTS
from semiclust.data.datasets import DATASETS
from semiclust.data.streams import Stream
from semiclust.errors import SemiclustError
from semiclust.methods import METHODS
from semiclust.models.backbones import backbone_kwargs_problems, check_backbone_name
from semiclust.config.shipped import find_recipe
from semiclust.config.schema import Recipe
from semiclust.config.validation import (RecipeYamlError, clipped, describe_errors, dump_yaml, invalid_recipe_message,
                                         load_yaml, read_yaml, registered_sections, short,
                                         without_other_methods_sections)

__all__ = ["apply_overrides", "dump_yaml", "load_raw", "load_recipe", "parse_override", "resolve"]


def quoted(text: str) -> str:
    """A --set argument as a message shows it: quoted, and cut when it is absurdly long."""
    return f"'{clipped(text, 160)}'"


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b.c=value' -> (['a','b','c'], YAML-parsed value)."""
    if "=" not in text:
        raise SemiclustError(f"--set {quoted(text)} is not of the form key.path=value, e.g. --set method.temperature=0.2.")
    key, _, value = text.partition("=")
    path = key.strip().split(".")
    if not all(path):
        raise SemiclustError(f"--set {quoted(text)} has an empty key in its dotted path; write e.g. optim.lr=0.1.")
    try:
        parsed = load_yaml(value, f"the value of --set {quoted(text)}") if value.strip() else ""
    except RecipeYamlError:
        raise
    except yaml.YAMLError as err:
        raise SemiclustError(f"--set {quoted(text)}: the value is not valid YAML ({err}).") from None
    return path, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted path in a copy of the raw recipe; creates intermediate sections. A number indexes a
    list (`data.unlabeled.crops.1.count=2` is the second crop group's count)."""
    result = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for depth, key in enumerate(path[:-1]):
            node = child_section(node, key, text, ".".join(path[: depth + 1]), path[depth + 1])
        if isinstance(node, list):
            node[list_index(node, path[-1], text, ".".join(path[:-1]))] = value
        else:
            node[path[-1]] = value
    return result


def child_section(node: dict | list, key: str, text: str, where: str, next_key: str) -> dict | list:
    """The section (or list) at `key` of `node`, created when missing from a section."""
    if isinstance(node, list):
        child = node[list_index(node, key, text, where.rpartition(".")[0])]
    else:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
    if not isinstance(child, (dict, list)):
        raise SemiclustError(
            f"--set {quoted(text)}: '{where}' holds a value ({short(child)}), not a section, so it has no "
            f"key '{next_key}'. Set '{where}' itself instead."
        )
    return child


def list_index(items: list, key: str, text: str, where: str) -> int:
    """`key` as an index into the list at `where`, with an error naming the valid ones."""
    if not key.isdigit() or int(key) >= len(items):
        raise SemiclustError(
            f"--set {quoted(text)}: '{where}' is a list of {len(items)} item(s), so its keys are the indices "
            f"0 to {len(items) - 1}, not '{key}'.")
    return int(key)


def load_raw(path: Path) -> dict[str, Any]:
    """Read a recipe file as a dict, with errors that name the file and the line."""
    path = Path(path)
    if path.is_dir():
        raise SemiclustError(f"recipe '{path}' is a folder, not a recipe file. Give the path of a YAML recipe (e.g. "
                             f"{path / 'recipe.yaml'} in a run directory) or the name of a shipped one.")
    if not path.exists():  # a FIFO or a device exists: read_yaml names what it is
        found = find_recipe(str(path))
        if found is None:
            raise SemiclustError(
                f"recipe file '{path}' does not exist. Give a path to a YAML recipe or the name of a "
                "shipped one (see `semiclust list recipes`)."
            )
        path = found
    try:
        raw = read_yaml(path)  # bounded: size, aliases, nesting; duplicate keys refused
    except RecipeYamlError:
        raise
    except yaml.YAMLError as err:
        raise SemiclustError(f"recipe '{path}' is not valid YAML: {err}. Fix the syntax at the line shown.") from None
    except OSError as err:
        raise SemiclustError(f"recipe '{path}' cannot be read ({err.strerror or err}); check its permissions.") from None
    if not isinstance(raw, dict):
        raise SemiclustError(
            f"recipe '{path}' must be a YAML mapping (name:, data:, model:, ...), got {type(raw).__name__}."
        )
    return raw


def with_method_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """Fill the head shape, assignment and optimiser settings the chosen method uses unless the recipe sets them
    (an assignment section without a name is the method's own: its keys change that one's defaults)."""
    method = raw.get("method")
    name = method.get("name") if isinstance(method, dict) else None
    if not isinstance(name, str) or name not in METHODS:
        return raw
    defaults = METHODS.get(name).defaults
    assignment = method.get("assignment", {})
    if isinstance(assignment, dict) and "name" not in assignment:  # e.g. --set method.assignment.epsilon=0.1 alone
        assignment = {"name": defaults.assignment, **assignment}
    filled = {**raw, "method": {**method, "assignment": assignment}}
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("head", {}), dict):
        filled["model"] = {**model, "head": {**defaults.head, **model.get("head", {})}}
    if isinstance(raw.get("optim"), dict) and defaults.optim:
        filled["optim"] = {**defaults.optim, **raw["optim"]}
    return filled


def _section(raw: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        raw = raw.get(key) if isinstance(raw, dict) else None
    return raw


def name_problems(raw: dict[str, Any]) -> list[str]:
    """Every registered name in the recipe that is not registered, with its closest match."""
    checks = [(("data", "dataset"), DATASETS.get), (("model", "backbone", "name"), check_backbone_name),
              (("method", "name"), METHODS.get), (("method", "assignment", "name"), ASSIGNMENTS.get)]
    problems = []
    for keys, lookup in checks:
        value = _section(raw, *keys)
        if isinstance(value, str) and len(value) > 100:
            problems.append(f"'{'.'.join(keys)}' = {short(value)}: no registered name is that long")
        elif isinstance(value, str):
            try:
                lookup(value)
            except SemiclustError as err:
                problems.append(f"'{'.'.join(keys)}' = {value!r}: {err}")
    return problems


def kwargs_problems(raw: dict[str, Any]) -> list[str]:
    """Backbone keyword arguments a user may not set (timm's loading options, keys semiclust sets, file paths),
    named at validation; `create_backbone` refuses them again wherever a network is built."""
    kwargs = _section(raw, "model", "backbone", "kwargs")
    return backbone_kwargs_problems(kwargs) if isinstance(kwargs, dict) else []


def resolve(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    """Method defaults, registered names and parts, then validation, `method` by the chosen method's own section
    (a former shared section it does not take is read while at its old defaults): one readable error for
    everything."""
    raw = without_other_methods_sections(with_method_defaults(raw), saved=False)
    problems = name_problems(raw) + kwargs_problems(raw)
    try:
        recipe = Recipe.model_validate(raw, context=registered_sections())
    except ValidationError as err:
        problems = describe_errors(err) + problems
    else:
        problems += method_problems(recipe)
    if problems:
        raise SemiclustError(invalid_recipe_message(source, problems))
    return recipe


def method_problems(recipe: Recipe) -> list[str]:
    """Options the chosen method's streams cannot use: the mixed unlabeled view needs two target crops of a method
    that trains on unlabeled data; several prototypes per class need labels. (An option a method does not take at
    all is refused by its own section.)"""
    if recipe.method.name not in METHODS:
        return []
    kind, spec, problems = METHODS.get(recipe.method.name), recipe.method, []
    unlabeled = Stream.UNLABELED in kind.streams
    if spec.unlabeled_mixup.enabled and (not unlabeled or spec.target_crops < 2):
        lacks = "uses no unlabeled images" if not unlabeled else "has target_crops 1"
        problems.append(f"'method.unlabeled_mixup' mixes the first two target crops of the unlabeled images, but "
                        f"method '{spec.name}' {lacks}: set method.unlabeled_mixup.enabled: false")
    if recipe.model.head.prototypes_per_class > 1 and Stream.LABELED not in kind.streams:
        problems.append(f"'model.head.prototypes_per_class' ties several prototypes to each class, but method "
                        f"'{spec.name}' trains without labels, so its prototypes are clusters, not classes: set it to 1")
    return problems


def load_recipe(path: Path | str, overrides: list[str] | None = None) -> Recipe:
    """Read, override (before validation, so overrides are type-checked) and validate a recipe."""
    return resolve(apply_overrides(load_raw(Path(path)), overrides or []), str(path))
