"""The ``--mpp`` rule: level choice, area resampling, window independence, nodata."""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from tests.read.read_helpers import NODATA, Written, write_geotiff
from tilesegment.errors import GeometryError, InputError
from tilesegment.read import open_raster
from tilesegment.read.resample import ResampledRaster


def area_reference(src: np.ndarray, scale: float, out_hw: tuple[int, int]) -> np.ndarray:
    """Slow, loop-based area average of ``src`` ``(C, H, W)``: each output pixel is the
    overlap-weighted mean of the source pixels under ``[i·s, (i+1)·s)`` (clipped)."""
    c, h, w = src.shape
    out = np.zeros((c, *out_hw))
    for i in range(out_hw[0]):
        for j in range(out_hw[1]):
            total, weight = np.zeros(c), 0.0
            for k in range(math.floor(i * scale), min(h, math.ceil((i + 1) * scale))):
                wy = min((i + 1) * scale, k + 1) - max(i * scale, k)
                for m in range(math.floor(j * scale), min(w, math.ceil((j + 1) * scale))):
                    wx = min((j + 1) * scale, m + 1) - max(j * scale, m)
                    total += wy * wx * src[:, k, m]
                    weight += wy * wx
            out[:, i, j] = total / weight
    return out


@pytest.mark.parametrize(
    ("mpp", "level", "resampled"),
    [(0.5, 1, False), (0.504, 1, False), (0.75, 1, True), (1.0, 2, False), (0.26, 0, True),
     (4.0, 2, True), (0.2525, 0, False)],
)
def test_level_choice(float_pyramid: Written, mpp: float, level: int, resampled: bool) -> None:
    raster = open_raster(float_pyramid.path, mpp=mpp)
    assert raster.level == level
    assert isinstance(raster, ResampledRaster) is resampled
    if resampled:
        assert raster.georef.pixel_size == (mpp, mpp)
        assert raster.describe()["resampled"]["from_level"] == level


def test_no_level_fine_enough(float_pyramid: Written) -> None:
    with pytest.raises(InputError, match=r"float\.tif: no level has pixels at or finer than "
                       r"0\.2 um: the finest level has 0\.25 um"):
        open_raster(float_pyramid.path, mpp=0.2)


def test_mpp_without_pixel_size_and_level_with_mpp(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--mpp needs the pixel size"):
        open_raster(np.zeros((4, 4)), mpp=1.0)
    with pytest.raises(GeometryError, match="level and mpp are exclusive"):
        open_raster(np.zeros((4, 4)), level=0, mpp=1.0)


def test_factor_one_and_a_half_equals_block_mean(float_pyramid: Written) -> None:
    raster = open_raster(float_pyramid.path, mpp=0.75)
    assert raster.shape == (2, 80, 64) and raster.dtype == np.float32
    level1 = float_pyramid.levels[1].astype(np.float64)
    fine = np.repeat(np.repeat(level1, 2, axis=1), 2, axis=2)  # half-pixel grid
    expected = fine.reshape(2, 80, 3, 64, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(raster.read((0, 80, 0, 64)), expected, rtol=1e-6)


def test_uneven_factor_matches_loop_reference(float_pyramid: Written) -> None:
    raster = open_raster(float_pyramid.path, mpp=1.7)  # level 2 (1.0 µm), s = 1.7
    assert raster.level == 2
    src = float_pyramid.levels[2].astype(np.float64)
    assert raster.shape == (2, round(60 / 1.7), round(48 / 1.7))
    expected = area_reference(src, 1.7, raster.shape[1:])
    np.testing.assert_allclose(raster.read((0, raster.height, 0, raster.width)), expected,
                               rtol=1e-6)


@pytest.mark.parametrize("mpp", [0.75, 0.61, 1.7, 0.26])
def test_window_independence(float_pyramid: Written, mpp: float) -> None:
    raster = open_raster(float_pyramid.path, mpp=mpp)
    h, w = raster.height, raster.width
    whole = raster.read((0, h, 0, w))
    rows = [0, 7, h // 2 + 1, h]  # three windows of odd, uneven heights
    stitched = np.concatenate([raster.read((a, b, 0, w)) for a, b in pairwise(rows)], 1)
    assert np.array_equal(whole, stitched)
    cols = [0, 5, w - 3, w]
    grid = np.block([[raster.read((a, b, c, d)) for c, d in pairwise(cols)]
                     for a, b in pairwise(rows)])
    assert np.array_equal(whole, grid)


def test_uint8_rounds_to_nearest(rgb_pyramid: Written) -> None:
    raster = open_raster(rgb_pyramid.path, mpp=2.0)  # level 2 (1.0 µm) averaged 2×2
    assert raster.dtype == np.uint8 and raster.shape == (3, 15, 20)
    expected = rgb_pyramid.levels[2].astype(np.float64).reshape(3, 15, 2, 20, 2).mean((2, 4))
    got = raster.read((0, 15, 0, 20)).astype(np.float64)
    assert np.abs(got - expected).max() <= 0.5


def test_nodata_left_out_of_average(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.random((1, 90, 120), dtype=np.float32) * 10
    data[:, :4, :4] = NODATA  # fully covers output (0..1, 0..1), 2/3 of row/col 2
    data[:, 50, 60] = NODATA  # one lone nodata pixel inside a valid neighbourhood
    path = write_geotiff(tmp_path / "holes.tif", data)
    raster = open_raster(path, mpp=45.0)
    assert isinstance(raster, ResampledRaster)
    assert raster.shape == (1, 60, 80) and raster.nodata == NODATA
    assert raster.georef.transform == pytest.approx((45.0, 0.0, 630000.0, 0.0, -45.0, 230000.0))
    got = raster.read((0, 60, 0, 80))
    fine = np.repeat(np.repeat(data.astype(np.float64), 2, 1), 2, 2).reshape(1, 60, 3, 80, 3)
    valid = fine != NODATA
    share = valid.mean(axis=(2, 4))
    mean = np.where(valid, fine, 0).sum(axis=(2, 4)) / np.maximum(valid.sum(axis=(2, 4)), 1)
    expected = np.where(share >= 0.5, mean, NODATA)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert (got[0, :2, :2] == NODATA).all() and got[0, 33, 40] != NODATA
