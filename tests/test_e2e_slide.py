"""End to end on real slides (``../shared/data``; skipped in a fresh clone).

A pyramid level keeps its size and pixel size: no crop, no resize. Expectations come from
tifffile's own reading of the slide; with the ``identity`` model the mask is
``numpy.argmax`` of the decoded RGB pixels.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner, Result

from tilesegment.cli.main import cli

pytestmark = pytest.mark.shared

IDENTITY = ["--model", "identity", "--classes", "3", "--tissue", "none"]
# (--tissue none: every tile runs, so the mask is argmax of every pixel; skipping glass is
# tested in test_skip.py)


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_svs_level0_keeps_size_and_pixel_size(shared_data: Path, tmp_path: Path) -> None:
    slide = shared_data / "slide" / "cmu_small_region.svs"
    with tifffile.TiffFile(slide) as tif:
        rgb = tif.series[0].levels[0].asarray()  # (H, W, 3)
        mpp = float(re.search(r"MPP = ([0-9.]+)", tif.pages[0].description).group(1))
    assert rgb.shape[:2] == (2967, 2220) and mpp == pytest.approx(0.499)
    out = tmp_path / "slide.zarr"
    ok(invoke("run", slide, "-o", out, *IDENTITY, "--tile", "512", "--halo", "0",
              "--level", "0"))
    group = zarr.open_group(out, mode="r")
    mask = group["mask"][:]
    assert mask.shape == rgb.shape[:2]
    attrs = group.attrs["tilesegment"]
    assert attrs["shape"] == [2967, 2220]
    assert attrs["pixel_size"] == pytest.approx([mpp, mpp], rel=1e-9)
    assert attrs["unit"] == "um"
    assert attrs["provenance"]["input"]["level"] == 0
    np.testing.assert_array_equal(mask, np.argmax(rgb, axis=-1))


def test_pyramid_level2_gives_level2_shape(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "fixtures" / "boxes.tiff"
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        assert len(levels) == 4
        level2 = levels[2].asarray()
    out = tmp_path / "boxes.zarr"
    ok(invoke("run", path, "-o", out, *IDENTITY, "--tile", "64", "--halo", "0",
              "--level", "2"))
    group = zarr.open_group(out, mode="r")
    mask = group["mask"][:]
    assert mask.shape == level2.shape[:2] == (62, 75)
    assert group.attrs["tilesegment"]["provenance"]["input"]["level"] == 2
    np.testing.assert_array_equal(mask, np.argmax(level2, axis=-1))


def test_info_svs_lists_levels(shared_data: Path) -> None:
    slide = shared_data / "slide" / "cmu_small_region.svs"
    desc = json.loads(ok(invoke("info", slide, "--json")).stdout)
    with tifffile.TiffFile(slide) as tif:
        shapes = [list(level.shape[:2]) for level in tif.series[0].levels]
    assert [lv["shape"] for lv in desc["levels"]] == shapes
    assert desc["levels"][0]["pixel_size"] == pytest.approx([0.499, 0.499])
    assert desc["shape"] == [3, *shapes[0]] and desc["unit"] == "um"
    text = ok(invoke("info", slide)).output
    assert "2220 × 2967 px, 3 band(s), uint8" in text and "0.499" in text


def test_info_pyramid_lists_every_level(shared_data: Path) -> None:
    path = shared_data / "fixtures" / "boxes.tiff"
    with tifffile.TiffFile(path) as tif:
        shapes = [level.shape[:2] for level in tif.series[0].levels]
    text = ok(invoke("info", path)).output
    assert f"levels    ({len(shapes)}, using 0)" in text
    for i, (h, w) in enumerate(shapes):
        assert f"{i}: {w} × {h}" in text
    desc = json.loads(ok(invoke("info", path, "--level", "2", "--json")).stdout)
    assert desc["level"] == 2 and desc["shape"][1:] == list(shapes[2])
