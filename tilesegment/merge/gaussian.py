"""``gaussian``: overlapping tile outputs blended with a Gaussian weight.

Each tile's output, less ``blend_margin`` pixels on each side (the part without full
context), is added with a Gaussian weight that peaks at the tile centre and is non-zero
everywhere; the sum is divided by the summed weights. When the blended parts have full
context, every tile agrees with the whole-image pass there and the blend is exact to float
rounding; otherwise it is an approximation that hides seams.

The weight map is one of three presets (:data:`tilesegment.grid.GAUSSIAN_PRESETS`), each
σ = side/8 of the blended square (``side`` = :attr:`~tilesegment.grid.TileSpec.blend_side`):

- ``tilesegment`` (the default): sampled at pixel centres about ``(side - 1)/2`` in float64,
  product of the two axes, floored at ``MIN_WEIGHT`` = 1e-3 of the peak, cast to float32.
- ``monai``: MONAI's ``compute_importance_map(mode="gaussian", sigma_scale=0.125)`` (as in
  ``sliding_window_inference``): the same samples computed in float32, clamped below at
  ``max(min, 1e-3)``. Equal to ``tilesegment`` to float32 rounding.
- ``nnunet``: nnU-Net v2's ``compute_gaussian`` (σ = tile/8): a unit impulse at pixel
  ``side // 2`` (half a pixel off centre for even sides) smoothed by SciPy's
  ``gaussian_filter`` (a normalised kernel truncated at 4σ, zero outside), divided by its
  maximum, stored in float16 (nnU-Net's default) and zeros replaced by the smallest
  non-zero value.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from tilesegment.grid import Tile, TileSpec
from tilesegment.merge.base import Merger, Window

MIN_WEIGHT = 1e-3
"""Floor of the Gaussian weight relative to its peak, so no output pixel has zero weight."""


SIGMA_FRACTION = 0.125
"""σ over the side of the blended square, in every preset (MONAI's ``sigma_scale``,
nnU-Net's ``1/8``)."""


@lru_cache(maxsize=8)
def gaussian_weight(side: int, sigma_fraction: float = SIGMA_FRACTION,
                    preset: str = "tilesegment") -> np.ndarray:
    """A read-only ``(side, side)`` float32 weight map of ``preset`` (see the module text),
    peak 1."""
    sigma = max(side * sigma_fraction, 1e-6)
    if preset == "tilesegment":
        x = np.arange(side, dtype=np.float64) - (side - 1) / 2
        g = np.exp(-(x**2) / (2 * sigma**2))
        w = np.maximum(np.outer(g, g), MIN_WEIGHT).astype(np.float32)
    elif preset == "monai":
        x = np.arange(side, dtype=np.float32) - np.float32((side - 1) / 2)
        g = np.exp(x**2 / np.float32(-2 * sigma**2), dtype=np.float32)
        w = (g[:, None] * g[None, :]).astype(np.float32)
        w = np.maximum(w, max(float(w.min()), MIN_WEIGHT)).astype(np.float32)
    elif preset == "nnunet":
        radius = int(4.0 * sigma + 0.5)  # SciPy's truncate=4.0
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1, dtype=np.float64) / sigma) ** 2)
        taps /= taps.sum()
        offset = np.arange(side) - side // 2  # the impulse sits at side // 2
        g = np.where(np.abs(offset) <= radius, taps[np.clip(offset + radius, 0, 2 * radius)],
                     0.0)
        w = np.outer(g, g)
        w = (w / w.max()).astype(np.float16)
        if (w == 0).any():
            w[w == 0] = w[w != 0].min()
        w = w.astype(np.float32)
    else:
        raise ValueError(f"gaussian preset {preset!r} unknown")
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
        self.kernel = gaussian_weight(spec.blend_side, preset=spec.blend_preset)
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
