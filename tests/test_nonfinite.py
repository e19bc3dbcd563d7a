"""Non-finite values never become a class: ±inf input (and float64 values beyond float32's
range) is missing like NaN and nodata; NaN/inf logits of a model make those pixels nodata,
counted in the summary and one warning, never class 0."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from torch import nn

from tilesegment import segment
from tilesegment.errors import NonFiniteWarning
from tilesegment.normalize import missing_values, nonfinite_pixels, raster_statistics
from tilesegment.read.array import ArrayRaster

ROOT = Path(__file__).resolve().parents[1]
NODATA = -9999.0
UNET = dict(model="unet-tiny", classes=3, seed=7, normalization="raster", tile=128, halo=48,
            block_size=152)


def write_geotiff(path: Path, data: np.ndarray, nodata: float | None = NODATA) -> Path:
    """A real georeferenced GeoTIFF of ``data`` ``(C, H, W)`` in 64 × 64 TIFF tiles."""
    c, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=c,
                       dtype=data.dtype, crs="EPSG:32633", nodata=nodata, tiled=True,
                       blockxsize=64, blockysize=64,
                       transform=rasterio.Affine(2.0, 0, 300000.0, 0, -2.0, 5000000.0)) as ds:
        ds.write(data)
    return path


def run_mask(source, **settings) -> tuple[np.ndarray, list[str]]:
    """The mask of a run on ``source`` and the messages of its NonFiniteWarnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mask = segment(source, **{**UNET, **settings})
    return mask, [str(w.message) for w in caught if w.category is NonFiniteWarning]


def scene(dtype: str) -> np.ndarray:
    rng = np.random.default_rng(5)
    return (rng.normal(100.0, 30.0, (2, 300, 300))).astype(dtype)


@pytest.mark.parametrize(("dtype", "value"), [
    ("float32", np.inf), ("float32", -np.inf), ("float64", 1e300), ("float64", -1e300)])
def test_nonfinite_pixel_is_nodata_and_rest_equals_nodata_run(tmp_path: Path, dtype: str,
                                                              value: float) -> None:
    data = scene(dtype)
    pixels = [(37, 211), (150, 150)]
    bad, ref = data.copy(), data.copy()
    for r, c in pixels:
        bad[:, r, c] = value
        ref[:, r, c] = NODATA
    mask, messages = run_mask(write_geotiff(tmp_path / "bad.tif", bad))
    expect, ref_messages = run_mask(write_geotiff(tmp_path / "ref.tif", ref))
    holes = np.zeros(mask.shape, bool)
    for r, c in pixels:
        holes[r, c] = True
    assert np.array_equal(mask[~holes], expect[~holes])
    assert (mask[holes] == 255).all()
    assert np.isin(mask[~holes], [0, 1, 2]).all()  # no nodata elsewhere, three classes
    assert len(np.unique(mask[~holes])) > 1
    assert ref_messages == []
    assert len(messages) == 1 and "2 pixels" in messages[0] and "bad.tif" in messages[0]


def test_nonfinite_value_in_one_band_is_missing_like_nodata_in_that_band(
        tmp_path: Path) -> None:
    """One band's value beyond float32 is that band's missing value (as NaN is): the pixel
    stays valid, exactly as with that one value set to the declared nodata."""
    data = scene("float64")
    bad, ref = data.copy(), data.copy()
    bad[1, 80, 90] = 1e300
    ref[1, 80, 90] = NODATA
    mask, messages = run_mask(write_geotiff(tmp_path / "bad.tif", bad))
    expect, _ = run_mask(write_geotiff(tmp_path / "ref.tif", ref))
    assert np.array_equal(mask, expect)
    assert mask[80, 90] != 255
    assert len(messages) == 1 and "1 pixel " in messages[0]


