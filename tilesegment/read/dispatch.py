"""``open_raster``: one entry point that picks the reader for a path, an array or a raster.

Paths: a directory or ``*.zarr`` → :class:`ZarrRaster`; ``*.ndpi``, ``*.mrxs``, ``*.scn``,
``*.vms``, ``*.vmu``, ``*.bif`` → :class:`OpenSlideRaster`; a TIFF → :class:`SlideRaster`
(SVS, OME-TIFF, ImageJ, or any TIFF without georeference tags, pyramids included) or
:class:`GeoTiffRaster` (GeoTIFF or GDAL tags), and a TIFF slide that tifffile cannot decode
(an unsupported compression) but OpenSlide recognises → :class:`OpenSlideRaster`; anything
else → GDAL via rasterio.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from tilesegment.errors import DamagedInputError, GeometryError, InputError
from tilesegment.read.array import ArrayRaster, is_dask_array
from tilesegment.read.base import Raster
from tilesegment.read.resample import ResampledRaster, level_for_mpp, needs_resampling

# The I/O readers import rasterio, tifffile and zarr: they load on the first open, so that
# ``import tilesegment.read`` (for the Raster contract) stays cheap.


def _open_path(path: Path, level: int) -> Raster:
    from tilesegment.read import tiffmeta, validate
    from tilesegment.read.geotiff import GeoTiffRaster
    from tilesegment.read.slide import SlideRaster
    from tilesegment.read.zarr_reader import ZarrRaster

    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir() or path.suffix.lower() == ".zarr":
        return ZarrRaster(path, level)
    from tilesegment.read import openslide_reader

    if path.suffix.lower() in openslide_reader.SUFFIXES:
        return openslide_reader.OpenSlideRaster(path, level)
    try:
        tiff = validate.is_tiff(path)
    except OSError as exc:
        raise validate.unsupported(path, f"cannot read the file ({exc.strerror})") from exc
    if not tiff:
        return GeoTiffRaster(path, level)
    tif = validate.open_tiff(path)
    try:
        slide = tiffmeta.is_slide(tif)
    finally:
        tif.close()
    if not slide:
        return GeoTiffRaster(path, level)
    try:
        return SlideRaster(path, level)
    except DamagedInputError:
        raise
    except InputError as exc:  # intact but not decodable by tifffile: OpenSlide's turn
        if openslide_reader.openslide_vendor(path) is None:
            raise
        try:
            return openslide_reader.OpenSlideRaster(path, level)
        except InputError:
            raise exc from None


def open_raster(
    source: str | os.PathLike[str] | np.ndarray | Raster | Any,
    *,
    level: int | None = None,
    mpp: float | None = None,
) -> Raster:
    """Open ``source`` lazily as a ``(C, H, W)`` :class:`Raster` (metadata only).

    ``source``: a path (TIFF, GeoTIFF, SVS, OME-TIFF, Zarr, anything GDAL opens), a NumPy or
    Dask array (``(H, W)`` → ``(1, H, W)``, or ``(C, H, W)``), or a raster (returned as is).
    ``level``: the pyramid level (0 = full resolution). ``mpp``: a target pixel size in the
    raster's unit instead; the coarsest level at or finer than it is chosen and resampled
    when more than 1 % finer. Giving both is an error.
    """
    if level is not None and mpp is not None:
        raise GeometryError("level and mpp are exclusive: give one or the other")
    if level is not None and (isinstance(level, bool) or not isinstance(level, int)):
        raise GeometryError(f"level must be an int, not {level!r}")
    if isinstance(source, Raster):
        raster = source if level is None else source.at_level(level)
    elif isinstance(source, np.ndarray) or is_dask_array(source):
        raster = ArrayRaster(source).at_level(level or 0)
    elif isinstance(source, str | os.PathLike):
        # absolute, so that a worker process with another working directory finds it
        raster = _open_path(Path(source).absolute(), level or 0)
    else:
        raise InputError(
            f"cannot open a {type(source).__name__}: give a path, an array or a Raster"
        )
    if mpp is None:
        return raster
    chosen = level_for_mpp(raster, mpp)
    if chosen != raster.level:
        raster = raster.at_level(chosen)
    size = raster.georef.pixel_size
    if size is not None and needs_resampling(size, mpp):
        return ResampledRaster(raster, mpp)
    return raster
