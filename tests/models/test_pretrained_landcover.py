"""The shipped ``landcover-landsat7`` checkpoint: it loads with no network, its card says
what it expects, ``tilesegment run`` + ``evaluate`` on the held-out right half of the
Landsat-7 scene reproduce the pixel accuracy its card states and beat a per-pixel random
forest trained on the same split, and a raster with other bands is a one-line error."""

from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin

from tilesegment.cli.main import cli

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO / "tilesegment" / "models" / "pretrained" / "landcover-landsat7.safetensors"
NODATA = -99999.0
MAPPING = ",".join(f"{v}:{v - 1}" for v in range(1, 8))


def _card() -> dict:
    return json.loads(CHECKPOINT.with_suffix(".json").read_text())


def _recipe():
    """``pipelines/landcover_landsat7.py`` imported as a module (it is not in the package)."""
    path = REPO / "pipelines" / "landcover_landsat7.py"
    spec = importlib.util.spec_from_file_location("landcover_landsat7", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _geotiff(path: Path, data: np.ndarray, nodata: float | None = NODATA) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=data.dtype, crs="EPSG:32119",
                       transform=from_origin(630534.0, 228114.0, 28.5, 28.5),
                       nodata=nodata) as dst:
        dst.write(data)
    return path


def test_checkpoint_loads_offline_with_its_card(monkeypatch):
    from safetensors import safe_open

    from tilesegment.models.checkpoint import build_from_checkpoint

    def no_network(*args, **kwargs):
        raise AssertionError("loading the shipped checkpoint opened a socket")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    module, card = build_from_checkpoint(CHECKPOINT)
    assert (card.architecture, card.in_channels, card.num_classes) == ("deeplab-largefov", 5, 7)
    assert card.class_names == ("developed", "agriculture", "herbaceous", "shrubland",
                                "forest", "water", "sediment")
    assert (card.resolution, card.resolution_unit) == (28.5, "m")
    # Fixed statistics of the training half (checked against the scene in the slow test).
    assert card.normalization.mode == "fixed" and len(card.normalization.mean) == 5
    assert all(s > 0 for s in card.normalization.std)
    assert len(card.training["bands"]) == 5 and "band 4" in card.training["bands"][3]
    assert CHECKPOINT.stat().st_size <= 5 * 1024 * 1024
    # The module holds exactly the file's tensors (read independently with safetensors).
    state = module.state_dict()
    with safe_open(str(CHECKPOINT), framework="pt") as f:
        names = list(f.keys())
        assert sorted(names) == sorted(state)
        for key in names:
            assert np.array_equal(f.get_tensor(key).numpy(), state[key].numpy()), key


def test_three_band_raster_is_a_one_line_error(tmp_path):
    image = _geotiff(tmp_path / "rgb.tif", np.random.default_rng(0).random(
        (3, 40, 48)).astype(np.float32))
    result = CliRunner().invoke(cli, ["run", str(image), "-o", str(tmp_path / "m.tif"),
                                      "--model", str(CHECKPOINT)])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert "takes 5 bands" in lines[0] and "has 3" in lines[0]
    assert not (tmp_path / "m.tif").exists()


def test_recipe_is_parsed_and_planned(tmp_path):
    """The pipeline's split and the plan of its run step, on a small synthetic scene."""
    from tilesegment.plan import build_plan

    recipe = _recipe()
    rng = np.random.default_rng(1)
    data = tmp_path / "data"
    data.mkdir()
    image = rng.integers(1, 255, (5, 30, 41)).astype(np.float32)
    image[:, :3, :] = NODATA
    truth = rng.integers(1, 8, (1, 30, 41)).astype(np.float32)
    _geotiff(data / "landsat7_multiband.tif", image)
    _geotiff(data / "landcover_strata.tif", truth)
    paths = recipe.write_split(data, tmp_path / "work")
    assert recipe.split_columns(489) == (195, 244)
    with rasterio.open(paths["train_image"]) as src:
        assert src.read().tobytes() == image[:, :, :20].tobytes()
        assert src.transform == from_origin(630534.0, 228114.0, 28.5, 28.5)
    with rasterio.open(paths["eval_truth"]) as src:
        held = src.read(1)
    assert (held[:, :20] == NODATA).all() and np.array_equal(held[:, 20:], truth[0, :, 20:])
    plan = build_plan(str(data / "landsat7_multiband.tif"), str(tmp_path / "lc.tif"),
                      model=str(CHECKPOINT), cog=True)
    card = _card()
    assert (card["tile"], card["halo"]) in recipe.GEOMETRIES  # chosen on validation
    assert (plan.geometry.tile, plan.geometry.halo) == (card["tile"], card["halo"])
    assert plan.model.classes == 7 and plan.model.channels == 5
    assert plan.model.class_names == recipe.CLASS_NAMES
    assert plan.normalization.mode == "fixed" and plan.output.cog
    assert plan.normalization.mean == pytest.approx(card["normalization"]["mean"])


