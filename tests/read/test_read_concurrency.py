"""Every reader: pickling (reopen after unpickle) and reads from 4 threads at once."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

from tests.read.read_helpers import Written
from tilesegment.read import Raster, open_raster


def _zarr(tmp_path: Path) -> Raster:
    data = np.arange(3 * 100 * 90, dtype=np.float32).reshape(3, 100, 90)
    array = zarr.create_array(tmp_path / "a.zarr", shape=data.shape, chunks=(3, 32, 32),
                              dtype=data.dtype)
    array[:] = data
    return open_raster(tmp_path / "a.zarr")


OPENERS: dict[str, Callable[[Written, Written, Path], Raster]] = {
    "geotiff": lambda geo, slide, tmp: open_raster(geo.path),
    "geotiff-overview": lambda geo, slide, tmp: open_raster(geo.path, level=1),
    "slide": lambda geo, slide, tmp: open_raster(slide.path),
    "slide-resampled": lambda geo, slide, tmp: open_raster(slide.path, mpp=0.7),
    "zarr": lambda geo, slide, tmp: _zarr(tmp),
    "numpy": lambda geo, slide, tmp: open_raster(np.arange(2 * 70 * 80.0).reshape(2, 70, 80)),
    "dask": lambda geo, slide, tmp: open_raster(
        da.from_array(np.arange(70 * 80).reshape(70, 80), chunks=(16, 32))
    ),
}


def _windows(raster: Raster, n: int = 24) -> list[tuple[int, int, int, int]]:
    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        r0, c0 = int(rng.integers(0, raster.height - 1)), int(rng.integers(0, raster.width - 1))
        r1 = int(rng.integers(r0 + 1, raster.height + 1))
        c1 = int(rng.integers(c0 + 1, raster.width + 1))
        out.append((r0, r1, c0, c1))
    return out


@pytest.fixture(params=sorted(OPENERS))
def raster(request: pytest.FixtureRequest, geotiff: Written, rgb_pyramid: Written,
           tmp_path: Path) -> Raster:
    return OPENERS[request.param](geotiff, rgb_pyramid, tmp_path)


def test_pickle_round_trip(raster: Raster) -> None:
    window = (3, raster.height - 2, 1, raster.width - 4)
    expected = raster.read(window)
    clone = pickle.loads(pickle.dumps(raster))
    assert clone.shape == raster.shape and clone.georef == raster.georef
    assert clone.levels == raster.levels and clone.describe() == raster.describe()
    np.testing.assert_array_equal(clone.read(window), expected)
    clone.close()
    np.testing.assert_array_equal(clone.read(window), expected)  # reopens after close


def test_threads_equal_serial(raster: Raster) -> None:
    windows = _windows(raster)
    serial = [raster.read(w) for w in windows]
    fresh = pickle.loads(pickle.dumps(raster))  # no handle yet: threads race to open
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(fresh.read, windows * 3))
    for got, want in zip(parallel, serial * 3, strict=True):
        assert got.dtype == raster.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_read_contract(raster: Raster) -> None:
    got = raster.read((0, 1, 0, 2))
    assert got.shape == (raster.bands, 1, 2) and got.dtype == raster.dtype
    assert raster.read((2, 2, 0, 5)).shape == (raster.bands, 0, 5)
    info = raster.describe()
    assert info["shape"] == list(raster.shape) and "levels" in info
