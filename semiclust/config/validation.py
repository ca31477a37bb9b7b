"""A raw recipe dict into a `Recipe`, with every problem in one readable paragraph; and back to YAML.

Leaf-level like the schema (pydantic, yaml, the errors and the registries, whose registered sections check their
parts' keys): the trainer, evaluation and export validate the recipes saved in run directories and checkpoints with
it (`validate_saved`, which reads the recipes of earlier versions). The recipe loader
(`semiclust/config/loader.py`) adds the registries' checks on top and words its problems the same way. It also
reads every recipe YAML (`load_yaml`, `read_yaml`: size, alias and nesting limits, duplicate keys refused),
and bounds every value a message shows (`short`).
"""
from __future__ import annotations

import os
import reprlib
import stat
import typing
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from semiclust.config.schema import MethodSpec, PartSpec, PlainMethodSpec, Recipe, part_name
from semiclust.errors import SemiclustError
from semiclust.registry import ASSIGNMENTS, METHODS, closest

MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few KB; a file this large is not one (1 MiB)
MAX_YAML_NODES = 100_000  # values once every alias is expanded (a full recipe has a few hundred)
MAX_YAML_CHARS = 4 << 20  # characters of text once every alias is expanded
MAX_YAML_DEPTH = 64  # sections and lists inside one another (a recipe nests about 6 deep)
MAX_PROBLEMS = 12  # problems one message lists; the rest are counted


def registered_sections() -> dict[str, dict[str, type]]:
    """The validation context that checks each registered part's section with its own class: the assignments' and
    the methods' (a method registered without a section of its own takes the keys every method takes, no other).
    The registries hold the parts whose modules are imported (every built-in one once `semiclust.methods` is)."""
    return {"assignment_specs": ASSIGNMENTS.specs(), "method_specs": METHODS.specs(default=PlainMethodSpec)}


def validate(raw: dict[str, Any], source: str = "recipe", context: dict | None = None) -> Recipe:
    """Validate a raw dict into a Recipe, each registered part's section by its own class (`registered_sections`,
    unless `context` is given); every problem becomes one readable SemiclustError."""
    try:
        return Recipe.model_validate(raw, context=registered_sections() if context is None else context)
    except ValidationError as err:
        raise SemiclustError(invalid_recipe_message(source, describe_errors(err))) from None


def with_method_section(recipe: Recipe, source: str = "the recipe") -> Recipe:
    """`recipe` with its method section checked by the chosen method's own class. One validated without the
    registries' context (`Recipe.model_validate(raw)` in a notebook) carries the generic section, where a method's
    own options (Suave's queue, Daino's teacher) are plain dicts and a misspelt key passes unnoticed."""
    if type(recipe.method) is not MethodSpec:
        return recipe
    return validate(recipe.model_dump(mode="json"), source)


def validate_saved(raw: dict[str, Any], source: str, context: dict | None = None) -> Recipe:
    """A recipe saved by semiclust (a run directory's recipe.yaml, a checkpoint's): as `validate`, and one saved
    before batches were global (its data.batch has no `per`) keeps meaning what it meant, batches per process; the
    sections every method's recipe held before each method owned its own (`method.queue`, `method.teacher`) are
    dropped where the chosen method does not take them (they did nothing there). Keys a part gained since take
    their defaults."""
    return validate(without_other_methods_sections(with_legacy_batches(raw)), source, context)


# The sections every method's recipe held before each method owned its section (issue 26), at their defaults then:
# a recipe file that carries one for a method that does not take it (as `semiclust recipe show` printed every
# recipe) still reads while it holds those defaults; a saved recipe's is dropped whatever it holds.
SHARED_BEFORE = {"queue": {"length": 0, "start_epoch": 0}, "teacher": {"momentum": 0.990, "momentum_end": 1.0}}


def without_other_methods_sections(raw: Any, saved: bool = True) -> Any:
    """`raw` without the sections of SHARED_BEFORE that its method does not take: all of them in a saved recipe,
    those at their former defaults otherwise (a value that would now be ignored stays, and is refused)."""
    method = raw.get("method") if isinstance(raw, dict) else None
    section = METHODS.specs(default=PlainMethodSpec).get(part_name(method))
    if section is None:
        return raw
    dropped = {key for key, defaults in SHARED_BEFORE.items() if key in method and key not in section.model_fields
               and (saved or at_defaults(method[key], defaults))}
    return {**raw, "method": {k: v for k, v in method.items() if k not in dropped}} if dropped else raw


def at_defaults(value: Any, defaults: dict[str, Any]) -> bool:
    """Whether a section holds only keys of `defaults`, at those values."""
    return isinstance(value, dict) and all(key in defaults and value[key] == defaults[key] for key in value)


