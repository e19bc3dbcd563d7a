"""Writers of small real files (GeoTIFF, pyramidal TIFF) shared by the reader tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import tifffile
from affine import Affine

CRS = "EPSG:32119"
TRANSFORM = Affine(30.0, 0.0, 630000.0, 0.0, -30.0, 230000.0)
NODATA = -9999.0


@dataclass
class Written:
    """A file written for a test and the arrays it holds, one ``(C, H, W)`` per level."""

    path: Path
    levels: list[np.ndarray]


def block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """``(C, H, W)`` averaged over ``f×f`` blocks (H and W multiples of ``f``)."""
    c, h, w = a.shape
    return a.reshape(c, h // f, f, w // f, f).mean(axis=(2, 4)).astype(a.dtype)


def write_geotiff(path: Path, data: np.ndarray, *, overviews: tuple[int, ...] = (),
                  **profile: object) -> Path:
    """Write ``data`` ``(C, H, W)`` as a tiled deflate GeoTIFF in EPSG:32119, 30 m pixels."""
    options = dict(
        driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
        dtype=data.dtype, crs=CRS, transform=TRANSFORM, nodata=NODATA, tiled=True,
        blockxsize=32, blockysize=32, compress="deflate",
    )
    options.update(profile)
    with rasterio.open(path, "w", **options) as ds:
        ds.write(data)
        if overviews:
            ds.build_overviews(list(overviews))
    return path


def write_pyramid(path: Path, base: np.ndarray, *, pixel_size_um: float | None = 0.25,
                  n_levels: int = 3, tile: int = 32, compression: str = "zlib") -> Written:
    """A pyramidal tiled TIFF (levels in SubIFDs), each level the 2×2 mean of the one above.

    ``base`` is ``(C, H, W)``; RGB uint8 is stored as ``(H, W, 3)``, else one page per
    sample in planar layout. Pixel size goes in the resolution tags (pixels per cm).
    """
    levels = [base]
    for _ in range(n_levels - 1):
        levels.append(block_mean(levels[-1], 2))
    rgb = base.shape[0] == 3 and base.dtype == np.uint8
    extra: dict[str, object] = {}
    if pixel_size_um is not None:
        extra = {"resolution": (1e4 / pixel_size_um, 1e4 / pixel_size_um),
                 "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tw:
        for i, level in enumerate(levels):
            data = np.moveaxis(level, 0, -1) if rgb else level if len(level) > 1 else level[0]
            kwargs = dict(
                tile=(tile, tile), compression=compression,
                photometric="rgb" if rgb else "minisblack",
                planarconfig="contig" if rgb or len(level) == 1 else "separate",
            )
            if i == 0:
                tw.write(data, subifds=n_levels - 1, **kwargs, **extra)
            else:
                tw.write(data, subfiletype=1, **kwargs)
    return Written(path, levels)
