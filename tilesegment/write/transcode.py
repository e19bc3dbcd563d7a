"""A block store (Zarr) → a tiled, DEFLATE-compressed GeoTIFF, one window at a time.

Windows are aligned with the TIFF tiles and about one block in size, so every TIFF tile is
written once, whole, and memory stays bounded by one block. A Cloud-Optimized GeoTIFF is
made from that file by GDAL's COG driver (overviews with ``MODE`` for class masks).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.errors import CRSError, NotGeoreferencedWarning
from rasterio.transform import Affine
from rasterio.windows import Window

from tilesegment.errors import OutputError
from tilesegment.read.base import Georef
from tilesegment.read.gdal_cache import cap_gdal_cache
from tilesegment.write import atomic

cap_gdal_cache()

BIGTIFF_THRESHOLD = 3 * 2**30 + 2**29
"""Uncompressed bytes (3.5 GiB) above which a file may pass the classic TIFF's 4 GiB limit
(DEFLATE can expand incompressible data slightly; tile indexes and tags add a little)."""

OVERVIEW_FACTOR = 4 / 3
"""Overviews halving each side add at most 1/4 + 1/16 + ... = 1/3 of the full resolution."""

_CM_PER_UNIT = {"nm": 1e-7, "um": 1e-4, "µm": 1e-4, "mm": 0.1, "cm": 1.0, "m": 100.0}

Reader = Callable[[int, int, int, int], np.ndarray]
"""``read(row0, row1, col0, col1) -> (bands, h, w)`` array of the layer's dtype."""


@dataclass
class Layer:
    """One GeoTIFF to write: where its pixels come from and what to declare in it."""

    read: Reader
    bands: int
    dtype: np.dtype
    nodata: float
    descriptions: tuple[str, ...]
    tags: dict[str, str]
    resampling: str  # overview resampling for COG: MODE for classes, AVERAGE for scores
    predictor: int | None = None
    colormap: dict[int, tuple[int, int, int, int]] | None = field(default=None)


def bigtiff_option(
    shape: tuple[int, int], bands: int, dtype: np.dtype | str, *, overviews: bool = False
) -> str:
    """``"YES"`` when the uncompressed raster (plus overviews) may pass ~4 GiB, else
    ``"IF_SAFER"``. ``shape`` is ``(H, W)``."""
    nbytes = shape[0] * shape[1] * bands * np.dtype(dtype).itemsize
    if overviews:
        nbytes = math.ceil(nbytes * OVERVIEW_FACTOR)
    return "YES" if nbytes > BIGTIFF_THRESHOLD else "IF_SAFER"


def tiff_tile_size(shape: tuple[int, int]) -> int:
    """Internal TIFF block side: 512, or 256 for rasters narrower than 512 pixels."""
    return 512 if min(shape) >= 512 else 256


def parse_crs(crs_wkt: str | None) -> CRS | None:
    """The rasterio CRS of ``crs_wkt`` (None for none); OutputError when GDAL rejects it."""
    if not crs_wkt:
        return None
    try:
        return CRS.from_wkt(crs_wkt)
    except CRSError as exc:
        raise OutputError(f"cannot write this CRS to a GeoTIFF: {exc}") from exc


def georef_affine(georef: Georef) -> Affine | None:
    """The affine transform of ``georef`` (None for none).

    ``Georef.transform`` is taken as documented in ``read/base.py``:
    ``(a, b, c, d, e, f)`` with ``x = a·col + b·row + c``, ``y = d·col + e·row + f``, which
    is rasterio's ``Affine`` order (GDAL's own geotransform order is ``(c, a, b, f, d, e)``).
    """
    if georef.transform is None:
        return None
    return Affine(*(float(v) for v in georef.transform))


