"""semiclust: semi-supervised image classification with self-supervised clustering (Suave, Daino)."""

__version__ = "0.1.0"


def load_classifier(path, device="cpu"):
    """An exported classifier (`semiclust export --content classifier`), ready to run; see semiclust.export."""
    from semiclust.export import load_classifier as load

    return load(path, device)
