"""The :class:`Raster` contract every reader implements.

A raster is lazy: opening it reads metadata only; :meth:`Raster.read` reads one window.
Rasters are picklable (they carry a path and reopen on first use in each process), so a
block task on a ``distributed`` worker can read its own window straight from storage.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

Window = tuple[int, int, int, int]
"""``(row_start, row_stop, col_start, col_stop)`` in pixels, half-open, inside the raster."""


def check_window(raster: Raster, window: Window) -> Window:
    """``window`` as four ints; :class:`GeometryError` unless inside ``raster`` (may be empty)."""
    from tilesegment.errors import GeometryError

    try:
        r0, r1, c0, c1 = (int(v) for v in window)
    except (TypeError, ValueError) as exc:
        raise GeometryError(
            f"{raster.source}: window {window!r} is not (row0, row1, col0, col1)"
        ) from exc
    height, width = raster.shape[1], raster.shape[2]
    if not (0 <= r0 <= r1 <= height and 0 <= c0 <= c1 <= width):
        raise GeometryError(
            f"{raster.source}: window rows {r0}:{r1}, cols {c0}:{c1} is not inside the "
            f"raster of {height}×{width} pixels (padding beyond the edge is the tiler's job)"
        )
    return r0, r1, c0, c1


@dataclass(frozen=True)
class Georef:
    """Where the raster lies on the Earth or under the microscope.

    ``crs_wkt`` and ``transform`` (rasterio ``Affine`` order ``(a, b, c, d, e, f)``:
    x = a·col + b·row + c, y = d·col + e·row + f; not GDAL's ``(c, a, b, f, d, e)``) for
    georeferenced rasters; ``pixel_size`` ``(y, x)`` with its ``unit`` (``"um"`` for
    slides, ``"m"``...) when known.
    """

    crs_wkt: str | None = None
    transform: tuple[float, float, float, float, float, float] | None = None
    pixel_size: tuple[float, float] | None = None
    unit: str | None = None


@dataclass(frozen=True)
class LevelInfo:
    """One pyramid level: its ``(H, W)`` and pixel size ``(y, x)`` in ``unit`` when known."""

    shape: tuple[int, int]
    pixel_size: tuple[float, float] | None = None


class Raster(ABC):
    """A lazily read ``(C, H, W)`` image.

    Attributes every reader sets in ``__init__`` (metadata only, no pixel reads):
    ``source`` (path or a short description), ``shape`` ``(C, H, W)``, ``dtype``,
    ``nodata`` (a scalar or ``None``), ``georef``, ``block_shape`` (the on-disk TIFF block or
    chunk ``(h, w)``, ``None`` if unknown), ``levels`` (all pyramid levels), ``level`` (the
    chosen one), ``kind`` (``"geotiff"``, ``"slide"``, ``"zarr"``, ``"array"``).
    """

    source: str
    shape: tuple[int, int, int]
    dtype: np.dtype
    nodata: float | None
    georef: Georef
    block_shape: tuple[int, int] | None
    levels: tuple[LevelInfo, ...]
    level: int
    kind: str

    _local: threading.local

    @property
    def height(self) -> int:
        return self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[2]

    @property
    def bands(self) -> int:
        return self.shape[0]

    @abstractmethod
    def read(self, window: Window) -> np.ndarray:
        """Read ``window`` as an array ``(C, h, w)`` of :attr:`dtype`.

        Raises :class:`~tilesegment.errors.DamagedInputError` (naming the file and the TIFF
        block) when the data cannot be decoded; never returns zeros in place of lost data.
        Safe to call from several threads at once.
        """

    def at_level(self, level: int) -> Raster:
        """The same source opened at pyramid ``level`` (metadata only; ``self`` if equal).

        Readers with pyramids override this; a single-level raster accepts only its own level.
        """
        if level == self.level:
            return self
        from tilesegment.errors import InputError

        raise InputError(
            f"{self.source}: level {level} does not exist: the raster has only level "
            f"{self.level}"
        )

    def close(self) -> None:
        """Drop the cached file handles (readers close them); they reopen on the next read."""
        self._local = threading.local()

    def describe(self) -> dict[str, Any]:
        """Metadata for ``tilesegment info`` and for provenance: plain JSON-able values."""
        return {
            "source": self.source,
            "kind": self.kind,
            "shape": list(self.shape),
            "dtype": str(np.dtype(self.dtype)),
            "nodata": self.nodata,
            "crs_wkt": self.georef.crs_wkt,
            "transform": list(self.georef.transform) if self.georef.transform else None,
            "pixel_size": list(self.georef.pixel_size) if self.georef.pixel_size else None,
            "unit": self.georef.unit,
            "block_shape": list(self.block_shape) if self.block_shape else None,
            "level": self.level,
            "levels": [
                {"shape": list(lv.shape),
                 "pixel_size": list(lv.pixel_size) if lv.pixel_size else None}
                for lv in self.levels
            ],
        }

    def __getstate__(self) -> dict[str, Any]:
        # File handles live in a per-thread cache and are reopened after unpickling.
        state = self.__dict__.copy()
        state.pop("_local", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()


