"""Optional dependencies: each is imported only where it is used, and a missing one is a one-paragraph error
naming the extra that installs it (`pip install semiclust[onnx]`), never an ImportError's traceback."""
from __future__ import annotations

import importlib
from types import ModuleType

from semiclust.errors import SemiclustError


def require(module: str, extra: str, feature: str, fix_otherwise: str = "") -> ModuleType:
    """Import `module` for `feature`, or stop with the pip command of `extra` (and `fix_otherwise`, another way out)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        otherwise = f", or {fix_otherwise}" if fix_otherwise else ""
        raise SemiclustError(f"{feature} needs the '{module.split('.')[0]}' package, which is not installed: "
                             f"`pip install 'semiclust[{extra}]'`{otherwise}.") from None
