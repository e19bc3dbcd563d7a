"""``gaussian``: overlapping tile outputs blended with a Gaussian weight.

Each tile's output, less ``blend_margin`` pixels on each side (the part without full
context), is added with a Gaussian weight that peaks at the tile centre and is non-zero
everywhere; the sum is divided by the summed weights. When the blended parts have full
context, every tile agrees with the whole-image pass there and the blend is exact to float
rounding; otherwise it is an approximation that hides seams.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from tilesegment.grid import Tile, TileSpec
from tilesegment.merge.base import Merger, Window

MIN_WEIGHT = 1e-3
"""Floor of the Gaussian weight relative to its peak, so no output pixel has zero weight."""


@lru_cache(maxsize=8)
def gaussian_weight(side: int, sigma_fraction: float = 0.125) -> np.ndarray:
    """A ``(side, side)`` float32 Gaussian with peak 1 at the centre and floor ``MIN_WEIGHT``."""
    sigma = max(side * sigma_fraction, 1e-6)
    x = np.arange(side, dtype=np.float64) - (side - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    w = np.maximum(np.outer(g, g), MIN_WEIGHT).astype(np.float32)
    w.setflags(write=False)
    return w


class GaussianMerger(Merger):
    """Weighted sum of overlapping outputs over the summed weights; also records where the
    overlapping tiles' own argmax classes differ (seam diagnostics)."""

    name = "gaussian"

    def __init__(self, spec: TileSpec, window: Window, num_classes: int) -> None:
        super().__init__(spec, window, num_classes)
        r0, r1, c0, c1 = window
        self.weights = np.zeros((r1 - r0, c1 - c0), dtype=np.float32)
        self.kernel = gaussian_weight(spec.blend_side)
        # The first tile's class at each pixel, and whether a later tile voted otherwise.
        self.first_label = np.full((r1 - r0, c1 - c0), -1, dtype=np.int32)
        self.disagree = np.zeros((r1 - r0, c1 - c0), dtype=bool)

    def add_one(self, tile: Tile, output: np.ndarray) -> None:
        spec = self.spec
        m = spec.blend_margin
        used = output[:, m:spec.out_side - m, m:spec.out_side - m]
        y0, x0 = tile.row + spec.shrink + m, tile.col + spec.shrink + m
        where = self.overlap(y0, x0, *used.shape[1:])
        if where is None:
            return
        src, dst = where
        labels = used.argmax(axis=0)
        k = self.kernel[src]
        self.logits[(slice(None), *dst)] += used[(slice(None), *src)] * k
        self.weights[dst] += k
        lab = labels[src]
        first = self.first_label[dst]
        unset = first < 0
        first[unset] = lab[unset]
        self.disagree[dst] |= ~unset & (first != lab)

    def disagreement(self) -> np.ndarray:
        return self.disagree

    def result(self) -> np.ndarray:
        return self.logits / self.weights
