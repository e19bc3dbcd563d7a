"""In-memory and Dask arrays wrapped as a :class:`Raster`.

A 2-D array ``(H, W)`` becomes ``(1, H, W)``; a 3-D array is taken as ``(C, H, W)``.
A Dask array stays lazy: each :meth:`ArrayRaster.read` computes only its window, with the
synchronous scheduler (reads already run inside a block task).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from tilesegment.errors import InputError
from tilesegment.read.base import Georef, LevelInfo, Raster, Window, check_window


def is_dask_array(obj: object) -> bool:
    """Whether ``obj`` is a Dask array, without importing Dask when it is not loaded."""
    return type(obj).__module__.startswith("dask.") and hasattr(obj, "compute")


class ArrayRaster(Raster):
    """A NumPy or Dask array as a single-level ``(C, H, W)`` raster without georeference."""

    def __init__(self, array: Any, *, nodata: float | None = None,
                 georef: Georef | None = None) -> None:
        dask = is_dask_array(array)
        if not dask:
            array = np.asarray(array)
        if array.ndim == 2:
            array = array[np.newaxis]
        if array.ndim != 3:
            raise InputError(
                f"array of shape {tuple(array.shape)}: expected (H, W) or (C, H, W)"
            )
        if 0 in array.shape:
            raise InputError(f"array of shape {tuple(array.shape)} is empty")
        self._array = array
        self._dask = dask
        name = "dask" if dask else "numpy"
        self.source = f"<{name} array {'×'.join(str(n) for n in array.shape)} {array.dtype}>"
        self.kind = "array"
        self.shape = (int(array.shape[0]), int(array.shape[1]), int(array.shape[2]))
        self.dtype = np.dtype(array.dtype)
        self.nodata = nodata
        self.georef = georef or Georef()
        self.block_shape = self._dask_blocks() if dask else None
        self.level = 0
        self.levels = (LevelInfo(self.shape[1:], self.georef.pixel_size),)
        self._local = threading.local()

    def _dask_blocks(self) -> tuple[int, int] | None:
        """The Dask chunk ``(h, w)`` when the chunks are regular, else ``None``."""
        rows, cols = self._array.chunks[1], self._array.chunks[2]
        regular = len(set(rows[:-1])) <= 1 and len(set(cols[:-1])) <= 1
        return (int(rows[0]), int(cols[0])) if regular else None

    def read(self, window: Window) -> np.ndarray:
        """Read ``window`` as a ``(C, h, w)`` copy of :attr:`dtype`."""
        r0, r1, c0, c1 = check_window(self, window)
        part = self._array[:, r0:r1, c0:c1]
        if self._dask:
            part = part.compute(scheduler="synchronous")
        return np.array(part, dtype=self.dtype, copy=True)
