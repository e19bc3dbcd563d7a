"""Recipes: TOML tables named after the run plan's sections. A recipe gives the plan (and the
fingerprint) of the same settings given as flags; flags win over it; an unknown table or key
fails as one line naming the file, the key and the nearest known one; the Python API reads
the same file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from tilesegment.cli.main import cli
from tilesegment.errors import SettingError
from tilesegment.plan import build_plan, load_recipe

REPO = Path(__file__).resolve().parents[1]

RECIPE = """
[source]
level = 0

[model]
name = "unet-tiny"
classes = 3
seed = 4

[geometry]
tile = 32
halo = 8
pad_mode = "edge"
blend = "gaussian"

[normalization]
mode = "none"

[output]
probabilities = true

[execution]
batch_size = 2
block_size = 32
device = "cpu"
"""
FLAGS = ["--level", "0", "--model", "unet-tiny", "--classes", "3", "--seed", "4", "--tile",
         "32", "--halo", "8", "--pad-mode", "edge", "--blend", "gaussian", "--normalize",
         "none", "--save-probabilities", "--batch-size", "2", "--block-size", "32",
         "--device", "cpu"]


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def planned(*args: object) -> dict:
    result = invoke("plan", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "img.tif"
    data = np.random.default_rng(3).integers(0, 256, (3, 40, 56), dtype=np.uint8)
    tifffile.imwrite(path, data, photometric="minisblack")
    return path


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE)
    return path


def test_a_recipe_gives_the_plan_of_the_same_flags(image, recipe, tmp_path):
    out = tmp_path / "m.zarr"
    from_recipe = planned(image, "-o", out, "--config", recipe)
    from_flags = planned(image, "-o", out, *FLAGS)
    assert from_recipe == from_flags
    assert from_recipe["geometry"]["pad_mode"] == "edge"
    assert from_recipe["output"]["layers"] == ["mask", "probabilities"]
    # ... and differs from the defaults it replaced
    assert (planned(image, "-o", out, "--model", "unet-tiny")["fingerprint"]
            != from_recipe["fingerprint"])
    # the Python API reads the same file into segment()'s keyword arguments
    settings = load_recipe(recipe)
    assert settings["model"] == "unet-tiny" and settings["save_probabilities"] is True
    assert build_plan(image, out, **settings).fingerprint == from_recipe["fingerprint"]


def test_flags_win_over_the_recipe(image, recipe, tmp_path):
    out = tmp_path / "m.zarr"
    plan = planned(image, "-o", out, "--config", recipe, "--pad-mode", "reflect",
                   "--classes", "2")
    assert plan["geometry"]["pad_mode"] == "reflect" and plan["model"]["classes"] == 2
    assert plan["geometry"]["blend"] == "gaussian"  # the rest from the recipe
    expected = planned(image, "-o", out, *FLAGS, "--pad-mode", "reflect", "--classes", "2")
    assert plan["fingerprint"] == expected["fingerprint"]


def test_a_recipe_run_writes_what_the_recipe_says(image, recipe, tmp_path):
    out = tmp_path / "m.zarr"
    result = invoke("run", image, "-o", out, "--config", recipe)
    assert result.exit_code == 0, result.output
    from tilesegment.write import read_output_meta

    meta = read_output_meta(out)
    prov = meta["provenance"]
    assert (prov["tile"], prov["halo"], prov["pad_mode"], prov["blend"]) == (32, 8, "edge",
                                                                            "gaussian")
    assert meta["layers"] == ["mask", "probabilities"] and prov["seed"] == 4
    assert prov["fingerprint"] == planned(image, "-o", tmp_path / "x.zarr", *FLAGS)[
        "fingerprint"]


@pytest.mark.parametrize(("text", "phrases"), [
    ("[geometry]\npad_mdoe = 'edge'\n", ["'pad_mdoe'", "[geometry]", "did you mean pad_mode"]),
    ("[geometrie]\ntile = 32\n", ["[geometrie]", "did you mean [geometry]"]),
    ("tile = 32\n", ["'tile'", "did you mean [geometry] tile"]),
    ("normalize = 'raster'\n", ["'normalize'", "did you mean [normalization] mode"]),
    ("[model]\nname = 'unet-tiny'\nweight = 'w.pt'\n", ["'weight'", "did you mean weights"]),
])
def test_an_unknown_key_is_one_line_with_a_suggestion(image, tmp_path, text, phrases):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    for command in ("run", "plan"):
        result = invoke(command, image, "-o", tmp_path / "m.zarr", "--config", path)
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
        assert str(path) in lines[0]
        for phrase in phrases:
            assert phrase in lines[0], (phrase, lines[0])
    assert not (tmp_path / "m.zarr").exists()
    with pytest.raises(SettingError, match="did you mean"):
        load_recipe(path)


def test_the_python_api_refuses_command_line_only_settings(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[truth]\npath = 'truth.tif'\n")
    with pytest.raises(SettingError, match="only apply to `tilesegment run`"):
        load_recipe(path)


def test_explicit_normalisation_and_crf_in_a_recipe(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[normalization]\nmean = [1.0, 2.0]\nstd = [3.0, 4.0]\n"
                    "[crf]\nenabled = true\npreset = 'deeplab'\niterations = 3\nw2 = 5.0\n")
    settings = load_recipe(path)
    assert settings["normalization"] == ([1.0, 2.0], [3.0, 4.0])
    from tilesegment.models.crf import CRFParams

    assert settings["crf"] == CRFParams(w1=4.0, theta_alpha=121.0, theta_beta=5.0, w2=5.0,
                                        theta_gamma=3.0, iterations=3)


@pytest.mark.parametrize("name", ["sample-unet.toml", "slide-unet-valid.toml"])
def test_the_shipped_recipes_load(name):
    settings = load_recipe(REPO / "pipelines" / name)
    assert settings["model"].startswith("unet-") and settings["tile"] > 0