def with_legacy_batches(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` with data.batch.per: process when a saved recipe's batch section predates the key."""
    data = raw.get("data")
    batch = data.get("batch") if isinstance(data, dict) else None
    if not isinstance(batch, dict) or "per" in batch:
        return raw
    return {**raw, "data": {**data, "batch": {**batch, "per": "process"}}}


def invalid_recipe_message(source: str, problems: list[str]) -> str:
    """Every problem of a recipe in one paragraph (the first MAX_PROBLEMS, and how many more)."""
    more = len(problems) - MAX_PROBLEMS
    listed = [_unstopped(p) for p in problems[:MAX_PROBLEMS]] + ([f"and {more} more problem(s)"] if more > 0 else [])
    body = "; ".join(listed)
    return (f"{source} is not a valid recipe: {body}{'' if body.endswith('?') else '.'} Fix the key in the YAML file "
            "or the --set override (`semiclust recipe show` prints every valid key with its default).")


def _unstopped(phrase: str) -> str:
    """A phrase without its closing full stop, for a list joined by ';' (no `?.` or `).;` in a message)."""
    return phrase[:-1] if phrase.endswith(".") and not phrase.endswith("...") else phrase


def dump_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML, every default written out."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, default_flow_style=None, width=100)


# ---------------------------------------------------------------- YAML read in bounded memory
class RecipeYamlError(SemiclustError, yaml.YAMLError):
    """YAML semiclust will not read (size, aliases, nesting, duplicate keys, encoding): a SemiclustError (one
    paragraph, exit 2) that is also a yaml.YAMLError, so code that handles unreadable YAML handles it."""


class RecipeYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping (YAML keeps the last one silently) and,
    while composing, nesting deeper than MAX_YAML_DEPTH (long before Python's recursion limit)."""

    def __init__(self, stream: str, source: str):
        super().__init__(stream)
        self.source, self.depth = source, 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise RecipeYamlError(f"{self.source} has values nested more than {MAX_YAML_DEPTH} levels deep (a "
                                      "recipe nests about 6): it is not a recipe. Give the recipe file itself.")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            refuse_duplicate_keys(self, node)
        return super().construct_mapping(node, deep=deep)


def refuse_duplicate_keys(loader: RecipeYamlLoader, node: yaml.MappingNode) -> None:
    """A key written twice in one mapping, with both lines (merge keys, `<<: *base`, may be overridden)."""
    lines: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key, line = loader.construct_object(key_node, deep=True), key_node.start_mark.line + 1
        try:
            first = lines.get(key)
        except TypeError:  # an unhashable key: PyYAML's own error follows
            continue
        if first is not None:
            where = f"line {line} (twice)" if first == line else f"lines {first} and {line}"
            raise RecipeYamlError(f"{loader.source} sets the key {short(key, 60)} twice in one section, on {where}: "
                                  "YAML would silently keep the last value. Delete the one you do not mean.")
        lines[key] = line


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def expanded_size(root: yaml.Node) -> tuple[int, int, int, int] | None:
    """Values, characters of text and depth of a composed document with every alias expanded, and its distinct
    nodes; counted once per node over the alias graph (memoised, no recursion), so the count never expands
    anything. None when an alias sits inside the node it names (a value that never ends)."""
    sizes: dict[int, tuple[int, int, int]] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if children_done:
            open_nodes.discard(id(node))
            parts = [sizes[id(child)] for child in _children(node)]
            text = len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            sizes[id(node)] = (1 + sum(p[0] for p in parts), text + sum(p[1] for p in parts),
                               1 + max((p[2] for p in parts), default=0))
        elif id(node) in open_nodes:
            return None
        else:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return (*sizes[id(root)], len(sizes))


def check_expanded_size(root: yaml.Node, source: str) -> None:
    """Refuse a document whose aliases (`*name`) would expand it beyond the limits (a billion-laughs recipe)."""
    size = expanded_size(root)
    if size is None:
        raise RecipeYamlError(f"{source} has an alias that refers to itself (used inside the value of its own anchor, "
                              "as in `a: &a [*a]`): that value never ends. Remove the alias.")
    values, chars, depth, distinct = size
    if values > MAX_YAML_NODES or chars > MAX_YAML_CHARS:
        expands = f"expands to {values:,} values and {chars:,} characters of text once its aliases (*name) are " \
                  f"replaced by what they name" if values > distinct else f"holds {values:,} values"
        raise RecipeYamlError(f"{source} {expands}; a recipe is a few hundred values, and semiclust reads at most "
                              f"{MAX_YAML_NODES:,} values and {MAX_YAML_CHARS >> 20} MiB of text. Write the values out, "
                              "with fewer aliases.")
    if depth > MAX_YAML_DEPTH:
        raise RecipeYamlError(f"{source} has values nested more than {MAX_YAML_DEPTH} levels deep once its aliases are "
                              "expanded (a recipe nests about 6): it is not a recipe. Give the recipe file itself.")


def load_yaml(text: str, source: str) -> Any:
    """YAML text (a recipe, a --set value) as Python values, safely (plain values only) and in bounded memory: text
    under MAX_RECIPE_BYTES, aliases that expand within the limits, no duplicate keys; what semiclust refuses is a
    RecipeYamlError naming `source` (e.g. "recipe 'r.yaml'"), a syntax error PyYAML's own (with its line), both
    yaml.YAMLError. Every place semiclust reads recipe YAML uses this."""
    if len(text) > MAX_RECIPE_BYTES:
        raise RecipeYamlError(f"{source} is {len(text):,} characters long; a recipe is a few KB, and semiclust reads "
                              "at most 1 MiB of one. Give the recipe itself, not a data file.")
    loader = RecipeYamlLoader(text, source)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        check_expanded_size(root, source)
        return loader.construct_document(root)
    finally:
        loader.dispose()


def read_yaml(path: Path | str, what: str = "recipe") -> Any:
    """A YAML file (a recipe, a run directory's recipe.yaml) as `load_yaml` reads text; refused before it is read
    when it is not a regular file (a FIFO would block for ever) or larger than MAX_RECIPE_BYTES, and named by
    its first byte that is not UTF-8. A file that cannot be opened raises OSError, as open() does."""
    path, source = Path(path), f"{what} '{path}'"
    handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # OSError as open() (missing, no permission)
    with os.fdopen(handle, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise RecipeYamlError(f"{source} is not a regular file (a device, pipe or socket). Give the path of a "
                                  "YAML recipe file.")
        if info.st_size > MAX_RECIPE_BYTES:
            raise RecipeYamlError(f"{source} is {info.st_size / 2**20:.1f} MiB; a recipe is a few KB of YAML, and "
                                  "semiclust reads at most 1 MiB of one. Give the recipe file itself, not a data or "
                                  "checkpoint file.")
        data = file.read(MAX_RECIPE_BYTES + 1)
    return load_yaml(utf8_text(data, source), source)


def utf8_text(data: bytes, source: str) -> str:
    """A file's bytes as text; bytes that are not UTF-8 are named by their offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        utf16 = " (it starts with a UTF-16 byte-order mark: it was saved as UTF-16)" if data[:2] in (
            b"\xff\xfe", b"\xfe\xff") else ""
        raise RecipeYamlError(
            f"{source} is not UTF-8 text: byte {err.start} (0x{data[err.start]:02x}) is not valid UTF-8{utf16}. "
            "Recipes are UTF-8; save the file as UTF-8 (your editor's encoding setting).") from None


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
    """A registered part's section classes: the subclasses of PartSpec, the methods' sections (or `model` itself
    otherwise)."""
    if model is MethodSpec:
        return [MethodSpec, *dict.fromkeys(METHODS.specs(default=PlainMethodSpec).values())]
    if model is not PartSpec:
        return [model]
    found, todo = [], list(PartSpec.__subclasses__())
    while todo:
        cls = todo.pop(0)
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found or [PartSpec]


def _sections(annotation: Any) -> list[type[BaseModel]]:
    """The section classes a field holds (a list field's items)."""
    found: list[type[BaseModel]] = []
    for candidate in _unwrap(annotation):
        if typing.get_origin(candidate) is list:
            candidate = _unwrap(typing.get_args(candidate)[0])[0]
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            found.extend(part_sections(candidate))
    return found


def _keys_at(loc: tuple[Any, ...]) -> list[str]:
    """The valid keys of the section a validation error's location points into."""
    models: list[type[BaseModel]] = [Recipe]
    for part in loc[:-1]:
        following: list[type[BaseModel]] = []
        for model in models:
            field = model.model_fields.get(part) if isinstance(part, str) else None
            following.extend([model] if field is None else _sections(field.annotation))  # a list index: same type
        models = list(dict.fromkeys(following))
    return list(dict.fromkeys(key for model in models for key in model.model_fields))


def _union_member(loc: tuple[Any, ...]) -> bool:
    """Whether the last part of an error's location is pydantic's tag of one member of a union field (e.g.
    `literal['auto']` or `constrained-int` after `data.loader.workers`), not a key of the recipe."""
    if not loc or not isinstance(loc[-1], str):
        return False
    models, field = [Recipe], None
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = next((model.model_fields[part] for model in models if part in model.model_fields), None)
        if field is None:
            return False
        models = _sections(field.annotation)
    members = [t for t in _unwrap(field.annotation) if t is not type(None)] if field is not None else []
    return len(members) > 1 and not any(loc[-1] in model.model_fields for model in models)


def dotted(loc: tuple[Any, ...]) -> str:
    """('data', 'unlabeled', 'crops', 0, 'size') -> 'data.unlabeled.crops[0].size' (an absurdly long key cut)."""
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int) and parts:
            parts[-1] += f"[{part}]"
        else:
            text = str(part)
            parts.append(text if len(text) <= 60 else text[:56] + " ...")
    return ".".join(parts)


# Pydantic's wording that names its own types, in plain words.
PLAIN_WORDS = {
    "model_type": "expected a section (keys with their values, indented under it)",
    "model_attributes_type": "expected a section (keys with their values, indented under it)",
    "dict_type": "expected a mapping (keys with their values)",
    "list_type": "expected a list",
    "path_type": "expected a file path",
    "string_type": "expected text",
}
MEMBER_WORDS = {"bool": "true/false", "int": "an integer", "constrained-int": "an integer", "float": "a number",
                "constrained-float": "a number", "str": "text"}
BOUNDS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of")


def _literal_guess(value: Any, expected: str) -> str:
    """'; did you mean ...?' for a text value close to one of a literal's options."""
    options = [o.strip(" '\"") for o in expected.replace(" or ", ",").split(",") if o.strip()]
    guess = closest(value, options) if isinstance(value, str) and len(value) <= 100 else None
    return f"; did you mean '{guess}'?" if guess else ""


def _describe_union(errors: list[dict[str, Any]]) -> str:
    """One phrase for the errors of every member of a union field: "expected 'auto' or an integer"."""
    words, hint = [], ""
    for error in errors:
        if error["type"] == "literal_error":
            words.append(str(error.get("ctx", {}).get("expected", "")))
            hint = hint or _literal_guess(error.get("input"), words[-1])
            continue
        word = MEMBER_WORDS.get(str(error["loc"][-1]), str(error["loc"][-1]))
        words.append(f"{word} {error['msg'].removeprefix('Input should be ')}" if error["type"] in BOUNDS else word)
    return f"'{dotted(tuple(errors[0]['loc'][:-1]))}' = {short(errors[0].get('input'))}: expected {' or '.join(words)}{hint}"


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    where = dotted(loc) or "(top level)"
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx", {})
    if kind == "extra_forbidden":
        key = str(loc[-1])
        guess = closest(key, _keys_at(loc)) if len(key) <= 100 else None
        hint = f"; did you mean '{dotted(loc[:-1] + (guess,))}'?" if guess else ""
        return f"'{where}' is not a known key (value {short(value)}){hint}"
    if kind == "missing":
        return f"'{where}' is required but missing"
    if kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        return f"'{where}' is {short(value)}, expected one of {expected}{_literal_guess(value, expected)}"
    if kind in PLAIN_WORDS:
        return f"'{where}' = {short(value)}: {PLAIN_WORDS[kind]}"
    message = clipped(error["msg"].removeprefix("Value error, "))
    if not loc:  # a rule across sections: its message names the keys; never dump the whole recipe
        return message
    if isinstance(value, dict):  # a rule of a section: the keys are in the message, the section is not repeated
        return f"'{where}': {message}"
    return f"'{where}' = {short(value)}: {message}"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 60, 60, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = 6
_REPR.maxdict = 4


def short(value: Any, limit: int = 120) -> str:
    """A value for a message, bounded however large or deeply nested it is: a few items of each list and
    section (reprlib), never the whole value rendered and then cut."""
    return clipped(_REPR.repr(value), limit)


def clipped(text: str, limit: int = 400) -> str:
    """`text` cut to `limit` characters (a message built from a value semiclust did not bound itself)."""
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def describe_errors(err: ValidationError) -> list[str]:
    """One phrase per problem, naming the dotted key, the value (bounded) and what is expected; the errors of the
    members of a union field (`'auto'` or an integer) become one phrase."""
    phrases: dict[Any, Any] = {}
    for index, error in enumerate(err.errors(include_url=False)):
        loc = tuple(error["loc"])
        if error["type"] != "extra_forbidden" and _union_member(loc):
            phrases.setdefault(loc[:-1], []).append(error)
        else:
            phrases[index] = _describe(error)
    return [_describe_union(phrase) if isinstance(phrase, list) else phrase for phrase in phrases.values()]