def _random_forest_accuracy(image: np.ndarray, truth: np.ndarray) -> float:
    """Per-pixel random forest (50 trees, 20 000 training pixels, seed 0): fit on the left
    half, pixel accuracy on the right half (valid image, truth 1..7)."""
    from sklearn.ensemble import RandomForestClassifier

    half = image.shape[2] // 2
    ok = (image != NODATA).all(axis=0) & (truth >= 1) & (truth <= 7)
    cols = np.arange(image.shape[2])[None, :]
    left, right = ok & (cols < half), ok & (cols >= half)
    x, y = image[:, left].T, truth[left].astype(int)
    pick = np.random.default_rng(0).choice(len(y), 20_000, replace=False)
    forest = RandomForestClassifier(n_estimators=50, random_state=0, n_jobs=1)
    forest.fit(x[pick], y[pick])
    return float(np.mean(forest.predict(image[:, right].T) == truth[right]))


@pytest.mark.slow
@pytest.mark.shared
def test_run_and_evaluate_reproduce_the_card_and_beat_a_random_forest(shared_data, tmp_path):
    scene = shared_data / "landsat" / "landsat7_multiband.tif"
    with rasterio.open(scene) as src:
        image = src.read()
    with rasterio.open(shared_data / "landsat" / "landcover_strata.tif") as src:
        truth, profile = src.read(1), src.profile
    half = truth.shape[1] // 2
    held_out = truth.copy()
    held_out[:, :half] = profile["nodata"]
    with rasterio.open(tmp_path / "eval_truth.tif", "w", **profile) as dst:
        dst.write(held_out[None])
    mask = tmp_path / "landcover.tif"
    runner = CliRunner()
    result = runner.invoke(cli, ["run", str(scene), "-o", str(mask), "--model",
                                 str(CHECKPOINT), "--cog", "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["evaluate", str(mask), str(tmp_path / "eval_truth.tif"),
                                 "--map", MAPPING, "--classes", "7", "--allow-crs-alias",
                                 "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    measures = json.loads((tmp_path / "e.json").read_text())["measures"]
    # An independent count of the same pixels: valid image, truth 1..7, right half.
    with rasterio.open(mask) as src:
        pred = src.read(1)
        assert src.crs is not None and src.transform[0] == 28.5  # georeferenced
    counted = (image != NODATA).any(axis=0) & (truth >= 1) & (truth <= 7)
    counted[:, :half] = False
    reference = float(np.mean(pred[counted] == truth[counted] - 1))
    assert measures["pixel_accuracy"] == pytest.approx(reference, abs=1e-12)
    card = _card()
    valid = (image != NODATA).all(axis=0)
    left = image[:, :, :half][:, valid[:, :half]].astype(np.float64)
    assert card["normalization"]["mean"] == pytest.approx(left.mean(axis=1), rel=1e-9)
    assert card["normalization"]["std"] == pytest.approx(left.std(axis=1), rel=1e-9)
    stated = card["training"]["evaluation"]["pixel_accuracy"]
    assert f"{measures['pixel_accuracy']:.3f}" == f"{stated:.3f}"
    forest = _random_forest_accuracy(image, truth)
    assert 0.5 < forest < measures["pixel_accuracy"], (forest, measures)
