"""Write a synthetic, georeferenced, tiled GeoTIFF scene to try tilesegment on.

    python pipelines/make_sample.py sample.tif --size 2048

RGB uint8, EPSG:32633 (UTM 33N), 10 m pixels, 256×256 TIFF blocks, DEFLATE, nodata 0 in a
corner strip. The pattern (fields, a river, noise) is generated block by block from the
pixel coordinates, so any size is written in bounded memory and the same size gives the
same bytes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def scene_block(r0: int, r1: int, c0: int, c1: int, size: int) -> np.ndarray:
    """RGB ``uint8 (3, r1-r0, c1-c0)`` of the synthetic scene at rows r0:r1, cols c0:c1."""
    y, x = np.mgrid[r0:r1, c0:c1].astype(np.float64)
    fields = (np.floor(x / 197) + np.floor(y / 151)) % 3
    river = np.abs(y - size / 2 - 0.18 * size * np.sin(x / size * 6.0)) < size / 60
    texture = np.sin(x * 0.11) * np.cos(y * 0.07) + np.sin((x + y) * 0.031)
    noise = (np.sin(x * 12.9898 + y * 78.233) * 43758.5453) % 1.0
    base = np.stack([60 + 50 * fields, 110 + 30 * fields, 50 + 20 * fields])
    base = base + 12 * texture + 20 * noise
    base[:, river] = np.array([40.0, 70.0, 140.0])[:, None]
    out = np.clip(base, 1, 255).astype(np.uint8)
    out[:, (x < size / 32) & (y > size - size / 16)] = 0  # a nodata corner
    return out


def write_scene(path: str | Path, size: int, block: int = 256) -> Path:
    """Write the ``size``×``size`` synthetic scene to ``path`` and return it."""
    import rasterio
    from rasterio.transform import from_origin

    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                   crs="EPSG:32633", transform=from_origin(500000.0, 5200000.0, 10.0, 10.0),
                   tiled=True, blockxsize=block, blockysize=block, compress="deflate",
                   nodata=0, BIGTIFF="IF_SAFER")
    step = 2048
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, size, step):
            for c0 in range(0, size, step):
                r1, c1 = min(r0 + step, size), min(c0 + step, size)
                window = rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0)
                dst.write(scene_block(r0, r1, c0, c1, size), window=window)
    return Path(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="GeoTIFF to write (.tif)")
    parser.add_argument("--size", type=int, default=2048, help="side in pixels")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    if Path(args.output).exists() and not args.overwrite:
        parser.error(f"{args.output} exists; pass --overwrite to replace it")
    path = write_scene(args.output, args.size)
    print(f"wrote {path} ({args.size} × {args.size} px, 3 bands, EPSG:32633)")


if __name__ == "__main__":
    main()
