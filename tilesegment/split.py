"""The splitter: where a raster's tiles lie, and their padded, normalised pixels.

The raster is treated as an infinite canvas: outside ``[0, H) × [0, W)`` each pixel takes
the value the pad mode gives it (``reflect``: mirror without repeating the edge, as NumPy
and torch; ``symmetric``: mirror repeating the edge, what Dask calls "reflect"; ``edge``;
``constant``). The value of a canvas pixel depends only on its coordinates, so any window
of it equals the same window of ``numpy.pad`` applied to the whole raster, even where the
pad is wider than the raster (strips thinner than the halo, rasters smaller than a tile).

:class:`Splitter` serves both sides of a model. Inference asks it which tiles of the global
grid a block needs (:meth:`Splitter.tiles_for`) and reads them as one normalised canvas
that a :class:`TileStack` cuts into batches (:meth:`Splitter.read`). Training asks it for
tiles anywhere (:meth:`Splitter.random_tiles`) and for each one the image tile and the label
crop aligned with the model's output (:meth:`Splitter.training_pair`): the same pixels,
padding and normalisation inference feeds the model. NumPy only: no torch, no file formats.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from tilesegment.grid import PAD_MODES, Tile, TileSpec, grid_shape, tiles_for_window
from tilesegment.normalize import missing_values, nonfinite_values, normalize

Window = tuple[int, int, int, int]
Reader = Callable[[Window], np.ndarray]


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
    window: Window,
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


@dataclass
class TileStack:
    """The tiles a window needs, over one normalised canvas that covers them all.

    ``canvas`` ``float32 (C, H', W')``: the padded, normalised pixels under the tiles, its
    top-left pixel at raster position ``origin``; missing input values are 0 (their band's
    mean after normalisation). ``valid`` ``bool (h, w)``: pixels of ``window`` with at least
    one band that is not missing; ``nonfinite`` ``bool (h, w)``: pixels of ``window`` with a
    ±inf (or beyond-float32) band value. Tiles are cut only when asked
    (:meth:`cut`, :meth:`batches`), so a block holds one batch of tiles at a time.
    """

    tiles: list[Tile]
    canvas: np.ndarray
    origin: tuple[int, int]
    side: int
    window: Window
    valid: np.ndarray
    nonfinite: np.ndarray
    present: np.ndarray | None = None
    """``bool (H', W')``: canvas pixels with at least one band that is not missing (what
    decides which tiles hold only nodata, :mod:`tilesegment.block`)."""

    def __len__(self) -> int:
        return len(self.tiles)

    def cut(self, tiles: list[Tile]) -> np.ndarray:
        """``float32 (N, C, T, T)``: ``tiles`` (all of them within the canvas)."""
        return cut_tiles(self.canvas, self.origin, [(t.row, t.col) for t in tiles], self.side)

    def batches(self, size: int) -> Iterator[tuple[list[Tile], np.ndarray]]:
        """``(tiles, float32 (n, C, T, T))`` for consecutive groups of at most ``size``
        tiles, in the stack's (global row-major) order."""
        size = max(1, int(size))
        for start in range(0, len(self.tiles), size):
            group = self.tiles[start:start + size]
            yield group, self.cut(group)


class _ArrayReader:
    """A ``(C, H, W)`` or ``(H, W)`` NumPy array seen as a raster (``read``, ``height``,
    ``width``, ``nodata``); reads return copies."""

    def __init__(self, array: np.ndarray, nodata: float | None = None) -> None:
        array = np.asarray(array)
        self.array = array[None] if array.ndim == 2 else array
        if self.array.ndim != 3:
            raise ValueError(f"array of shape {array.shape}: expected (H, W) or (C, H, W)")
        self.bands, self.height, self.width = self.array.shape
        self.nodata = nodata

    def read(self, window: Window) -> np.ndarray:
        r0, r1, c0, c1 = window
        return self.array[:, r0:r1, c0:c1].copy()


