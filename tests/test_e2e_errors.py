"""End to end: what ``tilesegment run`` does with damaged inputs, existing outputs and bad
options. A failure is exit status 1 (library error) or 2 (usage error), one line on stderr
naming the file and the problem, no traceback, and nothing left behind.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import click
import numpy as np
import pytest
import rasterio
import tifffile
from click.testing import CliRunner, Result

from tilesegment.cli.main import cli
from tilesegment.errors import DamagedInputError
from tilesegment.read.slide import SlideRaster
from tilesegment.write import zarr_output

IDENTITY = ["--model", "identity", "--classes", "3", "--tile", "32", "--halo", "0",
            "--tissue", "none"]
# (--tissue none: a slide's tissue mask reads the whole level before the output exists, so
# damage would be found there; these tests are about damage met midway, test_skip.py
# about damage met by the tissue mask)


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def listing(folder: Path) -> set[str]:
    """Every name under ``folder``, hidden ones included."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def failed(result: Result, code: int) -> str:
    """Assert a clean failure with exit ``code``; return the one stderr line."""
    assert result.exit_code == code, (result.output, result.exception)
    # a handled error ends in SystemExit; an escaped exception would be kept here instead
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def write_tiled(path: Path, compression: str = "zlib", seed: int = 0) -> Path:
    """An RGB 96×64 TIFF in 16×16 TIFF blocks (no georeference: read as a slide)."""
    data = np.random.default_rng(seed).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    tifffile.imwrite(path, data, tile=(16, 16), photometric="rgb", compression=compression)
    return path


def block_layout(path: Path) -> tuple[list[int], list[int], int, int]:
    """TIFF block offsets and byte counts, the file position of the offsets array, and the
    size of one offset, read with tifffile."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tag = page.tags["TileOffsets"]
        assert tif.byteorder == "<" and not tif.is_bigtiff
        return list(page.dataoffsets), list(page.databytecounts), tag.valueoffset, 4


# -- damaged inputs -------------------------------------------------------------------------


def cut_before_ifd(folder: Path) -> tuple[Path, str]:
    path = write_tiled(folder / "cut.tif")
    raw = path.read_bytes()
    (ifd,) = struct.unpack("<I", raw[4:8])
    path.write_bytes(raw[:ifd])  # the header survives; the IFD it points to does not
    return path, "IFD"


def truncated_blocks(folder: Path) -> tuple[Path, str]:
    path = write_tiled(folder / "truncated.tif")
    offsets, _, _, _ = block_layout(path)
    raw = path.read_bytes()
    assert max(offsets) < len(raw)
    path.write_bytes(raw[: offsets[len(offsets) // 2] + 10])  # IFD intact, later blocks gone
    return path, "past the end"


def patched_offset(folder: Path) -> tuple[Path, str]:
    path = write_tiled(folder / "patched.tif")
    _, _, table, size = block_layout(path)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, table + 5 * size, len(raw) + 4096)  # block 5 points past EOF
    path.write_bytes(bytes(raw))
    return path, "block 5"


@pytest.mark.parametrize("make", [cut_before_ifd, truncated_blocks, patched_offset])
@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_damaged_tiff_fails_cleanly(tmp_path: Path, make, suffix: str) -> None:
    source, problem = make(tmp_path)
    before = listing(tmp_path)
    out = tmp_path / f"mask{suffix}"
    line = failed(invoke("run", source, "-o", out, *IDENTITY), 1)
    assert source.name in line and problem in line
    assert not out.exists()
    assert listing(tmp_path) == before


def test_unknown_compression_fails_at_open(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "fixtures" / "unopenable.tiff"
    out = tmp_path / "mask.zarr"
    line = failed(invoke("run", source, "-o", out, *IDENTITY), 1)
    assert "unopenable.tiff" in line and "compression" in line and "52479" in line
    assert listing(tmp_path) == set()


class Spy:
    """Records the temporary block stores a run creates and the blocks written into them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.roots: list[Path] = []
        self.blocks = 0
        create, write = zarr_output.BlockStore.create.__func__, zarr_output.BlockStore.write

        def spy_create(cls, root, meta, attrs):
            self.roots.append(Path(root))
            return create(cls, root, meta, attrs)

        def spy_write(store, *args):
            write(store, *args)
            self.blocks += 1

        monkeypatch.setattr(zarr_output.BlockStore, "create", classmethod(spy_create))
        monkeypatch.setattr(zarr_output.BlockStore, "write", spy_write)


