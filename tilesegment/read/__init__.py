"""Readers: open a raster lazily as ``(C, H, W)`` and read windows of it.

``open_raster(source, level=..., mpp=...)`` is the entry point; every reader implements
the :class:`Raster` contract of :mod:`tilesegment.read.base`.
"""

from __future__ import annotations

from tilesegment.read.base import Georef, LevelInfo, Raster, Window
from tilesegment.read.dispatch import open_raster

__all__ = ["Georef", "LevelInfo", "Raster", "Window", "open_raster"]