class Splitter:
    """Tiles of ``spec`` over a raster, read padded by ``spec.pad_mode`` and normalised.

    ``raster``: anything with ``read((r0, r1, c0, c1)) -> (C, h, w)``, ``height``,
    ``width`` and ``nodata`` (every :class:`~tilesegment.read.Raster`), or a NumPy array
    ``(C, H, W)`` / ``(H, W)``. ``mean``, ``std`` ``(C,)``: the normalisation (``None``:
    none); ``pad_value``: the ``constant`` pad's value, in raw units.
    """

    def __init__(self, raster: Any, spec: TileSpec, mean: np.ndarray | None = None,
                 std: np.ndarray | None = None, pad_value: float = 0.0) -> None:
        self.raster = _ArrayReader(raster) if isinstance(raster, np.ndarray) else raster
        self.spec = spec
        self.mean = mean
        self.std = std
        self.pad_value = pad_value

    @property
    def shape(self) -> tuple[int, int]:
        """The raster's ``(H, W)``."""
        return self.raster.height, self.raster.width

    def tiles_for(self, window: Window) -> list[Tile]:
        """Tiles of the global grid whose used output overlaps ``window``, in global
        row-major order (:func:`~tilesegment.grid.tiles_for_window`)."""
        return tiles_for_window(self.shape, self.spec, window)

    def read(self, window: Window, tiles: list[Tile] | None = None) -> TileStack:
        """The :class:`TileStack` of ``tiles`` (default :meth:`tiles_for` ``window``) with
        the valid and non-finite masks of ``window``, which the tiles' canvas must cover."""
        tiles = self.tiles_for(window) if tiles is None else tiles
        side = self.spec.tile
        top = min(t.row for t in tiles)
        left = min(t.col for t in tiles)
        bottom = max(t.row for t in tiles) + side
        right = max(t.col for t in tiles) + side
        raster = self.raster
        raw = read_canvas(raster.read, self.shape, (top, bottom, left, right),
                          self.spec.pad_mode, self.pad_value)
        missing = missing_values(raw, raster.nodata)
        ok = ~missing.all(axis=0)
        r0, r1, c0, c1 = window
        inside = (slice(None), slice(r0 - top, r1 - top), slice(c0 - left, c1 - left))
        nonfinite = nonfinite_values(raw[inside], raster.nodata).any(axis=0)
        canvas = normalize(raw, self.mean, self.std)
        canvas[missing] = 0.0  # a missing value becomes its band's mean, not a wild raw value
        del raw, missing
        return TileStack(tiles, canvas, (top, left), side, window, ok[inside[1:]], nonfinite,
                         present=ok)

    # --- training ------------------------------------------------------------------------

    def output_window(self, tile: Tile) -> Window:
        """Raster window ``(r0, r1, c0, c1)`` of the model's output for ``tile``: it starts
        ``shrink`` pixels inside the tile and is ``tile - 2·shrink`` on a side."""
        s, o = self.spec.shrink, self.spec.out_side
        return tile.row + s, tile.row + s + o, tile.col + s, tile.col + s + o

    def training_pair(self, tile: Tile, labels: Any, ignore_index: int = 255,
                      region: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The model's input for ``tile`` and the labels of its output pixels.

        ``labels``: class ids ``(H, W)`` on the raster's grid (an array, or a raster whose
        ``read`` gives ``(1, h, w)``). Returns the image ``float32 (C, T, T)``, exactly the
        tile inference feeds the model, and ``int64 (o, o)`` labels of
        :meth:`output_window`, ``ignore_index`` wherever the pixel lies outside the raster
        or outside ``region``, or its input is missing in every band.
        """
        stack = self.read(self.output_window(tile), [tile])
        image = stack.cut([tile])[0]
        r0, r1, c0, c1 = self.output_window(tile)
        h, w = self.shape
        lo_r, hi_r, lo_c, hi_c = 0, h, 0, w
        if region is not None:
            lo_r, hi_r = max(lo_r, region[0]), min(hi_r, region[1])
            lo_c, hi_c = max(lo_c, region[2]), min(hi_c, region[3])
        out = np.full((r1 - r0, c1 - c0), ignore_index, dtype=np.int64)
        ya, yb, xa, xb = max(r0, lo_r), min(r1, hi_r), max(c0, lo_c), min(c1, hi_c)
        if ya < yb and xa < xb:
            window = (ya, yb, xa, xb)
            if isinstance(labels, np.ndarray):
                part = labels[..., ya:yb, xa:xb]
            else:
                part = labels.read(window)
            part = np.asarray(part).reshape(yb - ya, xb - xa)
            out[ya - r0:yb - r0, xa - c0:xb - c0] = part
        out[~stack.valid] = ignore_index
        return image, out

    def random_tiles(self, rng: np.random.Generator, n: int, region: Window | None = None,
                     on_grid: bool = False) -> list[Tile]:
        """``n`` tiles drawn with ``rng`` whose output lies in ``region`` (default: the
        raster). Off the grid (default) every output position inside the region is equally
        likely; ``on_grid``: tiles of the global grid whose output overlaps the region,
        drawn with replacement. Off-grid tiles have ``i = j = -1``. Along an axis where the
        region is smaller than the output, the output covers the region (labels outside
        it are ignored by :meth:`training_pair` given the same ``region``)."""
        h, w = self.shape
        r0, r1, c0, c1 = (0, h, 0, w) if region is None else region
        r0, r1, c0, c1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
        if r0 >= r1 or c0 >= c1:
            raise ValueError(f"region {region} holds no pixel of the {h}×{w} raster")
        s, o = self.spec.shrink, self.spec.out_side
        if on_grid:
            spec = self.spec
            n_i, n_j = grid_shape((h, w), spec)
            grid = [Tile(i, j, i * spec.core - spec.halo, j * spec.core - spec.halo)
                    for i in range(n_i) for j in range(n_j)]
            found = []
            for t in grid:
                y0, y1, x0, x1 = self.output_window(t)
                if y0 < r1 and y1 > r0 and x0 < c1 and x1 > c0:
                    found.append(t)
            return [found[k] for k in rng.integers(0, len(found), n)]

        def starts(lo: int, hi: int) -> tuple[int, int]:
            return (lo, hi - o) if hi - lo >= o else (hi - o, lo)

        ra, rb = starts(r0, r1)
        ca, cb = starts(c0, c1)
        rows = rng.integers(ra, rb + 1, n)
        cols = rng.integers(ca, cb + 1, n)
        return [Tile(-1, -1, int(r) - s, int(c) - s) for r, c in zip(rows, cols, strict=True)]
