"""The shipped ``nuclei`` model: packaged, loaded from its local file, scored as its card says.

The sample image is in the repository (``examples/nuclei``, CC0), so these tests always run.
Scores are recomputed here with plain NumPy from the labels, not with the project's own
evaluation.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import tomllib
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from safetensors.numpy import load_file

from tilesegment.cli.main import cli

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "nuclei"
PACKAGED = REPO / "tilesegment" / "models" / "pretrained"


def _card() -> dict:
    return json.loads((PACKAGED / "nuclei.json").read_text(encoding="utf-8"))


def _foreground_iou(mask: np.ndarray, labels: np.ndarray) -> float:
    """Nucleus IoU on the right half (columns 256–511), NumPy only."""
    half = labels.shape[1] // 2
    pred, true = mask[:, half:] == 1, labels[:, half:] > 0
    return float((pred & true).sum() / (pred | true).sum())


def test_packaged_files_are_package_data_and_found_by_importlib():
    """pyproject installs the checkpoint and its card; importlib.resources finds both in
    the package (an editable install reads them in place)."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = meta["tool"]["setuptools"]["package-data"]["tilesegment.models.pretrained"]
    assert {"*.safetensors", "*.json"} <= set(patterns)
    found = files("tilesegment.models.pretrained")
    for name in ("nuclei.safetensors", "nuclei.json"):
        assert found.joinpath(name).is_file(), name
    size = (PACKAGED / "nuclei.safetensors").stat().st_size
    assert size <= 5 * 1024 * 1024


def test_shipped_model_loads_with_no_network(monkeypatch):
    """Building ``nuclei`` with every socket refused gives exactly the packaged tensors,
    whose sha256 (hashlib here) is the card's."""
    def refuse(*args, **kwargs):
        raise AssertionError("the shipped model must not reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    from tilesegment.models import create_model

    module = create_model("nuclei", 1)
    card = _card()
    tensors = PACKAGED / "nuclei.safetensors"
    assert hashlib.sha256(tensors.read_bytes()).hexdigest() == card["sha256"]
    expected = load_file(str(tensors))
    state = module.state_dict()
    assert set(state) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(state[name].numpy(), value, err_msg=name)
    assert card["architecture"] == "unet-tiny" and card["in_channels"] == 1
    assert card["class_names"] == ["background", "nucleus"]
    assert card["normalization"]["mode"] == "raster"


def test_run_with_no_model_uses_nuclei_and_reproduces_the_cards_held_out_iou(tmp_path):
    """``tilesegment run`` on the sample with no ``--model``: no random-weights warning,
    the mask of the shipped model, and the nucleus IoU on the held-out right half equal to
    what the card states (to 3 decimals)."""
    out = tmp_path / "mask.tif"
    proc = subprocess.run([sys.executable, "-m", "tilesegment.cli.main", "run",
                           str(SAMPLE / "nuclei.tif"), "-o", str(out), "--no-progress"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "random" not in proc.stderr.lower()
    mask = tifffile.imread(out)
    labels = tifffile.imread(SAMPLE / "nuclei_labels.tif")
    stated = _card()["training"]["held_out"]["foreground_iou"]
    assert abs(_foreground_iou(mask, labels) - stated) < 5e-4
    assert stated >= 0.85


def test_default_model_is_the_shipped_checkpoint():
    """``segment(image)`` with no model gives the mask of the packaged checkpoint loaded
    by path (the card's own route), not of a random ``unet-tiny``."""
    import tilesegment

    image = tifffile.imread(SAMPLE / "nuclei.tif")[:128, 256:384]
    default = tilesegment.segment(image)
    by_path = tilesegment.segment(image, model=str(PACKAGED / "nuclei.safetensors"))
    random = tilesegment.segment(image, model="unet-tiny")
    np.testing.assert_array_equal(default, by_path)
    assert not np.array_equal(default, random)
    assert 0.05 < default.mean() < 0.6  # nuclei found, not all one class


def test_plan_names_the_shipped_weights_and_warns_of_nothing_random():
    """The run plan of a default run carries the packaged file's sha256 (hashlib here), so
    provenance and the fingerprint name the shipped weights; a random ``unet-tiny`` has
    none and is flagged random."""
    from tilesegment.plan.build import build_plan

    image = np.zeros((64, 64), np.float32)
    shipped = build_plan(image, None)
    digest = hashlib.sha256((PACKAGED / "nuclei.safetensors").read_bytes()).hexdigest()
    assert shipped.model.name == "nuclei" and shipped.model.weights_sha256 == digest
    assert not shipped.model.random_weights
    assert shipped.normalization.mode == "raster"
    with pytest.warns(Warning, match="RANDOM"):
        other = build_plan(image, None, model="unet-tiny")
    assert other.model.random_weights and other.model.weights_sha256 is None
    assert other.model.content_key != shipped.model.content_key


def test_nuclei_on_a_three_band_raster_is_one_line(tmp_path):
    """Three bands in: exit ≠ 0, one line naming the band counts, no traceback."""
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    result = CliRunner().invoke(cli, ["run", str(rgb), "-o", str(tmp_path / "m.tif")])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "'nuclei' takes 1 band" in lines[0] and "has 3" in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "m.tif").exists()


def test_models_lists_nuclei_with_its_stated_score():
    result = CliRunner().invoke(cli, ["models", "nuclei"])
    assert result.exit_code == 0, result.output
    stated = _card()["training"]["held_out"]["foreground_iou"]
    assert "nuclei" in result.output and f"{stated:.3f}" in result.output


def test_recipe_defaults_are_the_cards_training_settings():
    """``pipelines/train_nuclei.py`` with its defaults is the recipe the card records."""
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "train_nuclei.py"),
                           "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    record = _card()["training"]
    sys.path.insert(0, str(REPO / "pipelines"))
    try:
        import train_nuclei
    finally:
        sys.path.pop(0)
    args = train_nuclei.parser().parse_args(["data", "out.safetensors"])
    card = _card()
    settings = record["arguments"]  # what tilesegment.train.train was called with
    assert record["recipe"].startswith("pipelines/train_nuclei.py")
    assert record["steps"] == args.epochs * args.steps_per_epoch
    assert (card["tile"], card["halo"]) == (args.card_tile, args.halo)
    for name in ("model", "tile", "batch_size", "epochs", "steps_per_epoch", "lr",
                 "weight_decay", "val_fraction", "foreground_bias", "seed"):
        assert settings[name] == getattr(args, name), name
    assert settings["augment"] == args.augment.split(",")
    assert settings["class_weights"] == [float(w) for w in args.class_weights.split(",")]
    assert settings["normalization"] == "raster" and settings["instances"]


@pytest.mark.slow
def test_robust_to_rotation_flips_rescaling_and_16_bit_stretch(tmp_path):
    """Each transform of the whole image, scored on the part from the right half through
    ``tilesegment run`` + ``tilesegment evaluate``: ≥ 0.80, and as the card states."""
    sys.path.insert(0, str(REPO / "pipelines"))
    try:
        from evaluate_nuclei import score
    finally:
        sys.path.pop(0)
    results = score(SAMPLE, "default", tmp_path)
    stated = _card()["training"]["held_out"]["robustness_foreground_iou"]
    assert set(stated) == set(results) - {"identity"}
    for name, r in results.items():
        assert r["foreground_iou"] >= (0.85 if name == "identity" else 0.80), name
        if name != "identity":
            assert abs(r["foreground_iou"] - stated[name]) < 5e-4, name
