"""Put per-tile model outputs back together into one block of logits.

``crop`` (the U-Net way): each output pixel is copied from the one tile whose core holds it.
``gaussian``: each tile's output, less ``blend_margin`` pixels on each side (the part without
full context), is added with a Gaussian weight that peaks at the tile centre and is non-zero
everywhere; the sum is divided by the summed weights. When the blended parts have full
context, every tile agrees with the whole-image pass there and the blend is exact to float
rounding; otherwise it is an approximation that hides seams. Tiles are added in global grid
order, so each pixel's floating-point sum is the same whatever the blocks are.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from tilesegment.grid import Tile, TileSpec

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


class BlockStitcher:
    """Accumulates tile outputs ``(K, o, o)`` into the block ``window`` ``(r0, r1, c0, c1)``."""

    def __init__(self, spec: TileSpec, window: tuple[int, int, int, int], num_classes: int):
        self.spec = spec
        self.window = window
        r0, r1, c0, c1 = window
        self.logits = np.zeros((num_classes, r1 - r0, c1 - c0), dtype=np.float32)
        if spec.blend == "gaussian":
            self.weights = np.zeros((r1 - r0, c1 - c0), dtype=np.float32)
            self.kernel = gaussian_weight(spec.blend_side)
            # Seam diagnostics: the first tile's class at each pixel, and whether any
            # later overlapping tile voted for another class.
            self.first_label = np.full((r1 - r0, c1 - c0), -1, dtype=np.int32)
            self.disagree = np.zeros((r1 - r0, c1 - c0), dtype=bool)

    def add(self, tile: Tile, output: np.ndarray) -> None:
        """Add one tile's model output ``(K, o, o)`` float32, ``o = tile - 2·shrink``."""
        spec = self.spec
        if spec.blend == "crop":
            # The kept core starts halo - shrink pixels into the output.
            keep = spec.halo - spec.shrink
            y0, x0 = tile.i * spec.core, tile.j * spec.core
            self._paste(output[:, keep:keep + spec.core, keep:keep + spec.core], y0, x0)
        else:
            m = spec.blend_margin
            used = output[:, m:spec.out_side - m, m:spec.out_side - m]
            y0, x0 = tile.row + spec.shrink + m, tile.col + spec.shrink + m
            self._paste(used, y0, x0, self.kernel, used.argmax(axis=0))

    def _paste(self, values: np.ndarray, y0: int, x0: int, kernel: np.ndarray | None = None,
               labels: np.ndarray | None = None):
        r0, r1, c0, c1 = self.window
        h, w = values.shape[1:]
        ya, yb = max(y0, r0), min(y0 + h, r1)
        xa, xb = max(x0, c0), min(x0 + w, c1)
        if ya >= yb or xa >= xb:
            return
        src = values[:, ya - y0:yb - y0, xa - x0:xb - x0]
        dst = (slice(None), slice(ya - r0, yb - r0), slice(xa - c0, xb - c0))
        if kernel is None:
            self.logits[dst] = src
        else:
            k = kernel[ya - y0:yb - y0, xa - x0:xb - x0]
            self.logits[dst] += src * k
            self.weights[dst[1:]] += k
            lab = labels[ya - y0:yb - y0, xa - x0:xb - x0]
            first = self.first_label[dst[1:]]
            unset = first < 0
            first[unset] = lab[unset]
            self.disagree[dst[1:]] |= ~unset & (first != lab)

    def disagreement(self) -> np.ndarray | None:
        """``bool (h, w)``: pixels where overlapping tiles' own argmax classes differ
        (``gaussian`` only; ``None`` for ``crop``, where each pixel has one tile)."""
        return self.disagree if self.spec.blend == "gaussian" else None

    def result(self) -> np.ndarray:
        """The block's logits ``(K, h, w)`` float32."""
        if self.spec.blend == "gaussian":
            return self.logits / self.weights
        return self.logits
