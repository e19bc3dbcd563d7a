"""Slides and microscopy TIFFs through tifffile: levels, layouts, pixel sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.read.read_helpers import Written
from tilesegment.errors import InputError
from tilesegment.read import open_raster
from tilesegment.read.slide import SlideRaster


def test_pyramid_levels_and_pixel_sizes(rgb_pyramid: Written) -> None:
    raster = open_raster(rgb_pyramid.path)
    assert isinstance(raster, SlideRaster)
    assert raster.kind == "slide" and raster.level == 0
    assert raster.shape == (3, 120, 160) and raster.dtype == np.uint8
    assert raster.block_shape == (32, 32)
    assert [lv.shape for lv in raster.levels] == [(120, 160), (60, 80), (30, 40)]
    sizes = [lv.pixel_size for lv in raster.levels]
    assert sizes == [pytest.approx((s, s)) for s in (0.25, 0.5, 1.0)]
    assert raster.georef.unit == "um" and raster.georef.crs_wkt is None
    info = raster.describe()
    assert info["compression"] == "ADOBE_DEFLATE"
    assert info["block_layout"] == "tiles"
    assert info["format"] == "tiff"


@pytest.mark.parametrize("level", [0, 1, 2])
def test_level_reads_equal_written(rgb_pyramid: Written, level: int) -> None:
    raster = open_raster(rgb_pyramid.path, level=level)
    expected = rgb_pyramid.levels[level]
    assert raster.shape == expected.shape
    assert raster.georef.pixel_size == pytest.approx((0.25 * 2**level,) * 2)
    np.testing.assert_array_equal(raster.read((0, raster.height, 0, raster.width)), expected)
    np.testing.assert_array_equal(raster.read((5, 29, 31, 33)), expected[:, 5:29, 31:33])


def test_missing_level(rgb_pyramid: Written) -> None:
    with pytest.raises(InputError, match=r"slide\.tif: level 3 does not exist"):
        open_raster(rgb_pyramid.path, level=3)


def test_planar_float_pyramid(float_pyramid: Written) -> None:
    raster = open_raster(float_pyramid.path, level=1)
    assert raster.shape == (2, 120, 96) and raster.dtype == np.float32
    np.testing.assert_array_equal(raster.read((7, 100, 3, 95)),
                                  float_pyramid.levels[1][:, 7:100, 3:95])


def test_strips_rgb(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(0, 256, (45, 38, 3), dtype=np.uint8)
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, data, photometric="rgb", rowsperstrip=7, compression="lzw")
    raster = open_raster(path)
    assert raster.block_shape == (7, 38)
    assert raster.describe()["block_layout"] == "strips"
    assert raster.georef.pixel_size is None  # tifffile writes no resolution unit
    np.testing.assert_array_equal(raster.read((6, 44, 1, 37)),
                                  np.moveaxis(data, 2, 0)[:, 6:44, 1:37])


@pytest.mark.parametrize(("byteorder", "planar"), [("<", "contig"), (">", "contig"),
                                                  (">", "separate")])
def test_uncompressed_strips_read_by_rows(tmp_path: Path, rng: np.random.Generator,
                                          byteorder: str, planar: str) -> None:
    data = rng.integers(0, 65535, (3, 41, 27), dtype=np.uint16)
    path = tmp_path / "raw.tif"
    stored = data if planar == "separate" else np.moveaxis(data, 0, -1)
    tifffile.imwrite(path, stored, byteorder=byteorder, rowsperstrip=6, planarconfig=planar,
                     photometric="minisblack")
    raster = open_raster(path)
    assert raster.shape == (3, 41, 27) and raster.dtype == np.uint16
    assert raster.dtype.isnative
    np.testing.assert_array_equal(raster.read((5, 40, 2, 26)), data[:, 5:40, 2:26])
    np.testing.assert_array_equal(raster.read((0, 41, 0, 27)), data)


def test_jpeg_tiles_equal_tifffile_decode(tmp_path: Path, rng: np.random.Generator) -> None:
    data = np.repeat(np.repeat(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8), 8, 0), 8, 1)
    path = tmp_path / "jpeg.tif"
    tifffile.imwrite(path, data, photometric="rgb", tile=(32, 32), compression="jpeg")
    expected = np.moveaxis(tifffile.imread(path), 2, 0)
    raster = open_raster(path)
    assert raster.describe()["compression"] == "JPEG"
    np.testing.assert_array_equal(raster.read((0, 80, 0, 96)), expected)
    np.testing.assert_array_equal(raster.read((31, 65, 20, 70)), expected[:, 31:65, 20:70])


def test_ome_tiff_channels_and_pixel_size(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(0, 60000, (2, 64, 96), dtype=np.uint16)
    path = tmp_path / "cells.ome.tif"
    metadata = {"axes": "CYX", "PhysicalSizeX": 300, "PhysicalSizeXUnit": "nm",
                "PhysicalSizeY": 0.35}
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(data, subifds=1, tile=(32, 32), metadata=metadata)
        tw.write(data[:, ::2, ::2], subfiletype=1, tile=(32, 32))
    raster = open_raster(path)
    assert raster.describe()["format"] == "ome"
    assert raster.shape == (2, 64, 96)
    assert raster.georef.pixel_size == pytest.approx((0.35, 0.3))
    assert raster.levels[1].pixel_size == pytest.approx((0.7, 0.6))
    np.testing.assert_array_equal(raster.read((3, 60, 10, 90)), data[:, 3:60, 10:90])
    low = open_raster(path, level=1)
    np.testing.assert_array_equal(low.read((0, 32, 0, 48)), data[:, ::2, ::2])


def test_resolution_tags_in_inches(tmp_path: Path) -> None:
    path = tmp_path / "dpi.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), resolution=(25400 / 2.0, 25400 / 2.0),
                     resolutionunit="INCH")
    raster = open_raster(path)
    assert raster.shape == (1, 8, 8)
    assert raster.georef.pixel_size == pytest.approx((2.0, 2.0))


def test_time_series_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "movie.ome.tif"
    tifffile.imwrite(path, np.zeros((3, 2, 8, 8), np.uint8), metadata={"axes": "TCYX"})
    with pytest.raises(InputError, match=r"movie\.ome\.tif: image series has axes TCYX"):
        open_raster(path)
