"""``crop`` (the U-Net way): each block pixel is copied from the one tile whose core holds it."""

from __future__ import annotations

import numpy as np

from tilesegment.grid import Tile
from tilesegment.merge.base import Merger


class CropMerger(Merger):
    """Pastes each tile's core (``tile - 2·halo`` on a side, starting ``halo - shrink``
    pixels into its output) where it lies; cores tile the raster without overlap. An
    output already cut to its core (:meth:`core_crop`, done by the predictor on its
    device) is pasted as it is."""

    name = "crop"

    @staticmethod
    def core_crop(spec) -> tuple[int, int]:
        """``(start, size)`` of a tile's core in its output."""
        return spec.halo - spec.shrink, spec.core

    def add_one(self, tile: Tile, output: np.ndarray) -> None:
        spec = self.spec
        keep = 0 if output.shape[-1] == spec.core else spec.halo - spec.shrink
        core = output[:, keep:keep + spec.core, keep:keep + spec.core]
        # The core starts at the tile's origin plus the halo (i·core for grid tiles).
        where = self.overlap(tile.row + spec.halo, tile.col + spec.halo, spec.core, spec.core)
        if where is not None:
            src, dst = where
            self.logits[(slice(None), *dst)] = core[(slice(None), *src)]

    def result(self) -> np.ndarray:
        return self.logits
