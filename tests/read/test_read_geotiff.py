"""GeoTIFF through rasterio: metadata round trip, windows, overviews, read errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile

from tests.read.read_helpers import CRS, NODATA, TRANSFORM, Written, write_geotiff
from tilesegment.errors import DamagedInputError, GeometryError, InputError
from tilesegment.read import open_raster
from tilesegment.read.geotiff import GeoTiffRaster


def test_metadata_round_trip(geotiff: Written) -> None:
    raster = open_raster(geotiff.path)
    assert isinstance(raster, GeoTiffRaster)
    assert raster.kind == "geotiff"
    assert raster.shape == (3, 100, 130)
    assert raster.dtype == np.float32
    assert raster.nodata == NODATA
    assert raster.block_shape == (32, 32)
    assert rasterio.crs.CRS.from_wkt(raster.georef.crs_wkt) == rasterio.crs.CRS.from_string(CRS)
    assert raster.georef.transform == tuple(TRANSFORM)[:6]
    assert raster.georef.pixel_size == (30.0, 30.0)
    assert raster.georef.unit == "m"
    info = raster.describe()
    assert info["compression"] == "deflate"
    assert info["block_layout"] == "tiles"
    assert [lv["shape"] for lv in info["levels"]] == [[100, 130], [50, 65], [25, 33]]


@pytest.mark.parametrize("window", [(0, 100, 0, 130), (3, 41, 17, 90), (99, 100, 129, 130)])
def test_window_reads_equal_array(geotiff: Written, window: tuple[int, int, int, int]) -> None:
    r0, r1, c0, c1 = window
    got = open_raster(geotiff.path).read(window)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, geotiff.levels[0][:, r0:r1, c0:c1])


def test_integer_bands_and_strips(tmp_path: Path) -> None:
    data = np.arange(2 * 37 * 23, dtype=np.uint16).reshape(2, 37, 23)
    path = write_geotiff(tmp_path / "strips.tif", data, tiled=False, compress="lzw", nodata=0,
                         blockxsize=None, blockysize=None)
    raster = open_raster(path)
    assert raster.dtype == np.uint16 and raster.nodata == 0
    assert raster.describe()["block_layout"] == "strips"
    np.testing.assert_array_equal(raster.read((5, 30, 2, 21)), data[:, 5:30, 2:21])


def test_overview_level(geotiff: Written) -> None:
    raster = open_raster(geotiff.path, level=1)
    assert raster.level == 1 and raster.shape == (3, 50, 65)
    assert raster.georef.pixel_size == pytest.approx((60.0, 60.0))
    with rasterio.open(geotiff.path, overview_level=0) as ds:
        np.testing.assert_array_equal(raster.read((0, 50, 0, 65)), ds.read())
    assert raster.georef.transform == tuple(ds.transform)[:6]


def test_missing_level_and_bad_window(geotiff: Written) -> None:
    with pytest.raises(InputError, match=r"scene\.tif: level 3 does not exist"):
        open_raster(geotiff.path, level=3)
    raster = open_raster(geotiff.path)
    with pytest.raises(GeometryError, match="not inside the raster"):
        raster.read((0, 101, 0, 10))


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_not_georeferenced_png(tmp_path: Path) -> None:
    data = np.arange(3 * 20 * 30, dtype=np.uint8).reshape(3, 20, 30)
    path = tmp_path / "plain.png"
    with rasterio.open(path, "w", driver="PNG", width=30, height=20, count=3,
                       dtype="uint8") as ds:
        ds.write(data)
    raster = open_raster(path)
    assert raster.georef.transform is None and raster.georef.pixel_size is None
    np.testing.assert_array_equal(raster.read((0, 20, 0, 30)), data)


def test_corrupt_block_fails_at_read(geotiff: Written, tmp_path: Path) -> None:
    with tifffile.TiffFile(geotiff.path) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[6], page.databytecounts[6]  # block row 1, col 1
    blob = bytearray(geotiff.path.read_bytes())
    blob[offset : offset + count] = b"\x55" * count
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(bytes(blob))
    raster = open_raster(bad)
    np.testing.assert_array_equal(raster.read((0, 32, 0, 32)), geotiff.levels[0][:, :32, :32])
    with pytest.raises(DamagedInputError, match=r"corrupt\.tif: .*rows 30:40, cols 40:50 "
                       r"\(TIFF block rows 0-1, cols 1\)") as err:
        raster.read((30, 40, 40, 50))
    assert "\n" not in str(err.value)


def test_truncated_geotiff_fails_at_open(geotiff: Written, tmp_path: Path) -> None:
    blob = geotiff.path.read_bytes()
    with tifffile.TiffFile(geotiff.path) as tif:
        last = max(tif.pages[0].dataoffsets)
    bad = tmp_path / "cut.tif"
    bad.write_bytes(blob[: last + 10])
    with pytest.raises(DamagedInputError, match=r"cut\.tif: level 0: TIFF block \d+ .*past the "
                       r"end of the file"):
        open_raster(bad)
