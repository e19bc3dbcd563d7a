"""GeoTIFF scenes (and any other raster GDAL opens) read with rasterio windowed reads.

Level 0 is the full-resolution dataset; level ``N > 0`` is GDAL overview ``N - 1``. Each
thread opens its own dataset handle (kept in ``self._local``). A GDAL error during a read
becomes a one-line :class:`~tilesegment.errors.DamagedInputError` naming the file, the
window and the TIFF blocks it covers.
"""

from __future__ import annotations

import math
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window as RioWindow

from tilesegment.read import validate
from tilesegment.read.base import Georef, LevelInfo, Raster, Window, check_window
from tilesegment.read.gdal_cache import cap_gdal_cache

cap_gdal_cache()

#: Short unit names for the linear units GDAL reports.
UNIT_NAMES = {"metre": "m", "meter": "m", "foot": "ft", "US survey foot": "ftUS"}


def _open(path: Path, level: int) -> Any:
    """A rasterio dataset of ``level`` (0 = full resolution, N = overview N - 1)."""
    kwargs = {"overview_level": level - 1} if level > 0 else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            return rasterio.open(path, **kwargs)
        except RasterioError as exc:
            message = validate.one_line(exc)
            if "codec" in message.lower():
                raise validate.unsupported(
                    path, f"unsupported compression, GDAL says: {message}"
                ) from exc
            raise validate.unsupported(path, f"GDAL cannot open it: {message}") from exc


def _pixel_size(transform: tuple[float, ...]) -> tuple[float, float]:
    """``(y, x)`` pixel size of an affine ``(a, b, c, d, e, f)`` transform."""
    a, b, _, d, e, _ = transform
    return math.hypot(b, e), math.hypot(a, d)


def _unit(crs: Any) -> str | None:
    if crs is None:
        return None
    if crs.is_geographic:
        return "deg"
    name = crs.linear_units
    return UNIT_NAMES.get(name, name) if name and name != "unknown" else None


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def _root_cause(exc: BaseException) -> str:
    """The message of the innermost GDAL error behind ``exc`` (rasterio chains them)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return validate.one_line(exc)


class GeoTiffRaster(Raster):
    """A GDAL raster read with rasterio: ``(C, H, W)`` with CRS, transform and nodata.

    ``georef.transform`` is in affine order ``(a, b, c, d, e, f)``
    (x = a·col + b·row + c, y = d·col + e·row + f); ``georef.pixel_size`` is in CRS units.
    """

    def __init__(self, path: str | Path, level: int = 0) -> None:
        self._path = Path(path)
        self.source = str(path)
        self.kind = "geotiff"
        self._local = threading.local()
        if validate.is_tiff(self._path):
            self._check_tiff(level)
        base = _open(self._path, 0)
        try:
            n_overviews = len(base.overviews(1)) if base.count else 0
            if not 0 <= level <= n_overviews:
                raise validate.unsupported(
                    self._path,
                    f"level {level} does not exist: the raster has {n_overviews + 1} "
                    f"level(s), 0 to {n_overviews}",
                )
            if base.count == 0:
                raise validate.unsupported(self._path, "the raster has no bands")
            self._init_levels(base, n_overviews)
        finally:
            base.close()
        ds = _open(self._path, level)
        self.level = level
        self.shape = (ds.count, ds.height, ds.width)
        dtypes = {np.dtype(dt) for dt in ds.dtypes}
        self.dtype = np.dtype(np.result_type(*dtypes))
        self.nodata = None if ds.nodata is None else float(ds.nodata)
        block_h, block_w = ds.block_shapes[0]
        self.block_shape = (int(block_h), int(block_w))
        self.driver = ds.driver
        self.compression = ds.compression.name if ds.compression else "none"
        self.interleave = ds.interleaving.name if ds.interleaving else None
        self.tiled = bool(ds.profile.get("tiled", False))
        georeferenced = ds.crs is not None or not ds.transform.is_identity
        a, b, c, d, e, f = (float(v) for v in tuple(ds.transform)[:6])
        transform = (a, b, c, d, e, f) if georeferenced else None
        self.georef = Georef(
            crs_wkt=ds.crs.to_wkt() if ds.crs else None,
            transform=transform,
            pixel_size=_pixel_size(transform) if transform else None,
            unit=_unit(ds.crs) if transform else None,
        )
        self._local.ds = ds

    def _check_tiff(self, level: int) -> None:
        """Header and TIFF-block checks with tifffile, tags only."""
        tif = validate.open_tiff(self._path)
        try:
            levels = tif.series[0].levels
            pages = levels[level].pages if level < len(levels) else list(tif.pages)
            validate.check_blocks_in_file(self._path, pages, level=level)
        finally:
            tif.close()

    def _init_levels(self, base: Any, n_overviews: int) -> None:
        transform = tuple(base.transform)[:6]
        georeferenced = base.crs is not None or not base.transform.is_identity
        py, px = _pixel_size(transform)
        infos = [LevelInfo((base.height, base.width), (py, px) if georeferenced else None)]
        for i in range(n_overviews):
            with _open(self._path, i + 1) as ovr:
                size = (py * (base.height / ovr.height), px * (base.width / ovr.width))
                infos.append(LevelInfo((ovr.height, ovr.width), size if georeferenced else None))
        self.levels = tuple(infos)

    def _dataset(self) -> Any:
        ds = getattr(self._local, "ds", None)
        if ds is None or ds.closed:
            ds = _open(self._path, self.level)
            self._local.ds = ds
        return ds

    def close(self) -> None:
        """Close this thread's dataset (it is reopened on the next read)."""
        ds = getattr(self._local, "ds", None)
        if ds is not None:
            ds.close()
            self._local.ds = None

    def at_level(self, level: int) -> Raster:
        """The same file opened at pyramid ``level``."""
        return self if level == self.level else GeoTiffRaster(self._path, level)

    def read(self, window: Window) -> np.ndarray:
        """Read ``window`` as ``(C, h, w)`` of :attr:`dtype` (all bands)."""
        r0, r1, c0, c1 = check_window(self, window)
        if r0 == r1 or c0 == c1:
            return np.empty((self.bands, r1 - r0, c1 - c0), dtype=self.dtype)
        ds = self._dataset()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                data = ds.read(window=RioWindow(c0, r0, c1 - c0, r1 - r0), out_dtype=self.dtype)
        except RasterioError as exc:
            bh, bw = self.block_shape or (1, 1)
            rows, cols = _span(r0 // bh, (r1 - 1) // bh), _span(c0 // bw, (c1 - 1) // bw)
            raise validate.damaged(
                self._path,
                f"level {self.level}: cannot read window rows {r0}:{r1}, cols {c0}:{c1} "
                f"(TIFF block rows {rows}, cols {cols}): {_root_cause(exc)}",
            ) from exc
        return np.asarray(data)

    def describe(self) -> dict[str, Any]:
        """Base metadata plus ``driver``, ``compression``, ``interleave``, ``block_layout``."""
        info = super().describe()
        info.update(
            driver=self.driver,
            compression=self.compression,
            interleave=self.interleave,
            block_layout="tiles" if self.tiled else "strips",
        )
        return info
