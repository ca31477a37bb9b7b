"""Datasets of image files: an ImageFolder tree, ImageNet with SimCLR subset lists, a labeled list."""
from __future__ import annotations
