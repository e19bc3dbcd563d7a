"""The ``--mpp X`` rule: pick a pyramid level, then resample it to pixel size ``X``.

Rule: take the coarsest level whose pixel size is at or finer than ``X`` (both axes at
most ``X·1.01``). If that level is finer than ``X`` by more than 1 %, wrap it in a
:class:`ResampledRaster` of the target size, which area-averages the level.

Area averaging maps output pixel ``i`` to the source interval ``[i·s, (i+1)·s)`` with
``s = X / pixel_size`` (corners aligned, separable in rows and columns). The weights of
output pixel ``i`` depend on ``i`` only, and every output value is summed in the same fixed
order whatever window asks for it, so a read returns bit-identical values for any window
or block size. ``mpp`` is in the raster's own unit (µm for slides, CRS units for GeoTIFF).
"""

from __future__ import annotations

import math
import numbers
import threading
from typing import Any

import numpy as np

from tilesegment.errors import InputError
from tilesegment.read.base import Georef, Raster, Window, check_window

#: Relative tolerance of the level choice: a level within 1 % of ``mpp`` is used as is.
TOLERANCE = 0.01


def _unit(raster: Raster) -> str:
    return f" {raster.georef.unit}" if raster.georef.unit else ""


def _no_pixel_size(raster: Raster) -> InputError:
    return InputError(
        f"{raster.source}: --mpp needs the pixel size, but the raster does not record "
        "one (no MPP, OME PhysicalSize, resolution tags or transform); choose a level"
    )


def level_for_mpp(raster: Raster, mpp: float) -> int:
    """Index of the coarsest level of ``raster`` with pixels at or finer than ``mpp``."""
    if isinstance(mpp, bool) or not isinstance(mpp, numbers.Real) or not (
        math.isfinite(mpp) and mpp > 0
    ):
        raise InputError(f"{raster.source}: mpp must be a positive number, not {mpp!r}")
    coarse: list[float] = []
    for info in raster.levels:
        if info.pixel_size is None:
            raise _no_pixel_size(raster)
        coarse.append(max(info.pixel_size))
    fits = [i for i, c in enumerate(coarse) if c <= mpp * (1 + TOLERANCE)]
    if not fits:
        raise InputError(
            f"{raster.source}: no level has pixels at or finer than {mpp:g}{_unit(raster)}: "
            f"the finest level has {min(coarse):g}{_unit(raster)}"
        )
    return max(fits, key=lambda i: coarse[i])


def needs_resampling(pixel_size: tuple[float, float], mpp: float) -> bool:
    """Whether a level of ``pixel_size`` is finer than ``mpp`` by more than 1 %."""
    return min(pixel_size) < mpp * (1 - TOLERANCE)


