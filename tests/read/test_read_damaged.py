"""Damaged input fails at open (or, for a corrupt block, at read) with a one-line message."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from tests.read.read_helpers import Written
from tilesegment.errors import DamagedInputError, InputError
from tilesegment.read import open_raster


def _one_line_naming(err: pytest.ExceptionInfo[Exception], path: Path) -> str:
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message


@pytest.mark.parametrize("bigtiff", [False, True])
def test_cut_before_first_ifd(tmp_path: Path, bigtiff: bool) -> None:
    path = tmp_path / "header_only.tif"
    tifffile.imwrite(path, np.ones((16, 16), np.uint8), bigtiff=bigtiff)
    path.write_bytes(path.read_bytes()[: 16 if bigtiff else 8])
    with pytest.raises(DamagedInputError, match="truncated before its first IFD") as err:
        open_raster(path)
    _one_line_naming(err, path)


def test_first_ifd_past_end(rgb_pyramid: Written, tmp_path: Path) -> None:
    """A file whose IFD sits after the pixel data (as in SVS), cut before that IFD."""
    blob = bytearray(rgb_pyramid.path.read_bytes())
    size = len(blob)
    blob[4:8] = struct.pack("<I", size + 1000)
    path = tmp_path / "cut.svs"
    path.write_bytes(bytes(blob))
    with pytest.raises(DamagedInputError) as err:
        open_raster(path)
    message = _one_line_naming(err, path)
    assert f"header points to byte {size + 1000} but the file has only {size} bytes" in message


@pytest.mark.parametrize("level", [0, 2])
def test_blocks_past_end_of_file(rgb_pyramid: Written, tmp_path: Path, level: int) -> None:
    with tifffile.TiffFile(rgb_pyramid.path) as tif:
        pages = tif.series[0].levels[level].pages
        cut = pages[0].dataoffsets[-1] + 5  # inside the last TIFF block of that level
    path = tmp_path / "truncated.tif"
    path.write_bytes(rgb_pyramid.path.read_bytes()[:cut])
    with pytest.raises(DamagedInputError) as err:
        open_raster(path, level=level)
    message = _one_line_naming(err, path)
    assert f"level {level}: TIFF block" in message and "past the end of the file" in message


def test_block_count_patched_past_end(rgb_pyramid: Written, tmp_path: Path) -> None:
    path = tmp_path / "patched.tif"
    path.write_bytes(rgb_pyramid.path.read_bytes())
    with tifffile.TiffFile(path, mode="r+") as tif:
        tag = tif.pages[0].tags["TileOffsets"]
        offsets = list(tag.value)
        offsets[6] = path.stat().st_size - 10
        tag.overwrite(offsets)
    with pytest.raises(DamagedInputError, match=r"level 0: TIFF block 6 \(row 1, col 1\) lies "
                       r"past the end of the file") as err:
        open_raster(path)
    _one_line_naming(err, path)


def test_missing_block_is_not_zero_filled(rgb_pyramid: Written, tmp_path: Path) -> None:
    path = tmp_path / "hole.tif"
    path.write_bytes(rgb_pyramid.path.read_bytes())
    with tifffile.TiffFile(path, mode="r+") as tif:
        page = tif.pages[0]
        offsets, counts = list(page.dataoffsets), list(page.databytecounts)
        offsets[1] = counts[1] = 0
        page.tags["TileOffsets"].overwrite(offsets)
        page.tags["TileByteCounts"].overwrite(counts)
    with tifffile.TiffFile(path) as tif:
        # What we guard against: tifffile's Zarr view fills the missing block with zeros.
        assert not zarr.open(tif.pages[0].aszarr(), mode="r")[:32, 32:64].any()
    raster = open_raster(path)
    np.testing.assert_array_equal(raster.read((0, 32, 0, 32)),
                                  rgb_pyramid.levels[0][:, :32, :32])
    with pytest.raises(DamagedInputError, match=r"TIFF block 1 \(row 0, col 1\) has no data"):
        raster.read((0, 10, 30, 40))


def test_corrupt_block_named_at_read(rgb_pyramid: Written, tmp_path: Path) -> None:
    with tifffile.TiffFile(rgb_pyramid.path) as tif:
        offset, count = tif.pages[0].dataoffsets[7], tif.pages[0].databytecounts[7]
    blob = bytearray(rgb_pyramid.path.read_bytes())
    blob[offset : offset + count] = bytes(count)
    path = tmp_path / "garbled.tif"
    path.write_bytes(bytes(blob))
    raster = open_raster(path)  # tags are intact: opening works
    with pytest.raises(DamagedInputError, match=r"level 0: TIFF block 7 \(row 1, col 2\) "
                       r"cannot be decoded") as err:
        raster.read((40, 50, 60, 70))
    _one_line_naming(err, path)


def test_unknown_compression_fixture(shared_data: Path) -> None:
    path = shared_data / "fixtures" / "unopenable.tiff"
    with pytest.raises(InputError, match="unsupported TIFF compression code 52479") as err:
        open_raster(path)
    _one_line_naming(err, path)


def test_corrupt_jpeg_tile_fixture(shared_data: Path) -> None:
    path = shared_data / "fixtures" / "unreadable.svs"
    raster = open_raster(path)
    assert raster.shape == (3, 16, 16)
    with pytest.raises(DamagedInputError, match=r"level 0: TIFF block 0 \(row 0, col 0\) "
                       r"cannot be decoded") as err:
        raster.read((0, 16, 0, 16))
    _one_line_naming(err, path)


def test_valid_twin_of_the_corrupt_fixture(shared_data: Path) -> None:
    raster = open_raster(shared_data / "fixtures" / "small.svs")
    assert raster.georef.pixel_size == (0.499, 0.499)
    assert raster.read((0, 16, 0, 16)).mean() > 100  # H&E background, not a zero hole


def test_truncated_real_slide(shared_data: Path, tmp_path: Path) -> None:
    path = tmp_path / "cmu_cut.svs"
    path.write_bytes((shared_data / "slide" / "cmu_small_region.svs").read_bytes()[:1_000_000])
    with pytest.raises(DamagedInputError, match="truncated before its first IFD") as err:
        open_raster(path)
    _one_line_naming(err, path)
