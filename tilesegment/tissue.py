"""Where a slide holds tissue: a low-resolution mask that lets a run skip tiles of glass.

``--tissue otsu`` computes the mask from a low-resolution view of the slide: the coarsest
pyramid level at least :data:`MIN_SIDE` px on its long side, block-averaged further (while it
is read strip by strip) until its long side is at most :data:`MAX_SIDE` px. A pixel is tissue
when its HSV saturation ``(max - min) / max`` of the RGB bands exceeds the Otsu threshold of
the saturation histogram (white and grey glass is unsaturated, stained tissue is not); a
small binary closing (:data:`CLOSING_RADIUS` px) fills pinholes. ``--tissue-mask FILE`` takes
a raster of the user's instead (any resolution; non-zero = tissue).

The mask covers the whole slide in normalised coordinates, so it serves any level or
``--mpp`` of a run: :meth:`TissueMask.window_has_tissue` maps a run-grid window onto the mask
with one mask pixel of margin on every side (a tile is skipped only when the mask is sure).
NumPy and SciPy only; pixels come through the :class:`~tilesegment.read.Raster` contract.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tilesegment.errors import SettingError

TISSUE_MODES = ("auto", "otsu", "none")
MIN_SIDE = 512
"""The tissue mask is computed on a level at least this many px on its long side."""
MAX_SIDE = 1024
"""…block-averaged until its long side is at most this many px."""
CLOSING_RADIUS = 2
"""Radius (mask px) of the disk of the closing applied to the thresholded mask."""
METHOD = "otsu-saturation-v1"
"""Names the algorithm in fingerprints: bumped if what it computes changes."""

Window = tuple[int, int, int, int]


@dataclass(frozen=True)
class TissueMask:
    """``mask`` ``bool (h, w)`` over the whole slide (True = tissue), mask pixel ``(i, j)``
    covering rows ``[i·fy, (i+1)·fy)`` and columns ``[j·fx, (j+1)·fx)`` of a grid of
    ``extent`` ``(H, W)`` px (clipped at its edge)."""

    mask: np.ndarray
    factor: tuple[float, float]
    extent: tuple[int, int]

    def window_has_tissue(self, window: Window, shape: tuple[int, int]) -> bool:
        """Whether run-grid ``window`` ``(r0, r1, c0, c1)`` of a raster of ``shape``
        ``(H, W)`` may hold tissue (one mask pixel of margin on each side)."""
        h, w = self.mask.shape
        r0, r1, c0, c1 = window
        (ey, ex), (fy, fx) = self.extent, self.factor
        sy, sx = ey / shape[0] / fy, ex / shape[1] / fx  # mask px per run px
        i0 = max(0, math.floor(r0 * sy) - 1)
        i1 = min(h, math.ceil(r1 * sy) + 1)
        j0 = max(0, math.floor(c0 * sx) - 1)
        j1 = min(w, math.ceil(c1 * sx) + 1)
        return bool(self.mask[i0:i1, j0:j1].any())

    @property
    def fraction(self) -> float:
        """Share of mask pixels that are tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (float, any shape): the bin edge that maximises the
    between-class variance of a ``bins``-bin histogram over ``[min, max]``. Values above it
    are the upper class."""
    values = np.asarray(values, np.float64).ravel()
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    weight1 = np.cumsum(hist)
    weight2 = np.cumsum(hist[::-1])[::-1]
    mean1 = np.cumsum(hist * centers) / np.maximum(weight1, 1)
    mean2 = (np.cumsum((hist * centers)[::-1]) / np.maximum(weight2[::-1], 1))[::-1]
    between = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centers[int(np.argmax(between))])


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``float64 (h, w)`` in ``[0, 1]`` of ``rgb`` ``(3, h, w)``
    (0 where the pixel is black)."""
    rgb = np.asarray(rgb, np.float64)
    high, low = rgb.max(axis=0), rgb.min(axis=0)
    return np.where(high > 0, (high - low) / np.where(high > 0, high, 1.0), 0.0)


def disk(radius: int) -> np.ndarray:
    """``bool (2r+1, 2r+1)``: the digital disk of ``radius``."""
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius


def close_mask(mask: np.ndarray, radius: int = CLOSING_RADIUS) -> np.ndarray:
    """Binary closing of ``mask`` by a disk; the edge is extended (not zero), so tissue
    touching the slide's edge is kept."""
    from scipy import ndimage

    if radius <= 0:
        return mask.copy()
    padded = np.pad(mask, radius, mode="edge")
    closed = ndimage.binary_erosion(ndimage.binary_dilation(padded, disk(radius)),
                                    disk(radius))
    return closed[radius:-radius, radius:-radius]