def area_taps(start: int, stop: int, scale: float, n_src: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and overlap weights ``(n, T)`` of output pixels ``start..stop-1``.

    Output pixel ``i`` covers source ``[i·scale, (i+1)·scale)`` clipped to ``[0, n_src)``;
    unused taps have weight 0. Depends on the global index ``i`` only.
    """
    i = np.arange(start, stop, dtype=np.float64)
    lo = i * scale
    hi = np.minimum((i + 1.0) * scale, float(n_src))
    taps = math.ceil(scale) + 1
    k = np.floor(lo).astype(np.int64)[:, None] + np.arange(taps, dtype=np.int64)[None, :]
    w = np.minimum(hi[:, None], k + 1.0) - np.maximum(lo[:, None], k.astype(np.float64))
    w = np.where((w > 0) & (k < n_src), w, 0.0)
    return np.minimum(k, n_src - 1), w


def _weigh(x: np.ndarray, idx: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    """Weighted sums of ``x`` (2-D float64) along ``axis`` in fixed tap order."""
    shape = list(x.shape)
    shape[axis] = idx.shape[0]
    out = np.zeros(shape, dtype=np.float64)
    for t in range(idx.shape[1]):
        wt = w[:, t][:, None] if axis == 0 else w[:, t][None, :]
        part = np.take(x, idx[:, t], axis=axis) * wt
        out += np.where(wt > 0, part, 0.0)
    return out


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.bool_:
        return values >= 0.5
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


class ResampledRaster(Raster):
    """``base`` area-averaged to square pixels of size ``mpp``: ``(C, H', W')``.

    ``H' = round(H · py / mpp)``, ``W' = round(W · px / mpp)``. Pixels equal to ``nodata``
    are left out of the average; an output pixel less than half covered by valid pixels
    is ``nodata``. Integer data is rounded to the nearest integer.
    """

    def __init__(self, base: Raster, mpp: float) -> None:
        if base.georef.pixel_size is None:
            raise _no_pixel_size(base)
        py, px = base.georef.pixel_size
        self.base = base
        self.mpp = float(mpp)
        self._scale = (self.mpp / py, self.mpp / px)
        height = max(1, round(base.height / self._scale[0]))
        width = max(1, round(base.width / self._scale[1]))
        self.source = base.source
        self.kind = base.kind
        self.shape = (base.bands, height, width)
        self.dtype = base.dtype
        self.nodata = base.nodata
        self.block_shape = None
        self.levels = base.levels
        self.level = base.level
        transform = base.georef.transform
        if transform is not None:
            a, b, c, d, e, f = transform
            sy, sx = self._scale
            transform = (a * sx, b * sy, c, d * sx, e * sy, f)
        self.georef = Georef(
            crs_wkt=base.georef.crs_wkt,
            transform=transform,
            pixel_size=(self.mpp, self.mpp),
            unit=base.georef.unit,
        )
        self._local = threading.local()

    def read(self, window: Window) -> np.ndarray:
        """Read ``window`` of the resampled grid as ``(C, h, w)`` of :attr:`dtype`."""
        r0, r1, c0, c1 = check_window(self, window)
        out = np.empty((self.bands, r1 - r0, c1 - c0), dtype=self.dtype)
        if out.size == 0:
            return out
        sy, sx = self._scale
        src_r0 = math.floor(r0 * sy)
        src_r1 = min(self.base.height, math.ceil(r1 * sy))
        src_c0 = math.floor(c0 * sx)
        src_c1 = min(self.base.width, math.ceil(c1 * sx))
        row_idx, row_w = area_taps(r0, r1, sy, self.base.height)
        col_idx, col_w = area_taps(c0, c1, sx, self.base.width)
        row_idx = np.clip(row_idx - src_r0, 0, src_r1 - src_r0 - 1)
        col_idx = np.clip(col_idx - src_c0, 0, src_c1 - src_c0 - 1)
        src = self.base.read((src_r0, src_r1, src_c0, src_c1))
        ones = np.ones((src_r1 - src_r0, src_c1 - src_c0))
        cover = _weigh(_weigh(ones, row_idx, row_w, 0), col_idx, col_w, 1)
        nodata = self.nodata
        for ch in range(self.bands):
            band = src[ch].astype(np.float64)
            if nodata is None:
                out[ch] = _cast(_weigh(_weigh(band, row_idx, row_w, 0), col_idx, col_w, 1)
                                / cover, self.dtype)
                continue
            valid = ~np.isnan(band) if math.isnan(nodata) else band != nodata
            num = _weigh(_weigh(np.where(valid, band, 0.0), row_idx, row_w, 0),
                         col_idx, col_w, 1)
            den = _weigh(_weigh(valid.astype(np.float64), row_idx, row_w, 0),
                         col_idx, col_w, 1)
            good = den >= 0.5 * cover
            values = np.where(good, num / np.where(good, den, 1.0), nodata)
            out[ch] = _cast(values, self.dtype)
        return out

    def describe(self) -> dict[str, Any]:
        """The base raster's metadata with this grid and a ``resampled`` entry."""
        info = {**self.base.describe(), **super().describe()}
        info["resampled"] = {
            "method": "area",
            "from_level": self.base.level,
            "from_pixel_size": list(self.base.georef.pixel_size or ()),
            "from_shape": list(self.base.shape),
        }
        return info
