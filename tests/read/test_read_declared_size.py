"""A TIFF whose declared size its file cannot hold is refused at open, from its tags alone,
by both readers (tifffile for slides, rasterio for GeoTIFFs); real files of every codec
with a bound, even all-zero ones at their best compression, still open."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.helpers import tiff_claiming
from tilesegment.errors import DamagedInputError
from tilesegment.read import open_raster
from tilesegment.read.geotiff import GeoTiffRaster
from tilesegment.read.slide import SlideRaster


@pytest.mark.parametrize("geo", [False, True], ids=["slide", "geotiff"])
@pytest.mark.parametrize(("tiled", "compression", "problem"), [
    (False, 1, "bytes of uncompressed pixels"),
    (True, 1, "list only 1 block offsets"),
    (True, 8, "list only 1 block offsets"),
])
def test_huge_claim_in_a_tiny_file_is_refused_at_open(tmp_path: Path, geo: bool, tiled: bool,
                                                      compression: int, problem: str) -> None:
    path = tiff_claiming(tmp_path / "claim.tif", tiled=tiled, geo=geo, compression=compression)
    assert path.stat().st_size < 210
    with pytest.raises(DamagedInputError) as info:
        open_raster(path)
    message = str(info.value)
    assert problem in message and "1000000 × 1000000" in message and "claim.tif" in message
    assert "\n" not in message


def test_reader_is_the_one_each_flavour_reaches(tmp_path: Path) -> None:
    """Control: the same tags at a size the file does hold open with the intended reader,
    so the refusals above come from the declared size, not from the hand-made structure."""
    slide = open_raster(tiff_claiming(tmp_path / "s.tif", 4, 4, data_bytes=16))
    geo = open_raster(tiff_claiming(tmp_path / "g.tif", 4, 4, geo=True, data_bytes=16))
    assert isinstance(slide, SlideRaster) and isinstance(geo, GeoTiffRaster)
    assert slide.shape == geo.shape == (1, 4, 4)
    assert np.array_equal(slide.read((0, 4, 0, 4)), np.zeros((1, 4, 4), np.uint8))
    assert np.array_equal(geo.read((0, 4, 0, 4)), np.zeros((1, 4, 4), np.uint8))


def test_deflate_block_beyond_the_codec_ratio_is_refused(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """One DEFLATE strip of 16 bytes cannot hold 10¹² bytes of pixels (DEFLATE expands at
    most 1032:1), whatever memory the machine has."""
    monkeypatch.setenv("TILESEGMENT_MEMORY_LIMIT", "100T")
    path = tiff_claiming(tmp_path / "zip.tif", compression=8)
    with pytest.raises(DamagedInputError, match="at most 1032:1"):
        open_raster(path)


def test_compressed_block_larger_than_memory_is_refused(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A codec without a ratio bound (ZSTD): one strip that decodes to more than the memory
    limit is refused at open."""
    path = tmp_path / "zstd.tif"
    tifffile.imwrite(path, np.zeros((2048, 2048), np.uint8), compression="zstd",
                     rowsperstrip=2048)
    assert open_raster(path).shape == (1, 2048, 2048)
    monkeypatch.setenv("TILESEGMENT_MEMORY_LIMIT", "1M")  # the strip decodes to 4 MiB
    with pytest.raises(DamagedInputError, match=r"decodes to 4\.0 MiB, more than"):
        open_raster(path)


@pytest.mark.parametrize("compression", ["zlib", "lzw", "packbits", None])
@pytest.mark.parametrize("tiled", [True, False])
def test_real_files_at_their_best_ratio_still_open(tmp_path: Path, compression: str | None,
                                                   tiled: bool) -> None:
    """All-zero images compress as well as anything can: they must pass the ratio bounds."""
    path = tmp_path / "zeros.tif"
    layout = {"tile": (256, 256)} if tiled else {"rowsperstrip": 1000}
    tifffile.imwrite(path, np.zeros((1000, 1200), np.uint8), compression=compression,
                     **layout)
    raster = open_raster(path)
    assert raster.shape == (1, 1000, 1200)
    assert not raster.read((990, 1000, 0, 1200)).any()

