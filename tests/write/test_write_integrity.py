"""The writers' own checks: a partial never claims completion, damaged TIFFs are caught
before publishing, GDAL write errors raise, the overwrite policy, the publish journal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr

from tests.write.test_write_safety import listing, make_meta, mask_of, snapshot, write_blocks
from tilesegment.errors import (
    IncompleteOutputError,
    OutputError,
    OutputExistsError,
    UnsafeOutputError,
)
from tilesegment.write import atomic, create_output, geotiff_output, read_output_meta, transcode
from tilesegment.write.verify import check_output, verify_tiff


def test_partial_geotiff_is_incomplete_until_verified(tmp_path: Path, monkeypatch) -> None:
    """The hidden mask file says ``complete: false`` until its blocks were verified; then
    the flag flips in place without moving the TIFF's layout."""
    seen: list[tuple[dict, list[int]]] = []
    real = geotiff_output.mark_tiff_complete

    def spy(path: Path, run_id: str) -> None:
        assert ".partial-" in path.name and path.name.startswith(".")
        with rasterio.open(path) as ds:
            record = json.loads(ds.tags()["TILESEGMENT"])["completion"]
        import tifffile

        with tifffile.TiffFile(path) as tif:
            offsets = list(tif.pages[0].dataoffsets)
        seen.append((record, offsets))
        real(path, run_id)
        with tifffile.TiffFile(path) as tif:
            assert list(tif.pages[0].dataoffsets) == offsets

    monkeypatch.setattr(geotiff_output, "mark_tiff_complete", spy)
    path = tmp_path / "out.tif"
    out = create_output(path, make_meta(save_probabilities=True))
    write_blocks(out, mask_of(1))
    out.finalize()
    (record, _), = seen
    assert record["complete"] is False and record["run_id"] == out.run_id
    final = read_output_meta(path)["completion"]
    assert final["complete"] is True and final["run_id"] == out.run_id
    assert final["layers"]["probabilities"]["bytes"] == (
        tmp_path / "out.probabilities.tif").stat().st_size
    check_output(path)
    check_output(tmp_path / "out.probabilities.tif")  # a layer: the whole set is checked


def test_gdal_write_error_raises_and_keeps_old_output(tmp_path: Path, monkeypatch) -> None:
    """An error GDAL only logs (no exception) still fails the write; the old output stays."""
    path = tmp_path / "out.tif"
    out = create_output(path, make_meta())
    write_blocks(out, mask_of(1))
    out.finalize()
    old = snapshot(path)
    real = transcode._write_tiled

    def logging_failure(*args, **kwargs):
        real(*args, **kwargs)
        import logging

        logging.getLogger("rasterio._err").info(
            "GDAL signalled an error: err_no=1, msg='TIFFAppendToStrip:Write error'")

    monkeypatch.setattr(transcode, "_write_tiled", logging_failure)
    out = create_output(path, make_meta(), overwrite=True)
    write_blocks(out, mask_of(2))
    with pytest.raises(OutputError, match="Write error") as info:
        out.finalize()
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    out.abort()
    assert snapshot(path) == old and listing(tmp_path) == ["out.tif", "out.tif.aux.xml"]


