"""Seam diagnostics: are pixels near tile-core boundaries worse than the interior?

Cores lie on the global grid of side ``core`` anchored at the origin; the internal core
boundaries are the rows and columns at multiples of ``core`` strictly inside the raster.
A pixel is in the *seam band* when it lies within ``width`` pixels of such a boundary.
"""

from __future__ import annotations

import numpy as np


def seam_band(window: tuple[int, int, int, int], shape: tuple[int, int], core: int,
              width: int) -> np.ndarray:
    """``bool (h, w)``: pixels of ``window`` within ``width`` px of an internal core
    boundary of a raster of ``shape`` tiled with cores of side ``core``."""
    r0, r1, c0, c1 = window

    def near(lo: int, hi: int, n: int) -> np.ndarray:
        x = np.arange(lo, hi)
        below = (x // core) * core          # boundary at or above-left of x
        above = below + core
        d_below = np.where(below > 0, x - below, np.iinfo(np.int64).max)
        d_above = np.where(above < n, above - 1 - x, np.iinfo(np.int64).max)
        return np.minimum(d_below, d_above) < width

    return near(r0, r1, shape[0])[:, None] | near(c0, c1, shape[1])[None, :]
