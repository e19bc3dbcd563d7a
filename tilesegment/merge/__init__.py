"""Mergers: tile outputs back into one block of logits (see :mod:`.base` for the contract).

A new blend is a module with a :class:`~tilesegment.merge.base.Merger` subclass plus one
line in :data:`MERGERS` (and its name in :data:`tilesegment.grid.BLEND_MODES`, which also
says how far a tile's used output reaches past its core).
"""

from __future__ import annotations

from tilesegment.merge.base import Merger, softmax
from tilesegment.merge.crop import CropMerger
from tilesegment.merge.gaussian import GaussianMerger

MERGERS: dict[str, type[Merger]] = {"crop": CropMerger, "gaussian": GaussianMerger}


def merger_for(blend: str) -> type[Merger]:
    """The merger class of the ``blend`` mode."""
    try:
        return MERGERS[blend]
    except KeyError:
        raise ValueError(f"blend {blend!r} unknown; use one of {tuple(MERGERS)}") from None


__all__ = ["MERGERS", "CropMerger", "GaussianMerger", "Merger", "merger_for", "softmax"]
