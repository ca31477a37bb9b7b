"""The recipe reference, generated from the pydantic schema: every key, its type, default and meaning.

`semiclust recipe reference` prints it; docs/recipe-reference.md is its output (a test regenerates
and compares), so the documentation cannot drift from what the code accepts.
"""
from __future__ import annotations

import inspect
import json
import types
import typing
from typing import Any, Literal

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from semiclust.assign import ASSIGNMENTS
from semiclust.config.schema import MethodSpec, PartSpec, PlainMethodSpec, Recipe
from semiclust.methods import METHODS

HEADER = """# Recipe reference

Generated from the schema in `semiclust/config/schema.py` and each registered part's own section by
`semiclust recipe reference`; do not edit by hand (`tests/test_docs.py` regenerates it and fails on
any difference). Every section forbids unknown keys. `semiclust recipe show RECIPE` prints a recipe
with every default filled in; the method's own defaults (head shape, assignment, optimiser) are
filled in before validation (see [recipes](recipes.md)).
"""


def _constraints(metadata: list[Any]) -> str:
    bounds = {Ge: ">=", Gt: ">", Le: "<=", Lt: "<"}
    parts = []
    for item in metadata:
        for kind, symbol in bounds.items():
            if isinstance(item, kind):
                parts.append(f"{symbol} {next(iter(vars(item).values()))}")
        if getattr(item, "min_length", None):
            parts.append(f"at least {item.min_length} item(s)")
    return ", ".join(parts)


def type_name(annotation: Any) -> str:
    """A short, readable type: `float (>= 0)`, `sgd | lars | adamw`, `list of crop group`..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        inner, extra = type_name(args[0]), _constraints(list(args[1:]))
        return f"{inner} ({extra})" if extra else inner
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " | ".join(names) + (" | null" if type(None) in args else "")
    if origin in (list, tuple):
        if origin is tuple and len(args) == 2 and args[0] == args[1]:
            return f"[{type_name(args[0])}, {type_name(args[1])}]"
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return f"section `{annotation.__name__}`"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default if field.default is not PydanticUndefined else field.default_factory()
    if isinstance(value, BaseModel):
        return "see section"
    return f"`{json.dumps(value, default=str)}`"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The section classes an annotation holds; a registered part's generic section stands for the
    registered sections (e.g. every assignment's)."""
    if annotation is PartSpec:
        return list(ASSIGNMENTS.specs().values())
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def own_fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """The keys a section declares: a method's own section shows only those beyond the keys every method takes."""
    if issubclass(model, MethodSpec) and model is not MethodSpec:
        return {name: field for name, field in model.model_fields.items() if name not in MethodSpec.model_fields}
    return model.model_fields


def method_sections(path: str) -> list[tuple[str, type[BaseModel]]]:
    """Each registered method section with options of its own, named by the methods that take it, and its
    nested sections."""
    found: list[tuple[str, type[BaseModel]]] = []
    specs = METHODS.specs(default=PlainMethodSpec)
    for section in dict.fromkeys(specs.values()):
        if own_fields(section):
            names = ", ".join(name for name, other in specs.items() if other is section)
            found += _sections(section, f"{path} (name: {names})")
    return found


def _sections(model: type[BaseModel], path: str) -> list[tuple[str, type[BaseModel]]]:
    """(dotted path, model) of `model` and every nested section, depth first, in declaration order; after the
    keys every method takes (`method`), each method's own section."""
    found = [(path, model)]
    base = path.split(" (")[0]
    for name, field in own_fields(model).items():
        for inner in _models_in(field.annotation):
            list_like = typing.get_origin(typing.get_args(field.annotation)[0] if typing.get_origin(
                field.annotation) is typing.Annotated else field.annotation) is list
            child = f"{base}.{name}" if base else name
            if list_like:
                child += "[]"
            tag = inner.model_fields.get("name")
            if len(_models_in(field.annotation)) > 1 and tag is not None and typing.get_origin(tag.annotation) is Literal:
                child += f" (name: {typing.get_args(tag.annotation)[0]})"
            found += _sections(inner, child)
            if inner is MethodSpec:
                found += method_sections(child)
    return found


def _anchor(path: str) -> str:
    """GitHub's anchor of a `## `path`` heading."""
    return "".join(c for c in path.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def render_reference() -> str:
    """The whole reference as Markdown: one table per section."""
    lines = [HEADER]
    rendered: dict[type, str] = {}
    repeated: list[str] = []  # sections shown as "same keys as": their children are not repeated either
    for path, model in _sections(Recipe, ""):
        if any(path.startswith(root + ".") for root in repeated):
            continue
        if model in rendered:
            repeated.append(path)
            lines += ["", f"## `{path}`", "", f"Same keys as [`{rendered[model]}`](#{_anchor(rendered[model])})."]
            continue
        rendered.setdefault(model, path)
        title = path or "top level"
        doc = inspect.cleandoc(model.__doc__ or "") if model.__doc__ and model is not Recipe else ""
        lines += ["", f"## `{title}`" if path else f"## {title}", ""]
        if doc and not doc.startswith(("Base for", "!!!")):
            lines += [" ".join(doc.split()), ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        base = path.split(" (")[0]
        for name, field in own_fields(model).items():
            meaning = " ".join((field.description or "").split()).replace("|", "\\|")
            kind = type_name(field.annotation).replace("|", "\\|")
            children = [child for child, _ in _sections(model, path) if child.split(" (")[0].rstrip("[]") ==
                        (f"{base}.{name}" if base else name)]
            if children:
                links = ", ".join(f"[`{child}`](#{_anchor(child)})" for child in children)
                kind = f"section: {links}" + (" or null" if "null" in kind else "")
            lines.append(f"| `{name}` | {kind} | {_default(field).replace('|', chr(92) + '|')} | {meaning} |")
    return "\n".join(lines) + "\n"


def undocumented_keys() -> list[str]:
    """Keys without a description (a test keeps this empty, so the reference explains every key);
    a key holding a section is explained by that section's docstring."""
    missing = []
    for path, model in _sections(Recipe, ""):
        for name, field in own_fields(model).items():
            if not field.description and not _models_in(field.annotation):
                missing.append(f"{path}.{name}" if path else name)
    return sorted(set(missing))
