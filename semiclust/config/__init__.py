"""Recipes: the schema (`schema`), validation and YAML reading (`validation`), where shipped recipes live
(`shipped`), the loader with method defaults, registered names and --set (`loader`), the generated reference
(`reference`) and `semiclust recipe init` (`init`).

This `__init__` imports nothing, so that importing the schema (layer 0) does not import the loader (layer 4).
"""
