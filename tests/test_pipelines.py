"""Recipes that cannot rot: every ``pipelines/*.toml`` is loaded and planned, every
``pipelines/*.py`` answers ``--help`` without importing torch, and the slide pipeline runs end
to end (a synthetic RGB image always, a crop of the CMU slide when ``../shared`` is there).

Scripts' real work (training) is never run here: ``--help`` only."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
from rasterio.transform import Affine
from scipy import ndimage

from tilesegment.models import list_models
from tilesegment.models.checkpoint import has_card, read_card
from tilesegment.models.registry import get_entry
from tilesegment.plan import load_recipe
from tilesegment.plan.recipe import read_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "pipelines").glob("*.toml"))
SCRIPTS = sorted((REPO / "pipelines").glob("*.py"))
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _slide_module():
    spec = importlib.util.spec_from_file_location("slide_nuclei",
                                                  REPO / "pipelines" / "slide_nuclei.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bands(recipe: Path) -> int:
    """The band count the recipe's model takes: its checkpoint card's, the registered
    model's fixed count, else 3 (RGB)."""
    settings = read_recipe(recipe)
    weights = settings.get("weights")
    if weights:
        path = Path(weights) if Path(weights).is_absolute() else REPO / weights
        if has_card(path):
            return read_card(path).in_channels
    name = settings.get("model", "nuclei")
    if isinstance(name, str) and name in list_models():
        return get_entry(name).channels or 3
    if isinstance(name, str) and has_card(REPO / name):
        return read_card(REPO / name).in_channels
    return 3


def _input(tmp_path: Path, bands: int) -> Path:
    """A tiny tiled GeoTIFF with ``bands`` bands and 0.25-unit square pixels."""
    path = tmp_path / f"in{bands}.tif"
    data = np.random.default_rng(bands).integers(1, 250, (bands, 96, 80), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=80, height=96, count=bands,
                       dtype="uint8", crs="EPSG:32633",
                       transform=Affine(0.25, 0.0, 500000.0, 0.0, -0.25, 5200000.0)) as dst:
        dst.write(data)
    return path


def test_there_are_recipes_and_scripts():
    assert RECIPES and (REPO / "pipelines" / "slide_nuclei.py") in SCRIPTS


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_loads_and_plans(recipe, tmp_path):
    settings = load_recipe(recipe)
    assert isinstance(settings, dict) and settings
    source = _input(tmp_path, _bands(recipe))
    out = tmp_path / "m.zarr"
    done = subprocess.run(
        [sys.executable, "-m", "tilesegment.cli.main", "plan", str(source), "-o", str(out),
         "--config", str(recipe), "--json"],
        capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert isinstance(plan["fingerprint"], str) and len(plan["fingerprint"]) >= 16
    assert not out.exists()  # planning writes nothing


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_every_script_has_help_without_torch(script):
    probe = ("import runpy, sys\n"
             f"sys.argv = [{str(script)!r}, '--help']\n"
             "try:\n"
             f"    runpy.run_path({str(script)!r}, run_name='__main__')\n"
             "except SystemExit as exc:\n"
             "    code = exc.code or 0\n"
             "else:\n"
             "    code = 0\n"
             "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
             "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=ENV, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout.lower()
    assert done.stdout.strip().splitlines()[-1] == "NO-TORCH"


def test_haematoxylin_band_is_the_published_deconvolution():
    """Pure haematoxylin / eosin colours (OD = c · stain vector) give back c and 0."""
    slide = _slide_module()
    stains = slide.STAINS / np.linalg.norm(slide.STAINS, axis=1, keepdims=True)
    od_h, od_e = 0.8 * stains[0], 0.8 * stains[1]
    rgb = np.stack([256.0 * 10.0 ** -od_h - 1.0, 256.0 * 10.0 ** -od_e - 1.0,
                    np.full(3, 255.0)], axis=1)  # (3 channels, 3 pixels)
    h = slide.haematoxylin(rgb[:, None, :].astype(np.float64).astype(np.float32))[0]
    assert h[0] == pytest.approx(0.8, abs=1e-3)   # haematoxylin
    assert h[1] == pytest.approx(0.0, abs=1e-3)   # eosin only
    assert h[2] == pytest.approx(0.0, abs=1e-3)   # glass


def _synthetic_slide(path: Path, mpp: float = 0.5) -> np.ndarray:
    """An RGB uint8 TIFF: white glass, pink stroma and purple disks (nuclei), with a pixel
    size; returns the disks' mask ``bool (H, W)``."""
    rng = np.random.default_rng(7)
    height, width = 160, 192
    yy, xx = np.mgrid[:height, :width]
    disks = np.zeros((height, width), bool)
    for cy, cx in rng.integers(20, [height - 20, width - 20], (14, 2)):
        disks |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 6 ** 2
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:] = (242, 240, 244)
    rgb[:, width // 3:] = (230, 150, 190)  # eosin stroma
    rgb[disks] = (70, 40, 130)            # haematoxylin nuclei
    rgb = np.clip(rgb + rng.normal(0, 3, rgb.shape), 0, 255).astype(np.uint8)
    res = 1e4 / mpp  # pixels per cm
    tifffile.imwrite(path, rgb, photometric="rgb", resolution=(res, res),
                     resolutionunit="CENTIMETER")
    return disks


@pytest.fixture(scope="module")
def synthetic_slide_run(tmp_path_factory):
    """The slide pipeline run once on a synthetic H&E image (~15-30 s: a subprocess that
    builds the model and runs it): (disks, summary, mask)."""
    tmp = tmp_path_factory.mktemp("slide")
    image = tmp / "he.tif"
    disks = _synthetic_slide(image)
    out = tmp / "out"
    done = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "slide_nuclei.py"), str(image), str(out),
         "--mpp", "0", "--device", "cpu", "--block", "160"],
        capture_output=True, text=True, env=ENV, cwd=tmp, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    mask = np.asarray(_slide_module()._mask_array(out / "mask.zarr")[...])
    return disks, summary, mask


