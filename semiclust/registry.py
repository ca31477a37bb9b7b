"""Registries in the shape of timm's register_model / create_model / list_models, and the registries
themselves: datasets, assignments and methods each register with `@REGISTRY.register(name)` in their
own module (backbones register with timm's own `register_model`).

This is a leaf module: it imports nothing of semiclust but the errors, so every layer can register.
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
from typing import Callable, Generic, Iterable, TypeVar

from semiclust.errors import SemiclustError, examples

T = TypeVar("T")


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to `name` (for 'did you mean ...?'), or None if nothing is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    """One sentence naming an unknown registry entry, its closest match and where to list the rest."""
    guess = closest(name, known)
    hint = f" Did you mean '{guess}'?" if guess else ""
    return f"unknown {kind} '{name}'.{hint} Known {kind}s: {examples(known, 12, quote=False)} (see `semiclust list {kind}s`)."


def first_line(text: str | None) -> str:
    """The first line of a docstring (a registry entry's summary for `semiclust list`)."""
    lines = inspect.cleandoc(text or "").splitlines()
    return lines[0] if lines else ""


class Registry(Generic[T]):
    """Maps names to entries (factories or classes). `register` is a decorator, optionally recording the
    entry's recipe section class (`spec`); `get` fails with a close match; `names` lists, for the CLI."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._specs: dict[str, type] = {}

    def register(self, name: str, spec: type | None = None) -> Callable[[T], T]:
        def decorator(entry: T) -> T:  # without `spec`, a registered base class's section is inherited
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = entry
            inherited = spec or self._inherited_spec(entry)
            if inherited is not None:
                self._specs[name] = inherited
            return entry

        return decorator

    def _inherited_spec(self, entry: T) -> type | None:
        """The section class of the nearest registered base class of `entry` (a subclass of Suave registered without
        a section of its own takes Suave's, as it takes its parts), or None."""
        for base in getattr(entry, "__mro__", ())[1:]:
            for name, registered in self._entries.items():
                if registered is base and name in self._specs:
                    return self._specs[name]
        return None

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise SemiclustError(unknown_name_message(self.kind, name, self.names()))
        return self._entries[name]

    def spec(self, name: str) -> type:
        """The recipe section class registered with `name` (an unknown name is the usual error)."""
        self.get(name)
        return self._specs[name]

    def specs(self, default: type | None = None) -> dict[str, type]:
        """The recipe section class of each entry registered with one (with `default`: of every entry, `default`
        standing for those registered without)."""
        if default is None:
            return dict(sorted(self._specs.items()))
        return {name: self._specs.get(name, default) for name in self.names()}

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self, pattern: str | None = None) -> list[str]:
        names = sorted(self._entries)
        return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names

    def summary(self, name: str) -> str:
        """One line about an entry: its `summary` attribute, else its docstring's first line."""
        entry = self.get(name)
        return getattr(entry, "summary", "") or first_line(entry.__doc__)


DATASETS: Registry[Callable] = Registry("dataset")
ASSIGNMENTS: Registry[type] = Registry("assignment")
METHODS: Registry[type] = Registry("method")