@pytest.mark.parametrize("damage", ["truncated", "zero-count"])
def test_verify_tiff_finds_missing_blocks(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "x.tif"
    data = np.random.default_rng(0).integers(0, 255, (1, 600, 600), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", height=600, width=600, count=1,
                       dtype="uint8", tiled=True, blockxsize=256, blockysize=256,
                       compress="deflate", crs="EPSG:32119",
                       transform=rasterio.Affine(1, 0, 0, 0, -1, 600)) as ds:
        ds.write(data)
    assert verify_tiff(path) == 1
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offsets, counts = list(page.dataoffsets), list(page.databytecounts)
        count_tag = page.tags["TileByteCounts"]
        tag_offset, width = count_tag.valueoffset, 4 if not tif.is_bigtiff else 8
    if damage == "truncated":  # the file cut short inside the last block
        last = max(range(len(offsets)), key=lambda i: offsets[i])
        with open(path, "r+b") as fh:
            fh.truncate(offsets[last] + counts[last] // 2)
    else:  # a block never written: byte count 0
        with open(path, "r+b") as fh:
            fh.seek(tag_offset + 4 * width)
            fh.write((0).to_bytes(width, "little"))
    with pytest.raises(OutputError, match="damaged"):
        verify_tiff(path)


def test_output_at_input_path_refused_even_through_a_symlink(tmp_path: Path) -> None:
    source = tmp_path / "scene.tif"
    source.write_bytes(b"pixels")
    link = tmp_path / "link.tif"
    link.symlink_to(source)
    for overwrite in (False, True):
        with pytest.raises(UnsafeOutputError, match="an input of this run"):
            create_output(link, make_meta(), overwrite=overwrite, inputs=[source])
    assert source.read_bytes() == b"pixels"


def test_sibling_that_is_an_input_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "out.probabilities.tif"
    source.write_bytes(b"pixels")
    with pytest.raises(UnsafeOutputError, match="an input"):
        create_output(tmp_path / "out.tif", make_meta(save_probabilities=True),
                      overwrite=True, inputs=[source])
    assert listing(tmp_path) == ["out.probabilities.tif"]


def test_existing_output_message_says_what_is_there(tmp_path: Path) -> None:
    path = tmp_path / "out.tif"
    out = create_output(path, make_meta())
    write_blocks(out, mask_of(1))
    out.finalize()
    with pytest.raises(OutputExistsError, match="a tilesegment output"):
        create_output(path, make_meta())
    other = tmp_path / "plain.tif"
    other.write_bytes(b"x" * 2048)
    with pytest.raises(OutputExistsError, match=r"not a tilesegment output.*2\.0 KB"):
        create_output(other, make_meta())


def test_recover_leaves_a_live_publication_alone(tmp_path: Path) -> None:
    """A journal whose process still runs (here: this one) is not touched."""
    final = tmp_path / "out.tif"
    final.write_bytes(b"old")
    src = atomic.partial_path(final, "abcd1234", ".tif")
    src.write_bytes(b"new")
    journal = atomic.journal_path(final)
    record = {"run_id": "r", "token": "abcd1234", "pid": os.getpid(),
              "host": __import__("socket").gethostname(),
              "moves": [{"src": str(src), "dst": str(final), "backup": None}]}
    journal.write_text(json.dumps(record))
    assert atomic.recover(final) == []
    assert final.read_bytes() == b"old" and src.exists()
    record["pid"] = 2**22 + 12345  # beyond pid_max: certainly gone
    journal.write_text(json.dumps(record))
    assert atomic.recover(final) == [f"completed the interrupted publication of {final}"]
    assert final.read_bytes() == b"new" and listing(tmp_path) == ["out.tif"]


def test_one_set_publication_at_a_time(tmp_path: Path) -> None:
    """Two runs publishing sets onto one path cannot interleave their renames: while one
    holds the journal the other is refused and the first run's set stays whole."""
    path = tmp_path / "out.tif"
    first = create_output(path, make_meta(save_probabilities=True))
    write_blocks(first, mask_of(1))
    first.finalize()
    old = {**snapshot(path), **snapshot(tmp_path / "out.probabilities.tif")}
    second = create_output(path, make_meta(save_probabilities=True), overwrite=True)
    write_blocks(second, mask_of(2))
    journal = atomic.journal_path(path)
    journal.write_text(json.dumps({"pid": os.getpid(), "host": __import__(
        "socket").gethostname(), "moves": []}))  # a live publication by "another run"
    with pytest.raises(OutputError, match="another run is publishing"):
        second.finalize()
    assert {**snapshot(path), **snapshot(tmp_path / "out.probabilities.tif")} == old
    assert journal.exists()  # not ours to remove
    journal.unlink()
    second.finalize()
    check_output(path)
    assert listing(tmp_path) == ["out.probabilities.tif", "out.tif", "out.tif.aux.xml"]


def test_zarr_completion_record_names_missing_blocks(tmp_path: Path) -> None:
    path = tmp_path / "out.zarr"
    out = create_output(path, make_meta(save_probabilities=True))
    write_blocks(out, mask_of(1), [(0, 0), (32, 48)])
    out.finalize()
    completion = zarr.open_group(str(path), mode="r").attrs["tilesegment"]["completion"]
    assert completion["blocks_written"] == 2 and completion["run_id"] == out.run_id
    assert len(completion["blocks_missing"]) == completion["blocks_total"] - 2
    assert [1, 1] not in completion["blocks_missing"]
    check_output(path)  # unwritten blocks are recorded, so this is complete
    os.remove(path / "probabilities" / "c" / "0" / "1" / "1")
    with pytest.raises(IncompleteOutputError, match="probabilities"):
        check_output(path)


def test_hidden_partial_layer_is_not_taken_for_the_published_set(tmp_path: Path) -> None:
    """A sibling layer of a killed run (hidden partial) does not borrow the completion of
    the published mask next to it."""
    import shutil

    path = tmp_path / "out.tif"
    first = create_output(path, make_meta(save_disagreement=True))
    write_blocks(first, mask_of(1))
    first.finalize()
    check_output(tmp_path / "out.disagreement.tif")
    other = tmp_path / "sub"
    other.mkdir()
    second = create_output(other / "out.tif", make_meta(save_disagreement=True))
    write_blocks(second, mask_of(2))
    second.finalize()
    stray = atomic.partial_path(tmp_path / "out.disagreement.tif", "deadbeef", ".tif")
    shutil.copy(other / "out.disagreement.tif", stray)
    with pytest.raises(IncompleteOutputError, match="partial or mixed"):
        check_output(stray)
