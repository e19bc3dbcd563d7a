"""Read a window that may reach past the raster edge, extended by the pad mode; cut tiles.

The raster is treated as an infinite canvas: outside ``[0, H) × [0, W)`` each pixel takes
the value the pad mode gives it (``reflect``: mirror without repeating the edge, as NumPy
and torch; ``symmetric``: mirror repeating the edge, what Dask calls "reflect"; ``edge``;
``constant``). The value of a canvas pixel depends only on its coordinates, so any window
of it equals the same window of ``numpy.pad`` applied to the whole raster, even where the
pad is wider than the raster (strips thinner than the halo, rasters smaller than a tile).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tilesegment.grid import PAD_MODES

Reader = Callable[[tuple[int, int, int, int]], np.ndarray]


def source_index(coords: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Map canvas coordinates along one axis of length ``n`` to raster indices.

    Returns int64 indices in ``[0, n)``; for ``constant`` the out-of-range ones are clipped
    (the caller masks them).
    """
    if mode == "reflect":
        if n == 1:
            return np.zeros_like(coords)
        period = 2 * (n - 1)
        m = np.mod(coords, period)
        return np.where(m < n, m, period - m)
    if mode == "symmetric":
        period = 2 * n
        m = np.mod(coords, period)
        return np.where(m < n, m, period - 1 - m)
    if mode in ("edge", "constant"):
        return np.clip(coords, 0, n - 1)
    raise ValueError(f"pad mode {mode!r} unknown; use one of {PAD_MODES}")


def read_canvas(
    read: Reader,
    shape: tuple[int, int],
    window: tuple[int, int, int, int],
    mode: str,
    cval: float = 0.0,
) -> np.ndarray:
    """Read canvas ``window`` ``(r0, r1, c0, c1)`` of a raster ``(H, W)`` through ``read``.

    ``read((r0, r1, c0, c1))`` must return the in-raster window as ``(C, h, w)``. Only the
    bounding box of the raster pixels the window needs is read. Returns ``(C, r1-r0, c1-c0)``
    in the reader's dtype (``constant`` fills with ``cval``).
    """
    h, w = shape
    r0, r1, c0, c1 = window
    rows = source_index(np.arange(r0, r1), h, mode)
    cols = source_index(np.arange(c0, c1), w, mode)
    sr0, sr1 = int(rows.min()), int(rows.max()) + 1
    sc0, sc1 = int(cols.min()), int(cols.max()) + 1
    src = read((sr0, sr1, sc0, sc1))
    if sr0 == r0 and sr1 == r1 and sc0 == c0 and sc1 == c1:
        return src  # wholly inside: no copy
    out = src[:, rows - sr0][:, :, cols - sc0]
    if mode == "constant":
        outside_r = (np.arange(r0, r1) < 0) | (np.arange(r0, r1) >= h)
        outside_c = (np.arange(c0, c1) < 0) | (np.arange(c0, c1) >= w)
        out[:, outside_r, :] = cval
        out[:, :, outside_c] = cval
    return out


def cut_tiles(
    canvas: np.ndarray, origin: tuple[int, int], corners: list[tuple[int, int]], side: int
) -> np.ndarray:
    """Stack square tiles ``(N, C, side, side)`` cut from ``canvas`` ``(C, h, w)``.

    ``origin`` is the canvas position of ``canvas[:, 0, 0]``; ``corners`` the canvas positions
    of each tile's top-left pixel.
    """
    oy, ox = origin
    return np.stack([canvas[:, y - oy:y - oy + side, x - ox:x - ox + side] for y, x in corners])
