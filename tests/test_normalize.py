"""Whole-raster statistics computed out of core equal NumPy's on the whole array."""

from __future__ import annotations

import numpy as np
import pytest

from tilesegment import segment
from tilesegment.normalize import normalize, raster_statistics, valid_mask
from tilesegment.read import open_raster
from tilesegment.read.array import ArrayRaster


def test_statistics_match_numpy_and_exclude_nodata():
    rng = np.random.default_rng(2)
    data = rng.normal(100, 20, size=(3, 301, 257)).astype(np.float32)
    data[:, 10:40, 30:90] = -9999  # nodata in every band
    data[1, 200, 200] = -9999      # nodata in one band excludes the pixel
    raster = ArrayRaster(data, nodata=-9999.0)
    stats = raster_statistics(raster, block=64)
    ok = ~(data == -9999).any(axis=0)
    values = data[:, ok].astype(np.float64)
    np.testing.assert_allclose(stats.mean, values.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(stats.std, values.std(axis=1), rtol=1e-10)
    assert (stats.count == ok.sum()).all()


def test_statistics_do_not_depend_on_block_size():
    data = np.random.default_rng(3).random((2, 130, 170))
    a = raster_statistics(open_raster(data), block=32)
    b = raster_statistics(open_raster(data), block=1000)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-13)
    np.testing.assert_allclose(a.std, b.std, rtol=1e-12)


def test_nan_is_never_valid():
    data = np.ones((2, 4, 4), np.float32)
    data[0, 1, 1] = np.nan
    assert valid_mask(data, None).sum() == 15


def test_raster_normalisation_is_global_not_per_tile():
    """Identity model with raster normalisation returns (x - mean) / std of the whole raster,
    the same at every tile."""
    rng = np.random.default_rng(4)
    data = (rng.random((2, 90, 110)) * np.array([10.0, 1000.0])[:, None, None]).astype(
        np.float32)
    out = segment(data, model="identity", normalization="raster", tile=32, halo=4,
                  returns="logits")
    mean = data.reshape(2, -1).astype(np.float64).mean(1)
    std = data.reshape(2, -1).astype(np.float64).std(1)
    expect = (data - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)
    fixed = segment(data, model="identity", normalization=([1.0, 2.0], [2.0, 4.0]),
                    tile=32, halo=4, returns="logits")
    np.testing.assert_allclose(fixed, normalize(data, np.array([1.0, 2.0]),
                                                np.array([2.0, 4.0])), rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["raster", "none"])
def test_nodata_pixels_become_nodata_in_the_mask(mode):
    data = np.random.default_rng(5).random((3, 40, 50)).astype(np.float32)
    data[:, 5:9, 7:20] = 0.0
    raster = ArrayRaster(data, nodata=0.0)
    mask = segment(raster, model="unet-tiny", classes=3, tile=32, halo=8, normalization=mode)
    expect = np.zeros(mask.shape, bool)
    expect[5:9, 7:20] = True
    assert np.array_equal(mask == 255, expect)
