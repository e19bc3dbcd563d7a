"""The trainer: learning, disjoint train/validation regions, resume, valid-net alignment."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.train.train_helpers import discs
from tilesegment.train import train
from tilesegment.train.data import split_regions
from tilesegment.train.state import state_path

FAST = dict(model="unet-tiny", tile=48, batch_size=4, device="cpu", lr=3e-3)


def _tensors(path) -> dict[str, np.ndarray]:
    return load_file(str(path))


@pytest.mark.slow
def test_training_lowers_loss_and_beats_untrained(tmp_path, disc_data):
    from tilesegment.evaluation.confusion import LabelRules
    from tilesegment.grid import TileSpec
    from tilesegment.models import create_model, get_spec
    from tilesegment.normalize import raster_statistics
    from tilesegment.read import open_raster
    from tilesegment.train.validate import predict_window, score

    image, labels = disc_data
    out = tmp_path / "m.safetensors"
    summary = train(image, labels, output=out, epochs=3, steps_per_epoch=10, **FAST)
    losses = [row["loss"] for row in summary.history]
    assert losses[-1] < 0.6 * losses[0]
    assert summary.steps == 30 and summary.epochs == 3
    # chance: every pixel foreground gives IoU = the foreground fraction of the strip
    _, val = split_regions(*labels.shape, 0.2)
    strip = labels[:, val[2]:]
    chance = strip.mean()
    # the untrained model (same seed) through the same validation inference
    spec = get_spec("unet-tiny", 1, 2)
    raster = open_raster(image)
    stats = raster_statistics(raster)
    untrained = predict_window(create_model("unet-tiny", 1, 2, 0), raster,
                               TileSpec(512, spec.default_halo(512)), stats.mean, stats.std,
                               val, 2, __import__("torch").device("cpu"))
    before = score([untrained], [strip], LabelRules(num_classes=2), ("bg", "fg"))["selection"]
    assert summary.best_score > max(chance, before or 0.0) + 0.3
    # the card's score is the project's exact IoU of the best mask (numpy reference here)
    mask = summary.validation[0][2]
    iou = ((mask == 1) & (strip == 1)).sum() / ((mask == 1) | (strip == 1)).sum()
    assert summary.best_score == pytest.approx(iou, abs=1e-12)
    card = summary.card.training["validation"]
    assert card["best"] == summary.best_score
    assert len(card["per_epoch"]) == 3


def test_training_tiles_never_touch_the_validation_strip(tmp_path):
    image, labels = discs(96, 200)
    summary = train(image, labels, output=tmp_path / "m.safetensors", epochs=1,
                    steps_per_epoch=6, val_fraction=0.3, augment="flip,rot90,scale,intensity",
                    foreground_bias=0.7, record_tiles=True, **FAST)
    _, val_w = split_regions(96, 200, 0.3)
    assert val_w == (0, 96, 140, 200)
    drawn = summary.tiles
    assert len(drawn) == 6 * 4
    scales = {round(t.scale, 6) for t in drawn}
    assert len(scales) > 1  # scaled reads happened (their windows differ from 48 px)
    for t in drawn:
        r0, r1, c0, c1 = t.window
        # the whole input window (tile incl. halo, or the scaled source window)
        assert c0 >= 0 and c1 <= val_w[2], t
        assert r0 >= 0 and r1 <= 96, t
    # the foreground bias centres tiles on discs more often than uniform draws would
    centres = [labels[(t.window[0] + t.window[1]) // 2, (t.window[2] + t.window[3]) // 2]
               for t in drawn]
    assert np.mean(centres) > labels[:, :140].mean()


def test_resume_gives_the_uninterrupted_weights(tmp_path, disc_data):
    image, labels = disc_data
    opts = dict(steps_per_epoch=4, seed=3, augment="flip,rot90,intensity", **FAST)
    whole = train(image, labels, output=tmp_path / "a.safetensors", epochs=2, **opts)
    first = train(image, labels, output=tmp_path / "b.safetensors", epochs=1, **opts)
    assert first.steps == 4
    resumed = train(image, labels, output=tmp_path / "b.safetensors", epochs=2, resume=True,
                    **opts)
    assert resumed.steps == whole.steps == 8
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]
    a, b = _tensors(tmp_path / "a.safetensors"), _tensors(tmp_path / "b.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key
    # the last weights too (the state beside the output), not only the best ones
    import torch

    sa = torch.load(state_path(tmp_path / "a.safetensors"), weights_only=True)
    sb = torch.load(state_path(tmp_path / "b.safetensors"), weights_only=True)
    assert sa["step"] == sb["step"] == 8
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key


def test_resume_refuses_other_settings(tmp_path, disc_data):
    from tilesegment.errors import SettingError

    image, labels = disc_data
    train(image, labels, output=tmp_path / "b.safetensors", epochs=1, steps_per_epoch=2, **FAST)
    with pytest.raises(SettingError, match="lr"):
        train(image, labels, output=tmp_path / "b.safetensors", epochs=2, steps_per_epoch=2,
              resume=True, **{**FAST, "lr": 1e-2})


def test_same_seed_same_weights_on_cpu(tmp_path, disc_data):
    image, labels = disc_data
    opts = dict(epochs=1, steps_per_epoch=3, seed=7, **FAST)
    train(image, labels, output=tmp_path / "a.safetensors", **opts)
    train(image, labels, output=tmp_path / "b.safetensors", **opts)
    train(image, labels, output=tmp_path / "c.safetensors", **{**opts, "seed": 8})
    a, b, c = (_tensors(tmp_path / f"{n}.safetensors") for n in "abc")
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert any(a[k].tobytes() != c[k].tobytes() for k in a)


@pytest.mark.slow
def test_valid_unet_label_crops_line_up(tmp_path):
    """label = the sign of the input, pixel by pixel: near-perfect only if every label crop
    sits exactly under the valid net's output (a model that learnt a 1-px shift scores far
    less through the aligned inference path)."""
    rng = np.random.default_rng(1)
    labels = (rng.random((140, 200)) < 0.3).astype(np.uint8)
    image = (labels * 2.0 - 1 + rng.normal(0, 0.2, labels.shape))[None].astype(np.float32)
    summary = train(image, labels, model="unet-valid-tiny", output=tmp_path / "v.safetensors",
                    tile=124, batch_size=4, epochs=5, steps_per_epoch=10, lr=1e-2,
                    device="cpu", augment="flip,rot90")
    assert summary.card.training["tile"] == 124  # output 36 px, 44 px inside the tile
    _, val = split_regions(140, 200, 0.2)
    strip = labels[:, val[2]:]
    shifted = np.roll(strip, 1, axis=1)[:, 1:]
    shift_iou = ((shifted == 1) & (strip[:, 1:] == 1)).sum() / (
        (shifted == 1) | (strip[:, 1:] == 1)).sum()
    assert shift_iou < 0.3
    assert summary.best_score > 0.97