@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_corrupt_block_of_real_slide(shared_data: Path, tmp_path: Path, suffix: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch)
    source = shared_data / "fixtures" / "unreadable.svs"
    out = tmp_path / f"mask{suffix}"
    line = failed(invoke("run", source, "-o", out, *IDENTITY), 1)
    assert "unreadable.svs" in line and "block" in line
    assert spy.roots, "the failure should come during the run, after the output was created"
    assert not any(root.exists() for root in spy.roots)
    assert listing(tmp_path) == set()


@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_corrupt_block_midway_keeps_written_blocks_for_resume(tmp_path: Path, suffix: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_tiled(tmp_path / "jpeg.tif", compression="jpeg")
    offsets, counts, _, _ = block_layout(source)
    bad = len(offsets) // 2 + 1  # a TIFF block inside the raster, read by one output block
    raw = bytearray(source.read_bytes())
    raw[offsets[bad]:offsets[bad] + counts[bad]] = b"\x00" * counts[bad]
    source.write_bytes(bytes(raw))
    before = listing(tmp_path)
    spy = Spy(monkeypatch)
    read = SlideRaster.read

    def read_after_others(raster, window):
        # Block tasks run in dask's order: hold the failing read back (on its own thread)
        # until another task has written its block, so the output is truly partial.
        try:
            return read(raster, window)
        except DamagedInputError:
            deadline = time.monotonic() + 5
            while spy.blocks == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
            raise

    monkeypatch.setattr(SlideRaster, "read", read_after_others)
    out = tmp_path / f"mask{suffix}"
    line = failed(invoke("run", source, "-o", out, *IDENTITY, "--block-size", "32",
                         "--workers", "3"), 1)
    assert "jpeg.tif" in line and f"block {bad}" in line
    assert spy.blocks >= 1, "some blocks should have been written before the failure"
    # the finished blocks are kept, hidden, for --resume once the input is fixed
    (root,) = spy.roots
    done = sorted(p.name for p in (root / "done").iterdir())
    assert len(done) >= 1 and f"{len(done)} of " in line and "--resume" in line
    assert not out.exists()
    assert {name for name in listing(tmp_path) if not name.startswith(root.name)} == before
    again = failed(invoke("run", source, "-o", out, *IDENTITY, "--block-size", "32"), 1)
    assert "--resume" in again and "--overwrite" in again  # not silently started over


# -- existing outputs -----------------------------------------------------------------------


def write_scene(path: Path) -> tuple[Path, np.ndarray]:
    data = np.random.default_rng(3).integers(0, 256, (3, 40, 50), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", height=40, width=50, count=3,
                       dtype="uint8", crs="EPSG:32119",
                       transform=rasterio.Affine(10.0, 0, 5000.0, 0, -10.0, 9000.0)) as ds:
        ds.write(data)
    return path, data


def test_existing_file_refused_then_overwritten(tmp_path: Path) -> None:
    source, data = write_scene(tmp_path / "scene.tif")
    out = tmp_path / "mask.tif"
    out.write_bytes(b"precious bytes, not a TIFF")
    before = listing(tmp_path)
    line = failed(invoke("run", source, "-o", out, *IDENTITY), 1)
    assert "--overwrite" in line and out.name in line
    assert out.read_bytes() == b"precious bytes, not a TIFF"
    assert listing(tmp_path) == before

    result = invoke("run", source, "-o", out, *IDENTITY, "--overwrite")
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(1), np.argmax(data, axis=0))
    assert listing(tmp_path) == before | {"mask.tif.aux.xml"}  # the mask's PAM sidecar


