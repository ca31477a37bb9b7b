"""A small generic registry in the shape of timm's register_model / create_model / list_models."""
from __future__ import annotations

import difflib
import fnmatch
from typing import Callable, Generic, Iterable, TypeVar

from semiclust.errors import SemiclustError

T = TypeVar("T")


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to `name` (for 'did you mean ...?'), or None if nothing is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    """One sentence naming an unknown registry entry, its closest match and where to list the rest."""
    guess = closest(name, known)
    hint = f" Did you mean '{guess}'?" if guess else ""
    shown = ", ".join(known) if len(known) <= 12 else ", ".join(known[:12]) + ", ..."
    return f"unknown {kind} '{name}'.{hint} Known {kind}s: {shown} (see `semiclust list {kind}s`)."


class Registry(Generic[T]):
    """Maps names to factories. `register` is a decorator; `get` fails with a close match."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = entry
            return entry

        return decorator

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise SemiclustError(unknown_name_message(self.kind, name, self.names()))
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self, pattern: str | None = None) -> list[str]:
        names = sorted(self._entries)
        return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names