def otsu_tissue(rgb: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """``bool (h, w)`` tissue of ``rgb`` ``(3, h, w)``: saturation above its Otsu
    threshold, closed; never where ``valid`` ``bool (h, w)`` is False."""
    sat = saturation(rgb)
    if valid is not None and not valid.any():
        return np.zeros(sat.shape, bool)
    threshold = otsu_threshold(sat if valid is None else sat[valid])
    tissue = close_mask(sat > threshold)
    return tissue if valid is None else tissue & valid


STRIP_VALUES = 1 << 23
"""Band values per strip :func:`reduce_raster` reads (64 MiB as float64)."""


def reduce_raster(raster: Any, factor: int, reduce: str = "mean") -> np.ndarray:
    """``raster`` read in strips and reduced by ``factor`` × ``factor`` blocks: ``float64
    (C, ceil(H/f), ceil(W/f))`` block means (``reduce="mean"``; missing values left out) or
    ``bool`` "any non-zero valid value" (``"any"``). Memory: one strip of about
    :data:`STRIP_VALUES` values (at least ``factor`` rows)."""
    from tilesegment.normalize import missing_values

    c, h, w = raster.bands, raster.height, raster.width
    oh, ow = -(-h // factor), -(-w // factor)
    out = np.zeros((c, oh, ow), bool if reduce == "any" else np.float64)
    step = max(factor, STRIP_VALUES // max(c * w, 1) // factor * factor)
    for r0 in range(0, h, step):
        r1 = min(h, r0 + step)
        data = raster.read((r0, r1, 0, w))
        missing = missing_values(data, raster.nodata)
        rows = -(-(r1 - r0) // factor)
        pad = ((0, 0), (0, rows * factor - (r1 - r0)), (0, ow * factor - w))
        i0 = r0 // factor
        shape = (c, rows, factor, ow, factor)
        if reduce == "any":
            hit = (data != 0) & ~missing
            out[:, i0:i0 + rows] = np.pad(hit, pad).reshape(shape).any(axis=(2, 4))
        else:
            values = np.where(missing, 0.0, data.astype(np.float64))
            total = np.pad(values, pad).reshape(shape).sum(axis=(2, 4))
            count = np.pad(~missing, pad).reshape(shape).sum(axis=(2, 4))
            out[:, i0:i0 + rows] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out


def _base(raster: Any) -> Any:
    """The raster under a resampling wrapper (``--mpp``)."""
    return getattr(raster, "base", raster)


def low_resolution(raster: Any) -> tuple[Any, int]:
    """The level of ``raster``'s pyramid to read for the mask and the block factor that
    brings it to at most :data:`MAX_SIDE` px: the coarsest level at least :data:`MIN_SIDE`
    px on its long side (or the finest level when none is)."""
    base = _base(raster)
    sides = [max(info.shape) for info in base.levels]
    fits = [i for i, side in enumerate(sides) if side >= MIN_SIDE]
    index = max(fits, key=lambda i: -sides[i]) if fits else 0
    level = base if index == base.level else base.at_level(index)
    return level, max(1, math.ceil(sides[index] / MAX_SIDE))


def compute_otsu(raster: Any) -> TissueMask:
    """The Otsu tissue mask of slide ``raster`` (3 bands: RGB) from a low-resolution view."""
    level, factor = low_resolution(raster)
    if level.bands != 3:
        raise SettingError(f"{raster.source}: --tissue otsu needs an RGB slide (3 bands), "
                           f"not {level.bands}; give your own mask with --tissue-mask")
    means = reduce_raster(level, factor, "mean")
    valid = ~np.isnan(means).any(axis=0)
    tissue = otsu_tissue(np.nan_to_num(means), valid)
    return TissueMask(tissue, (float(factor), float(factor)), (level.height, level.width))


def from_mask_raster(mask_raster: Any, shape: tuple[int, int]) -> TissueMask:
    """A user's mask raster (non-zero = tissue) as a :class:`TissueMask` for a run grid of
    ``shape`` ``(H, W)``; refused when its aspect ratio differs from the run's by more than
    2 % (it does not cover the same slide). Reduced by "any" to at most 4 × :data:`MAX_SIDE`
    px on its long side."""
    mh, mw = mask_raster.height, mask_raster.width
    if abs((mh / mw) / (shape[0] / shape[1]) - 1) > 0.02:
        raise SettingError(f"{mask_raster.source}: the tissue mask is {mw} × {mh} px, not "
                           f"the aspect ratio of the {shape[1]} × {shape[0]} px raster it "
                           "should cover")
    factor = max(1, math.ceil(max(mh, mw) / (4 * MAX_SIDE)))
    tissue = reduce_raster(mask_raster, factor, "any").any(axis=0)
    return TissueMask(tissue, (float(factor), float(factor)), (mh, mw))


def planned_skips(tissue: TissueMask, spec: Any, shape: tuple[int, int]) -> tuple[int, int]:
    """``(skipped, total)``: tiles of the global grid of ``spec`` over ``shape`` whose used
    output holds no tissue (the tiles a run skips by the mask alone)."""
    from tilesegment.grid import grid_shape

    n_i, n_j = grid_shape(shape, spec)
    skipped = sum(not tissue.window_has_tissue(used_window(i, j, spec, shape), shape)
                  for i in range(n_i) for j in range(n_j))
    return skipped, n_i * n_j


def used_window(i: int, j: int, spec: Any, shape: tuple[int, int]) -> Window:
    """The raster window ``(r0, r1, c0, c1)`` of tile ``(i, j)``'s used output (its core
    under ``crop``; core plus footprint under ``gaussian``), clipped to the raster."""
    c, reach = spec.core, spec.footprint()
    h, w = shape
    return (max(0, i * c - reach), min(h, (i + 1) * c + reach),
            max(0, j * c - reach), min(w, (j + 1) * c + reach))
