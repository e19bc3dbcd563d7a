"""Input normalisation with values fixed for the whole raster (never per tile).

``raster_statistics`` computes per-band mean and standard deviation out of core: one Dask
task per block returns ``(count, mean, M2)`` per band, merged in a fixed order (Chan et al.'s
parallel update), so the result does not depend on scheduling. Each band's missing values
(nodata, NaN, ±inf, and float64 values beyond float32's range, which a cast to float32 would
turn into inf) are left out of that band's statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tilesegment.grid import iter_blocks


@dataclass(frozen=True)
class BandStats:
    """Per-band ``count`` (int64), ``mean`` and ``std`` (float64), each of shape ``(C,)``."""

    count: np.ndarray
    mean: np.ndarray
    std: np.ndarray


FLOAT32_MAX = float(np.finfo(np.float32).max)


def missing_values(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """``bool (C, h, w)``: band values equal to nodata, NaN, ±inf, or (float64 and wider)
    beyond float32's range: every value the model input cannot hold as a finite float32."""
    if np.issubdtype(data.dtype, np.floating):
        if data.dtype.itemsize > 4:
            with np.errstate(invalid="ignore"):
                bad = ~(np.abs(data) <= FLOAT32_MAX)  # NaN compares False: missing too
        else:
            bad = ~np.isfinite(data)
    else:
        bad = np.zeros(data.shape, dtype=bool)
    if nodata is not None and not np.isnan(nodata):
        bad |= data == nodata
    return bad


def nonfinite_values(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """``bool (C, h, w)``: ±inf, or (float64 and wider) finite values beyond float32's range,
    that are not the declared nodata value. NaN is not counted here: it is the usual nodata
    of float rasters."""
    if not np.issubdtype(data.dtype, np.floating):
        return np.zeros(data.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        bad = np.abs(data) > FLOAT32_MAX if data.dtype.itemsize > 4 else np.isinf(data)
    if nodata is not None and not np.isnan(nodata):
        bad &= data != nodata
    return bad


def nonfinite_pixels(data: np.ndarray, nodata: float | None) -> int:
    """Pixels of ``data`` ``(C, h, w)`` with at least one band value that
    :func:`nonfinite_values` flags."""
    if not np.issubdtype(data.dtype, np.floating):
        return 0
    return int(nonfinite_values(data, nodata).any(axis=0).sum())


def valid_mask(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """``bool (h, w)``: pixels with at least one band that is not nodata (GDAL's rule: a
    pixel is nodata only when every band is). ``data`` is ``(C, h, w)``."""
    return ~missing_values(data, nodata).all(axis=0)


def _block_moments(raster, window, nodata) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = raster.read(window)
    bad = missing_values(data, nodata)
    c = len(data)
    count, mean, m2 = np.zeros(c, np.int64), np.zeros(c), np.zeros(c)
    for b in range(c):  # each band without its own missing values
        values = data[b][~bad[b]].astype(np.float64)
        if values.size:
            count[b] = values.size
            mean[b] = values.mean()
            m2[b] = ((values - mean[b]) ** 2).sum()
    return count, mean, m2


def _merge(parts):
    count, mean, m2 = parts[0]
    count = count.astype(np.int64)
    for n_b, mean_b, m2_b in parts[1:]:
        total = count + n_b
        safe = np.maximum(total, 1)
        delta = mean_b - mean
        mean = mean + delta * n_b / safe
        m2 = m2 + m2_b + delta**2 * count * n_b / safe
        count = total
    return count, mean, m2


def raster_statistics(raster, block: int = 2048, scheduler=None) -> BandStats:
    """Per-band statistics of the whole ``raster``, reading it block by block."""
    import dask

    windows = list(iter_blocks((raster.height, raster.width), (block, block)))
    tasks = [dask.delayed(_block_moments)(raster, w, raster.nodata) for w in windows]
    parts = dask.compute(*tasks, scheduler=scheduler)
    count, mean, m2 = _merge(list(parts))
    std = np.sqrt(m2 / np.maximum(count, 1))
    return BandStats(count=count, mean=mean, std=std)


def normalize(data: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None) -> np.ndarray:
    """``(data - mean) / std`` per band as float32 ``(C, h, w)``; a zero std counts as 1.
    Values beyond float32's range become ±inf (the caller blanks missing values)."""
    with np.errstate(over="ignore"):
        out = data.astype(np.float32, copy=True)
    if mean is None or std is None:
        return out
    safe = np.where(np.asarray(std) > 0, std, 1.0)
    with np.errstate(invalid="ignore", over="ignore"):
        out -= np.asarray(mean, np.float32)[:, None, None]
        out /= np.asarray(safe, np.float32)[:, None, None]
    return out
