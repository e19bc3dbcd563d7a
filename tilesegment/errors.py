"""The exception hierarchy: one root, each leaf also a fitting builtin.

The CLI turns any :class:`TilesegmentError` into a one-line message and exit status 1.
"""

from __future__ import annotations


class TilesegmentError(Exception):
    """Root of every error tilesegment raises on purpose."""


class InputError(TilesegmentError, ValueError):
    """The input raster cannot be opened or read (missing, damaged, unsupported)."""


class DamagedInputError(InputError):
    """The input file is damaged: truncated, a TIFF block past the end, a corrupt block."""


class GeometryError(TilesegmentError, ValueError):
    """Tile, halo or block sizes that do not fit the model or the raster."""


class ModelError(TilesegmentError, ValueError):
    """Unknown model name, bad weights file, or a model that breaks the contract."""


class OutputExistsError(TilesegmentError, FileExistsError):
    """The output exists and ``overwrite`` was not asked for."""


class OutputError(TilesegmentError, OSError):
    """The output cannot be written."""


class ConfigError(TilesegmentError, ValueError):
    """A recipe file that cannot be read or names unknown settings."""


class RandomWeightsWarning(UserWarning):
    """A model was built without weights: its output is meaningless except for testing."""