def test_summary_and_cli_report_the_count(tmp_path: Path) -> None:
    data = scene("float32")
    data[:, 10:12, 20:23] = np.inf  # 6 pixels
    source = write_geotiff(tmp_path / "scene.tif", data, nodata=None)
    with pytest.warns(NonFiniteWarning, match="6 pixels"):
        summary = segment(source, tmp_path / "mask.zarr", **UNET)
    assert summary.nonfinite_input_pixels == 6
    assert summary.nodata_pixels == 6 and summary.nonfinite_logit_pixels == 0
    # the real command in its own process: one warning line on stderr, the count in the report
    result = subprocess.run(
        [sys.executable, "-m", "tilesegment.cli.main", "run", str(source), "-o",
         str(tmp_path / "m.tif"), "--model", "unet-tiny", "--classes", "3",
         "--normalize", "raster"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("6 pixels hold ±inf") == 1
    assert "(±inf input)" in result.stdout and "6 px" in result.stdout


def test_statistics_leave_out_nonfinite_values() -> None:
    data = np.random.default_rng(1).normal(5.0, 2.0, (2, 130, 170))
    data[0, 3, 4] = np.inf
    data[1, 100, 7] = -1e300
    data[1, 50, 50] = 3e38  # finite in float32: a value, not missing
    stats = raster_statistics(ArrayRaster(data), block=64)
    for b in range(2):
        values = data[b][np.abs(data[b]) <= np.finfo(np.float32).max]
        assert stats.count[b] == values.size == data[b].size - 1
        assert stats.mean[b] == pytest.approx(values.mean(), rel=1e-12)
        assert stats.std[b] == pytest.approx(values.std(), rel=1e-10)


def test_missing_values_and_counts() -> None:
    data = np.zeros((2, 2, 3), np.float64)
    data[0, 0, 0] = np.inf
    data[1, 0, 1] = -1e39      # beyond float32
    data[1, 1, 1] = np.nan     # missing, but not counted as non-finite
    data[0, 1, 2] = 3.0e38     # within float32
    data[:, 1, 0] = -np.inf    # the declared nodata: missing, not counted
    expect = np.zeros(data.shape, bool)
    expect[0, 0, 0] = expect[1, 0, 1] = expect[1, 1, 1] = True
    expect[:, 1, 0] = True
    assert np.array_equal(missing_values(data, -np.inf), expect)
    assert nonfinite_pixels(data, -np.inf) == 2
    assert nonfinite_pixels(data, None) == 3
    with np.errstate(over="ignore"):
        single = data.astype(np.float32)  # -1e39 becomes -inf
    assert nonfinite_pixels(single, None) == 3
    assert nonfinite_pixels(np.zeros((1, 2, 2), np.uint16), None) == 0


# -- NaN / inf logits ------------------------------------------------------------------------


class FaultyNet(nn.Module):
    """A fixed 3×3 convolution, K = 3, whose logits are ``fault`` wherever input band 0
    equals ``trigger`` (a model fault on finite input): at fixed raster pixels, whatever
    the tiling."""

    def __init__(self, fault: float | None, trigger: float = 5.0):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen))
            self.conv.bias.copy_(torch.randn(3, generator=gen))
        self.fault, self.trigger = fault, trigger

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.fault is not None:
            hit = (x[:, :1] == self.trigger).expand_as(y)
            y = torch.where(hit, torch.full_like(y, self.fault), y)
        return y


def faulty_image() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(9)
    image = rng.random((2, 120, 140)).astype(np.float32)
    region = np.zeros((120, 140), bool)
    region[30:45, 60:100] = True
    image[0][region] = 5.0
    return image, region


@pytest.mark.parametrize("fault", [np.nan, np.inf, -np.inf])
def test_nonfinite_logits_become_nodata_not_class_0(tmp_path: Path, fault: float) -> None:
    image, region = faulty_image()
    common = dict(tile=32, halo=4, block_size=48, normalization="none")
    expect = segment(image, model=FaultyNet(None), **common)
    with pytest.warns(NonFiniteWarning, match=f"logits at {region.sum()} pixels"):
        mask = segment(image, model=FaultyNet(fault), **common)
    assert (mask[region] == 255).all()
    assert np.array_equal(mask[~region], expect[~region])
    assert set(np.unique(expect[region])) - {0}  # the right answer there is not all 0
    with pytest.warns(NonFiniteWarning):
        probs = segment(image, model=FaultyNet(fault), returns="probabilities", **common)
    assert np.isnan(probs[:, region]).all() and np.isfinite(probs[:, ~region]).all()

    with pytest.warns(NonFiniteWarning):
        summary = segment(image, tmp_path / "mask.zarr", model=FaultyNet(fault), **common)
    assert summary.nonfinite_logit_pixels == region.sum()
    assert summary.nodata_pixels == region.sum() and summary.nonfinite_input_pixels == 0
    assert summary.class_counts.sum() == (~region).sum()
    import zarr

    written = zarr.open_group(summary.output, mode="r")["mask"][:]
    assert np.array_equal(written, mask)


def test_nonfinite_logits_never_refined_into_a_class_by_the_crf() -> None:
    pytest.importorskip("pydensecrf")
    from tilesegment.models.crf import CRFParams

    image, region = faulty_image()
    image = (image * 50).astype(np.float32)
    image[0][region] = 5.0
    with pytest.warns(NonFiniteWarning, match=f"logits at {region.sum()} pixels"):
        mask = segment(image, model=FaultyNet(np.nan), tile=32, halo=4, block_size=48,
                       normalization="none", crf=CRFParams(iterations=2))
    assert (mask[region] == 255).all() and (mask[~region] != 255).all()