def test_existing_zarr_refused_then_overwritten(tmp_path: Path) -> None:
    """A directory that is not a tilesegment output is never replaced, even with
    --overwrite; a tilesegment output there is replaced only with --overwrite."""
    source, data = write_scene(tmp_path / "scene.tif")
    out = tmp_path / "mask.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = listing(tmp_path)
    for flags in ([], ["--overwrite"]):
        line = failed(invoke("run", source, "-o", out, *IDENTITY, *flags), 1)
        assert "not a tilesegment output" in line and "pass --overwrite" not in line
        assert (out / "keep.txt").read_text() == "mine"
        assert listing(tmp_path) == before

    (out / "keep.txt").unlink()
    out.rmdir()
    assert invoke("run", source, "-o", out, *IDENTITY, "--seed", "1").exit_code == 0
    line = failed(invoke("run", source, "-o", out, *IDENTITY), 1)
    assert "--overwrite" in line
    result = invoke("run", source, "-o", out, *IDENTITY, "--overwrite")
    assert result.exit_code == 0, result.output
    import zarr

    np.testing.assert_array_equal(zarr.open_group(out, mode="r")["mask"][:],
                                  np.argmax(data, axis=0))
    assert {p for p in listing(tmp_path) if not p.startswith("mask.zarr/")} == {
        "scene.tif", "mask.zarr"}


# -- bad options ----------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [
    ["--pad-mode", "wrap"],
    ["--blend", "max"],
    ["--level", "1", "--mpp", "0.5"],
    ["--batch-size", "0"],
    ["--tile", "0"],
    ["--halo", "-1"],
    ["--cog"],  # a COG needs a .tif output
], ids=lambda e: " ".join(e))
def test_bad_option_is_usage_error(tmp_path: Path, extra: list[str]) -> None:
    source, _ = write_scene(tmp_path / "scene.tif")
    out = tmp_path / "mask.zarr"
    result = invoke("run", source, "-o", out, *IDENTITY, *extra)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "Error" in result.stderr
    assert listing(tmp_path) == {"scene.tif"}


@pytest.mark.parametrize(("model", "tile", "nearest"), [
    ("unet-tiny", 100, 104),
    ("unet-valid", 570, 572),
])
def test_illegal_tile_names_nearest_legal(tmp_path: Path, model: str, tile: int,
                                          nearest: int) -> None:
    source, _ = write_scene(tmp_path / "scene.tif")
    out = tmp_path / "mask.tif"
    line = failed(invoke("run", source, "-o", out, "--model", model, "--tile", tile), 1)
    assert str(tile) in line and str(nearest) in line
    assert listing(tmp_path) == {"scene.tif"}


def test_unknown_output_extension(tmp_path: Path) -> None:
    source, _ = write_scene(tmp_path / "scene.tif")
    line = failed(invoke("run", source, "-o", tmp_path / "mask.png", *IDENTITY), 1)
    assert "mask.png" in line and ".png" in line
    assert listing(tmp_path) == {"scene.tif"}


def test_run_help_groups_every_option_in_a_named_section():
    from tilesegment.cli.run import RUN_SECTIONS, run

    result = CliRunner().invoke(cli, ["run", "--help"])
    assert result.exit_code == 0
    titles = [title for title, _ in RUN_SECTIONS]
    positions = [result.output.index(f"\n{title}:\n") for title in titles]
    assert positions == sorted(positions)
    named = {name for _, names in RUN_SECTIONS for name in names}
    options = {p.name for p in run.params if isinstance(p, click.Option)}
    assert options <= named, options - named  # only --help is left for "Other options"
    assert result.output.split("Other options:\n")[1].split()[:2] == ["-h,", "--help"]
