"""Where shipped recipes live, so `semiclust train digits_suave` works as well as a path."""
from __future__ import annotations

import fnmatch
import os
from pathlib import Path


def recipe_dirs() -> list[Path]:
    """$SEMICLUST_RECIPES, ./recipes, then the recipes/ folder beside the package (a source checkout)."""
    candidates = []
    if os.environ.get("SEMICLUST_RECIPES"):
        candidates.append(Path(os.environ["SEMICLUST_RECIPES"]))
    candidates.append(Path.cwd() / "recipes")
    candidates.append(Path(__file__).resolve().parents[2] / "recipes")
    seen: list[Path] = []
    for folder in candidates:
        if folder.is_dir() and folder.resolve() not in [s.resolve() for s in seen]:
            seen.append(folder)
    return seen


def shipped_recipes(pattern: str | None = None) -> dict[str, Path]:
    """Recipe name (file stem) -> path, first folder wins."""
    found: dict[str, Path] = {}
    for folder in recipe_dirs():
        for path in sorted(folder.glob("*.yaml")):
            if pattern is None or fnmatch.fnmatch(path.stem, pattern):
                found.setdefault(path.stem, path)
    return found


def find_recipe(name: str) -> Path | None:
    """A shipped recipe by bare name (with or without .yaml), or None; paths are never guessed."""
    if "/" in name or os.sep in name:
        return None
    return shipped_recipes().get(Path(name).stem if name.endswith(".yaml") else name)


class ShippedRecipes:
    """The recipes `semiclust list recipes` shows: each shipped recipe's name and its file."""

    kind = "recipe"

    def names(self, pattern: str | None = None) -> list[str]:
        return list(shipped_recipes(pattern))

    def summary(self, name: str) -> str:
        return str(shipped_recipes()[name])


RECIPES = ShippedRecipes()