def resolution_tags(georef: Georef) -> dict[str, str]:
    """TIFF resolution tags (pixels per cm) for a raster without CRS whose pixel size is
    known in a length unit, e.g. a slide at 0.25 µm/px → 40000 px/cm; else ``{}``."""
    if georef.crs_wkt or not georef.pixel_size or georef.unit not in _CM_PER_UNIT:
        return {}
    cm = _CM_PER_UNIT[georef.unit]
    size_y, size_x = georef.pixel_size
    return {
        "TIFFTAG_XRESOLUTION": f"{1.0 / (size_x * cm):.12g}",
        "TIFFTAG_YRESOLUTION": f"{1.0 / (size_y * cm):.12g}",
        "TIFFTAG_RESOLUTIONUNIT": "3",  # centimetre
    }


def json_tag(value: object) -> str:
    """A tag value: compact JSON."""
    return json.dumps(value, separators=(",", ":"))


def windows(
    shape: tuple[int, int], block_shape: tuple[int, int], tile: int
) -> Iterator[tuple[int, int, int, int]]:
    """``(row0, row1, col0, col1)`` windows in row-major order covering ``shape``: each
    aligned with ``tile`` and about one block (the block rounded up to whole tiles)."""
    height, width = shape
    step_y = math.ceil(block_shape[0] / tile) * tile
    step_x = math.ceil(block_shape[1] / tile) * tile
    for row0 in range(0, height, step_y):
        for col0 in range(0, width, step_x):
            yield row0, min(row0 + step_y, height), col0, min(col0 + step_x, width)


def _write_tiled(
    layer: Layer,
    dst: Path,
    *,
    shape: tuple[int, int],
    block_shape: tuple[int, int],
    georef: Georef,
    tile: int,
) -> None:
    """Write ``layer`` to a tiled, DEFLATE-compressed GeoTIFF at ``dst``."""
    profile: dict[str, object] = {
        "driver": "GTiff",
        "height": shape[0],
        "width": shape[1],
        "count": layer.bands,
        "dtype": np.dtype(layer.dtype).name,
        "nodata": layer.nodata,
        "tiled": True,
        "blockxsize": tile,
        "blockysize": tile,
        "compress": "deflate",
        "interleave": "band",
        "bigtiff": bigtiff_option(shape, layer.bands, layer.dtype),
        "num_threads": "ALL_CPUS",
    }
    if layer.predictor:
        profile["predictor"] = layer.predictor
    crs = parse_crs(georef.crs_wkt)
    if crs is not None:
        profile["crs"] = crs
    transform = georef_affine(georef)
    if transform is not None:
        profile["transform"] = transform
    with warnings.catch_warnings():
        # A slide without a transform is expected here: no "not georeferenced" warning.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        ds = rasterio.open(dst, "w", **profile)
    with ds:
        if layer.colormap is not None:
            ds.write_colormap(1, layer.colormap)
        for band, text in enumerate(layer.descriptions, start=1):
            ds.set_band_description(band, text)
        ds.update_tags(**layer.tags, **resolution_tags(georef))
        indexes = list(range(1, layer.bands + 1))
        for row0, row1, col0, col1 in windows(shape, block_shape, tile):
            data = np.asarray(layer.read(row0, row1, col0, col1), dtype=layer.dtype)
            ds.write(data, indexes=indexes, window=Window(col0, row0, col1 - col0, row1 - row0))


def _to_cog(layer: Layer, src: Path, dst: Path, *, shape: tuple[int, int], tile: int) -> None:
    """Copy the tiled GeoTIFF ``src`` to a Cloud-Optimized GeoTIFF with overviews."""
    options: dict[str, str] = {
        "BLOCKSIZE": str(tile),
        "COMPRESS": "DEFLATE",
        "RESAMPLING": layer.resampling,
        "OVERVIEWS": "IGNORE_EXISTING",
        "BIGTIFF": bigtiff_option(shape, layer.bands, layer.dtype, overviews=True),
        "NUM_THREADS": "ALL_CPUS",
    }
    if layer.predictor:
        options["PREDICTOR"] = str(layer.predictor)
    rasterio.shutil.copy(str(src), str(dst), driver="COG", **options)


