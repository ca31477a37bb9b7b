"""semiclust: semi-supervised image classification with self-supervised clustering (Suave, Daino).

The library API lives in `semiclust.api` (train, dry_run, evaluate, export, load_classifier, predict,
check_data, compare); its functions are also reachable from here, imported on first use so that `import
semiclust` stays light.
"""
from semiclust.version import __version__

API = ("load_recipe", "train", "dry_run", "evaluate", "export", "load_classifier", "predict", "check_data", "compare",
       "catalogue")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    if name in API:
        from semiclust import api

        return getattr(api, name)
    raise AttributeError(f"module 'semiclust' has no attribute {name!r}")
