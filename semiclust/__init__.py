"""semiclust: semi-supervised image classification with self-supervised clustering (Suave, Daino)."""

__version__ = "0.1.0"