_LIBRARY_ERROR = re.compile(r"error|no space|quota|fail|cannot|can't", re.IGNORECASE)


class _GdalErrors(logging.Filter):
    """Collects the errors GDAL reports in this thread: rasterio logs some failures (e.g.
    libtiff's write errors) at INFO level without raising. As a filter on rasterio's
    loggers it sees records before handlers do, and lets through only what the loggers'
    own levels would have let through."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.messages: list[str] = []
        self.levels: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.thread == self.thread and (
                "signalled an error" in text or record.levelno >= logging.ERROR):
            self.messages.append(text)
        return record.levelno >= self.levels.get(record.name, logging.WARNING)

    @contextlib.contextmanager
    def watching(self, names: tuple[str, ...]) -> Iterator[None]:
        loggers = [logging.getLogger(name) for name in names]
        saved = [(logger, logger.level) for logger in loggers]
        for logger in loggers:
            self.levels[logger.name] = logger.getEffectiveLevel()
            logger.addFilter(self)
            logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))
        try:
            yield
        finally:
            for logger, level in saved:
                logger.removeFilter(self)
                logger.setLevel(level)


@contextlib.contextmanager
def _raw_stderr_captured() -> Iterator[list[str]]:
    """Route what C libraries print straight to file descriptor 2 (libtiff's
    ``_tiffWriteProc: No space left on device.``) into a list instead of the terminal;
    it is printed afterwards unless an error replaces it."""
    lines: list[str] = []
    try:
        saved = os.dup(2)
        read_end, write_end = os.pipe()
    except OSError:
        yield lines
        return
    chunks: list[bytes] = []

    def drain() -> None:
        while data := os.read(read_end, 65536):
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield lines
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        reader.join(5)
        os.close(read_end)
        lines.extend(b"".join(chunks).decode(errors="replace").splitlines())


def write_geotiff(
    layer: Layer,
    dst: Path,
    *,
    shape: tuple[int, int],
    block_shape: tuple[int, int],
    georef: Georef,
    cog: bool,
) -> None:
    """Write ``layer`` (``(bands, H, W)`` read window by window) as a GeoTIFF at ``dst``;
    with ``cog`` as a Cloud-Optimized GeoTIFF (a tiled stage file next to ``dst`` first).

    Any error GDAL or libtiff reports, raised or only logged, raises :class:`OutputError`
    (one line, naming ``dst``).
    """
    collector = _GdalErrors()
    failure: BaseException | None = None
    with collector.watching(("rasterio._err", "rasterio._env")), \
            _raw_stderr_captured() as raw:
        try:
            _write_any(layer, dst, shape=shape, block_shape=block_shape, georef=georef,
                       cog=cog)
        except Exception as exc:  # GDAL's CPLE_* errors share no base class
            failure = exc
    printed = [line for line in raw if line.strip()]
    # libtiff may only print a write error (GDAL neither raises nor logs it)
    errors = [line for line in printed if _LIBRARY_ERROR.search(line)]
    final = atomic.final_of(dst)
    if failure is not None or collector.messages or errors:
        if isinstance(failure, OutputError):
            raise failure
        detail = errors[:1] or collector.messages[:1] or [str(failure)]
        raise OutputError(f"cannot write {final}: {' '.join(detail[0].split())}") from failure
    for line in printed:  # nothing failed: what the libraries printed goes where it went
        print(line, file=sys.stderr)


def _write_any(layer: Layer, dst: Path, *, shape: tuple[int, int],
               block_shape: tuple[int, int], georef: Georef, cog: bool) -> None:
    tile = tiff_tile_size(shape)
    if not cog:
        _write_tiled(layer, dst, shape=shape, block_shape=block_shape, georef=georef, tile=tile)
        return
    stage = dst.with_name(dst.name + ".tiled")
    try:
        _write_tiled(layer, stage, shape=shape, block_shape=block_shape, georef=georef, tile=tile)
        _to_cog(layer, stage, dst, shape=shape, tile=tile)
    finally:
        atomic.remove(stage)
