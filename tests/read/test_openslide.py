"""Slides read through OpenSlide (``slides`` extra): a tiny NDPI made here, compared with
tifffile's decoding of the same JPEG bytes written as a plain TIFF twin.

openslide-python's sdist ships no NDPI or MRXS fixture (its tests/ hold boxes.tiff and a
few SVS files, copied into ``../shared/data/fixtures``), so the NDPI is made here: a JPEG
strip per level with the Hamamatsu tags OpenSlide's NDPI reader requires (65420 format flag,
65421 source lens, 65422/65423 offsets, 65424 focal plane).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner

from tilesegment.cli.main import cli
from tilesegment.errors import DamagedInputError, InputError
from tilesegment.read import open_raster

openslide = pytest.importorskip(
    "openslide", reason="openslide-python/openslide-bin not installed (the slides extra)")

from tilesegment.read.openslide_reader import OpenSlideRaster, rgba_to_rgb  # noqa: E402

NDPI_TAGS = [(65420, "I", 1, 1, True), (65421, "f", 1, 20.0, True), (65422, "i", 1, 0, True),
             (65423, "i", 1, 0, True), (65424, "i", 1, 0, True)]
MPP = 0.5  # µm per px at level 0


def _image(h: int = 64, w: int = 96) -> np.ndarray:
    """``uint8 (h, w, 3)``: smooth colour ramps plus noise (JPEG keeps them apart)."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:h, 0:w]
    ramps = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)], axis=-1)
    return np.clip(ramps + rng.normal(0, 8, ramps.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def ndpi(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """A two-level NDPI and tifffile's reading of its JPEG twin, level by level."""
    folder = tmp_path_factory.mktemp("ndpi")
    image = _image()
    levels = [image, np.ascontiguousarray(image[::2, ::2])]
    for name, tags in (("tiny.ndpi", NDPI_TAGS), ("twin.tif", [])):
        with tifffile.TiffWriter(folder / name) as tw:
            for n, level in enumerate(levels):
                px = 1e4 / (MPP * 2**n)  # pixels per cm
                tw.write(level, photometric="rgb", compression="jpeg",
                         rowsperstrip=level.shape[0], extratags=tags,
                         resolution=(px, px), resolutionunit="CENTIMETER")
    with tifffile.TiffFile(folder / "twin.tif") as tif:
        decoded = [page.asarray() for page in tif.pages]
    return folder / "tiny.ndpi", decoded


def test_ndpi_is_read_through_openslide(ndpi) -> None:
    path, decoded = ndpi
    raster = open_raster(path)
    assert isinstance(raster, OpenSlideRaster)
    assert raster.kind == "slide" and raster.describe()["format"] == "hamamatsu"
    assert raster.shape == (3, 64, 96) and raster.dtype == np.uint8
    assert raster.georef.pixel_size == pytest.approx((MPP, MPP))
    assert raster.levels[1].shape == (32, 48)
    assert raster.levels[1].pixel_size == pytest.approx((2 * MPP, 2 * MPP))
    want = np.moveaxis(decoded[0], -1, 0)
    np.testing.assert_array_equal(raster.read((0, 64, 0, 96)), want)
    np.testing.assert_array_equal(raster.read((5, 41, 7, 90)), want[:, 5:41, 7:90])
    text = CliRunner().invoke(cli, ["info", str(path)]).output
    assert "reader    OpenSlide (hamamatsu)" in text and "0: 96 × 64" in text
    level1 = open_raster(path, level=1)
    np.testing.assert_array_equal(level1.read((3, 30, 1, 47)),
                                  np.moveaxis(decoded[1], -1, 0)[:, 3:30, 1:47])


def test_ndpi_run_end_to_end(ndpi, tmp_path: Path) -> None:
    """``run`` on the NDPI at --mpp 1 (its level 1): the identity model's mask is the argmax
    of the decoded level."""
    path, decoded = ndpi
    out = tmp_path / "mask.zarr"
    result = CliRunner().invoke(cli, ["run", str(path), "-o", str(out), "--model", "identity",
                                      "--classes", "3", "--tile", "16", "--halo", "0",
                                      "--mpp", "1", "--tissue", "none"])
    assert result.exit_code == 0, (result.output, result.exception)
    group = zarr.open_group(out, mode="r")
    np.testing.assert_array_equal(group["mask"][:], np.argmax(decoded[1], axis=-1))
    assert group.attrs["tilesegment"]["provenance"]["input"]["level"] == 1


def test_damaged_ndpi_fails_in_one_line(ndpi, tmp_path: Path) -> None:
    path, _ = ndpi
    data = bytearray(path.read_bytes())
    cut = tmp_path / "cut.ndpi"
    cut.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(DamagedInputError, match=r"cut\.ndpi: .*truncated or damaged"):
        open_raster(cut)
    broken = tmp_path / "broken.ndpi"
    start = data.index(b"\xff\xd8")  # the first JPEG stream: scramble its entropy data
    data[start + 300:start + 900] = bytes(600)
    broken.write_bytes(bytes(data))
    with pytest.raises(DamagedInputError, match=r"broken\.ndpi: "):
        open_raster(broken).read((0, 64, 0, 96))
    junk = tmp_path / "junk.mrxs"
    junk.write_bytes(b"not a slide" * 10)
    with pytest.raises(InputError, match=r"junk\.mrxs: not a slide format OpenSlide reads"):
        open_raster(junk)
    result = CliRunner().invoke(cli, ["info", str(cut)])
    assert result.exit_code != 0
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_alpha_zero_becomes_the_background() -> None:
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [200, 100, 0, 51]]], np.uint8)
    rgb = rgba_to_rgb(rgba, np.array([255.0, 250.0, 240.0]))
    assert rgb.shape == (3, 1, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[:, 0, 0], [10, 20, 30])      # opaque: as is
    np.testing.assert_array_equal(rgb[:, 0, 1], [255, 250, 240])   # transparent: background
    # 20 % opaque: 0.2 · (200, 100, 0) + 0.8 · (255, 250, 240)
    np.testing.assert_array_equal(rgb[:, 0, 2], [244, 220, 192])


@pytest.mark.shared
def test_fractional_downsample_levels_match_tifffile(shared_data: Path) -> None:
    """boxes.tiff's levels 2 and 3 have downsamples 4.016 and 8.086 (OpenSlide resamples
    a region read off their origin): read whole and by windows, they equal tifffile's."""
    path = shared_data / "fixtures" / "boxes.tiff"
    with tifffile.TiffFile(path) as tif:
        levels = [np.moveaxis(lv.asarray()[..., :3], -1, 0) for lv in tif.series[0].levels]
    for n, want in enumerate(levels):
        raster = OpenSlideRaster(path, n)
        h, w = raster.height, raster.width
        np.testing.assert_array_equal(raster.read((0, h, 0, w)), want)
        np.testing.assert_array_equal(raster.read((3, h - 2, 5, w - 1)),
                                      want[:, 3:h - 2, 5:w - 1])


def test_missing_openslide_names_the_extra(ndpi, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    path, _ = ndpi
    monkeypatch.setitem(sys.modules, "openslide", None)  # as if not installed
    with pytest.raises(InputError, match=r"tilesegment\[slides\]"):
        open_raster(path)
