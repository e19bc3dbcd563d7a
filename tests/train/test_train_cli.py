"""``tilesegment train`` on real files: the run reproduces the trainer's validation mask;
user errors are one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.train.train_helpers import discs

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tilesegment.cli.main", *args], cwd=cwd,
                          env=env, capture_output=True, text=True)


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path]:
    image, labels = discs(96, 160, seed=2)
    tifffile.imwrite(tmp_path / "image.tif", image[0])
    tifffile.imwrite(tmp_path / "truth.tif", labels)
    return tmp_path / "image.tif", tmp_path / "truth.tif"


@pytest.mark.slow
def test_run_with_the_checkpoint_gives_the_validation_mask(tmp_path, files):
    """CLI train → CLI run: the mask ``run`` writes on the validation strip equals, pixel for
    pixel, the one the trainer's own validation scored (and the card's IoU is the
    evaluate IoU of that strip)."""
    from tilesegment.train import train

    image, truth = files
    out = tmp_path / "m.safetensors"
    done = _cli("train", str(image), "--truth", str(truth), "--model", "unet-tiny",
                "-o", str(out), "--tile", "48", "--batch-size", "4", "--epochs", "2",
                "--steps-per-epoch", "8", "--lr", "3e-3", "--device", "cpu",
                "--class-names", "background,disc", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "best epoch" in done.stdout
    import json

    card = json.loads(out.with_suffix(".json").read_text())
    assert card["class_names"] == ["background", "disc"]
    assert card["normalization"]["mode"] == "raster"
    assert card["training"]["command"].startswith("tilesegment train")
    (pair,) = card["training"]["data"]["pairs"]
    import hashlib

    assert pair["image_sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert pair["train_window"] == [0, 96, 0, 128] and pair["val_window"] == [0, 96, 128, 160]
    mask_path = tmp_path / "mask.tif"
    ran = _cli("run", str(image), "-o", str(mask_path), "--model", str(out), "--device", "cpu",
               cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    mask = tifffile.imread(mask_path)
    # the trainer's own validation inference, run again in this process with the same
    # settings (CPU and seed: the same weights), gives its mask
    again = train(str(image), str(truth), model="unet-tiny", output=tmp_path / "n.safetensors",
                  tile=48, batch_size=4, epochs=2, steps_per_epoch=8, lr=3e-3, device="cpu",
                  class_names=("background", "disc"))
    (_, (r0, r1, c0, c1), val_mask), = again.validation
    assert (r0, r1, c0, c1) == (0, 96, 128, 160)
    assert np.array_equal(mask[r0:r1, c0:c1], val_mask)
    labels = tifffile.imread(truth)[r0:r1, c0:c1]
    iou = ((val_mask == 1) & (labels == 1)).sum() / ((val_mask == 1) | (labels == 1)).sum()
    assert card["training"]["validation"]["best"] == pytest.approx(iou, abs=1e-12)


@pytest.mark.parametrize("case", ["count", "grid", "model", "exists"])
def test_user_errors_are_one_line(tmp_path, files, case):
    from click.testing import CliRunner

    from tilesegment.cli.main import cli

    image, truth = files
    out = tmp_path / "m.safetensors"
    args = [str(image), "--truth", str(truth), "--model", "unet-tiny", "-o", str(out)]
    if case == "count":
        args = [str(image), str(image), *args[1:]]
        expect = "2 images but 1 truths"
    elif case == "grid":
        tifffile.imwrite(tmp_path / "small.tif", np.zeros((90, 160), np.uint8))
        args[2] = str(tmp_path / "small.tif")
        expect = "is 96×160 px but truth"
    elif case == "model":
        args[4] = "unet-tiyn"
        expect = "did you mean 'unet-tiny'"
    else:
        out.write_bytes(b"x")
        expect = "exists"
    result = CliRunner().invoke(cli, ["train", *args])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expect in lines[0], lines
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.slow
def test_card_tile_and_halo_are_the_cards_and_relative_names_fingerprint_alike(
        tmp_path, monkeypatch):
    """``--card-tile``/``--halo`` are written as the card's run defaults (the model's own
    default tile is 512 for unet-tiny); the same pair copied into two folders and named
    relatively gives the same data fingerprint (no absolute path inside it)."""
    import json

    from tilesegment.train import train

    image, labels = discs(96, 160, seed=3)
    settings = {"--model": "unet-tiny", "--tile": "48", "--batch-size": "2", "--epochs": "1",
                "--steps-per-epoch": "1", "--card-tile": "128", "--halo": "56",
                "--device": "cpu"}
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "image.tif", image[0])
        tifffile.imwrite(tmp_path / folder / "truth.tif", labels)
    done = _cli("train", "image.tif", "--truth", "truth.tif", "-o", "m.safetensors",
                "--no-progress", *(x for kv in settings.items() for x in kv),
                cwd=tmp_path / "a")
    assert done.returncode == 0, done.stderr
    monkeypatch.chdir(tmp_path / "b")
    train("image.tif", "truth.tif", output="m.safetensors",
          **{k[2:].replace("-", "_"): (v if k in ("--model", "--device") else int(v))
             for k, v in settings.items()})
    cards = [json.loads((tmp_path / f / "m.json").read_text()) for f in ("a", "b")]
    for card in cards:
        assert (card["tile"], card["halo"]) == (128, 56)
        (pair,) = card["training"]["data"]["pairs"]
        assert (pair["image"], pair["truth"]) == ("image.tif", "truth.tif")
    assert cards[0]["training"]["data"]["sha256"] == cards[1]["training"]["data"]["sha256"]
