"""Optional dependencies: each is imported only where it is used, and a missing one is a one-paragraph error
naming the extra that installs it (`pip install 'semiclust[onnx]'`), never an ImportError's traceback."""
from __future__ import annotations

import importlib
from types import ModuleType

from semiclust.errors import SemiclustError


def require(module: str, extra: str, feature: str, otherwise: str = "", package: str | None = None) -> ModuleType:
    """Import `module` for `feature`, or stop naming `package` (default: the module's top level), the pip command
    of the `extra` that installs it, and `otherwise`, another way out."""
    try:
        return importlib.import_module(module)
    except ImportError:
        alternative = f", or {otherwise}" if otherwise else ""
        raise SemiclustError(f"{feature} needs the '{package or module.split('.')[0]}' package, which is not installed: "
                             f"`pip install 'semiclust[{extra}]'`{alternative}.") from None