@pytest.mark.slow
def test_slide_pipeline_runs_on_a_synthetic_rgb_image(synthetic_slide_run):
    disks, summary, mask = synthetic_slide_run
    assert mask.shape == disks.shape == tuple(summary["shape"])
    nuclei = mask == 1
    # independent reference: the counts recomputed from the written mask
    assert summary["nucleus_fraction"] == pytest.approx(nuclei.mean(), abs=1e-4)
    assert summary["objects"] == ndimage.label(nuclei)[1]
    # the H band makes the purple disks what the model segments: they are found
    assert (nuclei & disks).sum() / disks.sum() > 0.5


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="the shipped nuclei model (trained on fluorescence "
                   "by tilesegment train) marks the flat, near-zero background of an H band "
                   "as nucleus: outside its training domain; issue 10 stays open for it")
def test_slide_pipeline_keeps_glass_and_stroma_background(synthetic_slide_run):
    disks, _, mask = synthetic_slide_run
    nuclei = mask == 1
    assert (nuclei & disks).sum() / max(1, nuclei.sum()) > 0.7


def test_upsampled_h_band_matches_the_native_band(tmp_path):
    """At half the slide's pixel size the lazy band is the native band, bilinear ×2."""
    image = tmp_path / "he.tif"
    _synthetic_slide(image, mpp=0.5)
    slide = _slide_module()
    native, size = slide.h_band(image, None, block=50)
    up, up_size = slide.h_band(image, 0.25, block=70)
    assert size == pytest.approx(0.5) and up_size == 0.25
    a = np.asarray(native.compute(scheduler="synchronous"))
    b = np.asarray(up.compute(scheduler="synchronous"))
    assert b.shape == (2 * a.shape[0], 2 * a.shape[1])
    # output pixel 2i+1 has its centre at source i + 0.25: 3/4 of i, 1/4 of i + 1
    ref = 0.75 * a[:-1, :-1] + 0.25 * a[1:, :-1]
    ref = 0.75 * ref + 0.25 * (0.75 * a[:-1, 1:] + 0.25 * a[1:, 1:])
    np.testing.assert_allclose(b[1:-1:2, 1:-1:2], ref, atol=1e-5)


@pytest.mark.slow
def test_slide_pipeline_runs_on_a_crop_of_the_cmu_slide(shared_data, tmp_path):
    from tilesegment import open_raster

    slide = open_raster(shared_data / "slide" / "cmu_small_region.svs")
    crop = slide.read((1200, 1456, 900, 1156))
    image = tmp_path / "crop.tif"
    res = 1e4 / slide.georef.pixel_size[0]
    tifffile.imwrite(image, np.moveaxis(crop, 0, -1), photometric="rgb",
                     resolution=(res, res), resolutionunit="CENTIMETER")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "slide_nuclei.py"), str(image), str(out),
         "--device", "cpu", "--block", "256"],
        capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    side = round(256 * slide.georef.pixel_size[0] / 0.25)  # 0.499 µm/px → 0.25: ×1.996
    assert summary["mpp"] == 0.25 and summary["shape"] == [side, side]
    mask = np.asarray(_slide_module()._mask_array(out / "mask.zarr")[...])
    nuclei = mask == 1
    assert summary["objects"] == ndimage.label(nuclei)[1]
    # no truth: a sanity bound only — the mask is neither empty nor everything
    assert 0.01 < nuclei.mean() < 0.6
