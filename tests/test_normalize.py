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
    data[1, 200, 200:210] = -9999  # nodata in one band: left out of that band only
    raster = ArrayRaster(data, nodata=-9999.0)
    stats = raster_statistics(raster, block=64)
    for b in range(3):
        values = data[b][data[b] != -9999].astype(np.float64)
        assert stats.mean[b] == pytest.approx(values.mean(), rel=1e-12)
        assert stats.std[b] == pytest.approx(values.std(), rel=1e-10)
        assert stats.count[b] == values.size


def test_statistics_do_not_depend_on_block_size():
    data = np.random.default_rng(3).random((2, 130, 170))
    a = raster_statistics(open_raster(data), block=32)
    b = raster_statistics(open_raster(data), block=1000)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-13)
    np.testing.assert_allclose(a.std, b.std, rtol=1e-12)


def test_a_pixel_is_nodata_only_when_every_band_is():
    data = np.ones((2, 4, 4), np.float32)
    data[0, 1, 1] = np.nan
    data[:, 2, 2] = np.nan
    data[0, 3, 3] = 7
    data[:, 0, 0] = 7
    assert valid_mask(data, None).sum() == 15
    assert valid_mask(data, 7.0).sum() == 14


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
