"""A raw recipe dict into a `Recipe`, with every problem in one readable paragraph; and back to YAML.

Leaf-level like the schema (pydantic, yaml and the errors only): the trainer, evaluation and export
validate the recipes saved in run directories and checkpoints with it. The recipe loader
(`semiclust/recipe.py`) adds the registries' checks on top and words its problems the same way.
"""
from __future__ import annotations

import typing
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from semiclust.registry import closest
from semiclust.schema import PartSpec, Recipe
from semiclust.errors import SemiclustError


def validate(raw: dict[str, Any], source: str = "recipe", context: dict | None = None) -> Recipe:
    """Validate a raw dict into a Recipe; every problem becomes one readable SemiclustError."""
    try:
        return Recipe.model_validate(raw, context=context)
    except ValidationError as err:
        raise SemiclustError(invalid_recipe_message(source, describe_errors(err))) from None


def validate_saved(raw: dict[str, Any], source: str, context: dict | None = None) -> Recipe:
    """A recipe saved by semiclust (a run directory's recipe.yaml, a checkpoint's): as `validate`, and one saved
    before batches were global (its data.batch has no `per`) keeps meaning what it meant, batches per process.
    `context` (the registered assignment sections) fills the keys an assignment gained since with their defaults."""
    return validate(with_legacy_batches(raw), source, context)


def with_legacy_batches(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` with data.batch.per: process when a saved recipe's batch section predates the key."""
    data = raw.get("data")
    batch = data.get("batch") if isinstance(data, dict) else None
    if not isinstance(batch, dict) or "per" in batch:
        return raw
    return {**raw, "data": {**data, "batch": {**batch, "per": "process"}}}


def invalid_recipe_message(source: str, problems: list[str]) -> str:
    return (f"{source} is not a valid recipe: {'; '.join(problems)}. Fix the key in the YAML file or the --set "
            "override (`semiclust recipe show` prints every valid key with its default).")


def dump_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML, every default written out."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, default_flow_style=None, width=100)


def flat_values(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested recipe dict as {dotted key: value}, list items by index (`data.unlabeled.crops[1].size`): the
    recipe as MLflow's parameters, and what `semiclust compare` compares between runs."""
    if isinstance(tree, dict) and tree:
        return {k: v for key, value in tree.items() for k, v in flat_values(value, f"{prefix}.{key}" if prefix else key).items()}
    if isinstance(tree, list) and any(isinstance(item, (dict, list)) for item in tree):
        return {k: v for i, item in enumerate(tree) for k, v in flat_values(item, f"{prefix}[{i}]").items()}
    return {prefix: tree}


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types an annotation may hold (Optional, Annotated, SerializeAsAny and unions unwrapped)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin is Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType"):
        return [found for arg in typing.get_args(annotation) for found in _unwrap(arg)]
    return [annotation]


def part_sections(model: type[BaseModel]) -> list[type[BaseModel]]:
    """A registered part's section classes: the subclasses of PartSpec (or `model` itself otherwise)."""
    if model is not PartSpec:
        return [model]
    found, todo = [], list(PartSpec.__subclasses__())
    while todo:
        cls = todo.pop(0)
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found or [PartSpec]


def _keys_at(loc: tuple[Any, ...]) -> list[str]:
    """The valid keys of the section a validation error's location points into."""
    models: list[type[BaseModel]] = [Recipe]
    for part in loc[:-1]:
        following: list[type[BaseModel]] = []
        for model in models:
            field = model.model_fields.get(part) if isinstance(part, str) else None
            if field is None:  # a list index: stay in the same section type
                following.append(model)
                continue
            for candidate in _unwrap(field.annotation):
                if typing.get_origin(candidate) is list:
                    candidate = _unwrap(typing.get_args(candidate)[0])[0]
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    following.extend(part_sections(candidate))
        models = list(dict.fromkeys(following))
    return list(dict.fromkeys(key for model in models for key in model.model_fields))


def dotted(loc: tuple[Any, ...]) -> str:
    """('data', 'unlabeled', 'crops', 0, 'size') -> 'data.unlabeled.crops[0].size'."""
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int) and parts:
            parts[-1] += f"[{part}]"
        else:
            parts.append(str(part))
    return ".".join(parts)


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    where = dotted(loc) or "(top level)"
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx", {})
    if kind == "extra_forbidden":
        guess = closest(str(loc[-1]), _keys_at(loc))
        hint = f"; did you mean '{dotted(loc[:-1] + (guess,))}'?" if guess else ""
        return f"'{where}' is not a known key (value {value!r}){hint}"
    if kind == "missing":
        return f"'{where}' is required but missing"
    if kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        options = [o.strip(" '\"") for o in expected.replace(" or ", ",").split(",") if o.strip()]
        guess = closest(str(value), options)
        hint = f"; did you mean '{guess}'?" if guess else ""
        return f"'{where}' is {value!r}, expected one of {expected}{hint}"
    message = error["msg"].removeprefix("Value error, ")
    if not loc:  # a rule across sections: its message names the keys; never dump the whole recipe
        return message
    if isinstance(value, dict):  # a rule of a section: the keys are in the message, the section is not repeated
        return f"'{where}': {message}"
    return f"'{where}' = {_short(value)}: {message}"


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...}"


def describe_errors(err: ValidationError) -> list[str]:
    """One phrase per validation error, naming the dotted key, the value and what is expected."""
    return [_describe(e) for e in err.errors()]
