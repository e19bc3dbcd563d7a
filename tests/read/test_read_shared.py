"""The real files in ``../shared/data`` (skipped cleanly when that folder is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile

from tilesegment.read import open_raster
from tilesegment.read.resample import ResampledRaster

pytestmark = pytest.mark.shared


def test_svs_slide(shared_data: Path) -> None:
    path = shared_data / "slide" / "cmu_small_region.svs"
    raster = open_raster(path)
    assert raster.kind == "slide" and raster.level == 0
    assert raster.shape == (3, 2967, 2220) and raster.dtype == np.uint8
    assert raster.georef.pixel_size == pytest.approx((0.499, 0.499))
    assert raster.georef.unit == "um"
    assert raster.block_shape == (240, 240)
    info = raster.describe()
    assert info["compression"] == "JPEG" and info["format"] == "svs"
    assert info["levels"] == [{"shape": [2967, 2220], "pixel_size": [0.499, 0.499]}]
    with tifffile.TiffFile(path) as tif:
        expected = tif.series[0].pages[0].asarray()[1000:1500, 470:1234]
    np.testing.assert_array_equal(raster.read((1000, 1500, 470, 1234)),
                                  np.moveaxis(expected, 2, 0))


def test_svs_at_one_micrometre(shared_data: Path) -> None:
    raster = open_raster(shared_data / "slide" / "cmu_small_region.svs", mpp=1.0)
    assert isinstance(raster, ResampledRaster)
    assert raster.shape == (3, round(2967 * 0.499), round(2220 * 0.499))
    assert raster.read((0, 64, 0, 64)).shape == (3, 64, 64)


def test_landsat_matches_rasterio(shared_data: Path) -> None:
    path = shared_data / "landsat" / "landsat7_multiband.tif"
    raster = open_raster(path)
    with rasterio.open(path) as ds:
        assert raster.kind == "geotiff"
        assert raster.shape == (ds.count, ds.height, ds.width) == (5, 443, 489)
        assert raster.dtype == np.float32
        assert raster.nodata == ds.nodata == -99999
        assert rasterio.crs.CRS.from_wkt(raster.georef.crs_wkt) == ds.crs
        assert raster.georef.transform == tuple(ds.transform)[:6]
        assert raster.georef.pixel_size == (28.5, 28.5) and raster.georef.unit == "m"
        expected = ds.read(window=((100, 321), (17, 400)))
    np.testing.assert_array_equal(raster.read((100, 321, 17, 400)), expected)


def test_boxes_pyramid(shared_data: Path) -> None:
    path = shared_data / "fixtures" / "boxes.tiff"
    raster = open_raster(path)
    assert [lv.shape for lv in raster.levels] == [(250, 300), (125, 150), (62, 75), (31, 37)]
    assert raster.describe()["compression"] == "ADOBE_DEFLATE"
    for level in range(4):
        low = open_raster(path, level=level)
        with tifffile.TiffFile(path) as tif:
            expected = np.moveaxis(tif.series[0].levels[level].asarray(), 2, 0)
        np.testing.assert_array_equal(low.read((0, low.height, 0, low.width)), expected)


def test_nuclei_plain_tiff(shared_data: Path) -> None:
    raster = open_raster(shared_data / "nuclei" / "nuclei.tif")
    assert raster.shape == (1, 512, 512) and raster.dtype == np.uint16
    assert raster.georef.pixel_size is None
    assert int(raster.read((0, 512, 0, 512)).max()) == 235
