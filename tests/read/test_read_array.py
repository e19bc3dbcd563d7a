"""NumPy and Dask arrays as rasters, and what ``open_raster`` accepts."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from tilesegment.errors import InputError
from tilesegment.read import Raster, open_raster
from tilesegment.read.array import ArrayRaster


def test_numpy_2d_becomes_one_band() -> None:
    data = np.arange(12 * 9, dtype=np.int16).reshape(12, 9)
    raster = open_raster(data)
    assert isinstance(raster, ArrayRaster) and raster.kind == "array"
    assert raster.shape == (1, 12, 9) and raster.dtype == np.int16
    assert raster.block_shape is None and raster.georef.pixel_size is None
    got = raster.read((2, 11, 1, 8))
    np.testing.assert_array_equal(got[0], data[2:11, 1:8])
    got[...] = -1  # a copy: the caller may write into it
    assert data[2, 1] != -1


def test_dask_stays_lazy_and_reports_chunks() -> None:
    data = np.random.default_rng(0).random((2, 40, 50))
    raster = open_raster(da.from_array(data, chunks=(2, 16, 32)))
    assert raster.shape == (2, 40, 50) and raster.block_shape == (16, 32)
    assert isinstance(raster.read((0, 1, 0, 1)), np.ndarray)
    np.testing.assert_array_equal(raster.read((5, 39, 7, 49)), data[:, 5:39, 7:49])


def test_raster_is_returned_as_is() -> None:
    raster = open_raster(np.zeros((3, 4, 5), np.uint8))
    assert open_raster(raster) is raster
    assert open_raster(raster, level=0) is raster
    with pytest.raises(InputError, match="level 1 does not exist"):
        open_raster(raster, level=1)


@pytest.mark.parametrize("bad", [np.zeros(5), np.zeros((1, 2, 3, 4)), np.zeros((0, 4))])
def test_bad_array_shapes(bad: np.ndarray) -> None:
    with pytest.raises(InputError, match="array of shape"):
        open_raster(bad)


def test_missing_file_and_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nothere\.tif: file not found"):
        open_raster(tmp_path / "nothere.tif")
    with pytest.raises(InputError, match=r"nothere\.zarr: file not found"):
        open_raster(str(tmp_path / "nothere.zarr"))
    with pytest.raises(InputError, match="cannot open a dict"):
        open_raster({"a": 1})  # type: ignore[arg-type]


def test_not_a_raster(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    with pytest.raises(InputError, match=r"notes\.txt: GDAL cannot open it") as err:
        open_raster(path)
    assert "\n" not in str(err.value)


def test_public_names() -> None:
    import tilesegment.read as read

    assert set(read.__all__) >= {"open_raster", "Raster", "Georef", "LevelInfo"}
    assert issubclass(ArrayRaster, Raster)
