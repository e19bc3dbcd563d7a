"""``tilesegment tune-crf``: the search improves a blurred probability map of a sharp-edged
image, writes the setting into a copy of the model's card that ``run --crf`` then uses, and
never writes a setting that scored below no CRF ("no CRF" in the card instead)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

pytest.importorskip("pydensecrf")

from tilesegment.cli.main import cli
from tilesegment.models.crf import CRFParams, dense_crf

N = 64
CANDIDATES = "120"  # the coarse grid (72) and a few refinement rounds: ~1 s here


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """``(image uint8 (N, N), truth uint8 (N, N))``: a disc and a rectangle, sharp-edged,
    with noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:N, 0:N]
    truth = ((yy - 20) ** 2 + (xx - 22) ** 2 < 11 ** 2) | (
        (yy >= 36) & (yy < 56) & (xx >= 34) & (xx < 58))
    image = (np.where(truth, 200, 40) + rng.integers(-6, 7, (N, N))).astype(np.uint8)
    return image, truth.astype(np.uint8)


MODEL = "test-blur8"


def _blur_entry():
    """A registered test model that blurs like a stride-8 network: the image thresholded
    at 120, averaged over 8×8 cells and spread back bilinearly, as probabilities clipped to
    [0.05, 0.95]; logits ``log p``. No weights."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    from tilesegment.grid import TileRule
    from tilesegment.models.registry import ModelEntry
    from tilesegment.models.spec import ModelSpec, Normalization

    class Blur8(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            coarse = F.avg_pool2d((x > 120).float(), 8)
            p = F.interpolate(coarse, scale_factor=8, mode="bilinear",
                              align_corners=False).clamp(0.05, 0.95)
            return torch.log(torch.cat([1 - p, p], dim=1))

    def spec(c: int, k: int) -> ModelSpec:
        return ModelSpec(name=MODEL, in_channels=1, num_classes=2,
                         tile_rule=TileRule(multiple=8), receptive_radius=16,
                         default_tile=128, normalization=Normalization("none"))

    return ModelEntry(MODEL, "test: a stride-8 blur", spec, lambda c, k, **o: Blur8(),
                      default_classes=2, trainable=False)


def _iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Foreground IoU, NumPy: the independent reference."""
    return float((pred & truth).sum() / (pred | truth).sum())


def _invoke(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A checkpoint of the blur model (registered for this module), its run over the image
    with probabilities, the image and the truth."""
    from tilesegment.models import registry
    from tilesegment.models.checkpoint import ModelCard, save_checkpoint

    registry.list_models()
    registry.register_model(_blur_entry())
    d = tmp_path_factory.mktemp("tune")
    image, truth = _scene()
    tifffile.imwrite(d / "image.tif", image)
    tifffile.imwrite(d / "truth.tif", truth)
    ckpt = d / "blur.safetensors"
    save_checkpoint(registry.create_model(MODEL, 1, 2), ckpt,
                    ModelCard(architecture=MODEL, in_channels=1, num_classes=2))
    _invoke("run", d / "image.tif", "-o", d / "p.zarr", "--model", ckpt,
            "--save-probabilities", "--no-progress")
    import zarr

    probs = np.asarray(zarr.open(str(d / "p.zarr"))["probabilities"][:], np.float32)
    try:
        yield dict(dir=d, image=image, truth=truth, probs=probs, ckpt=ckpt)
    finally:
        registry._REGISTRY.pop(MODEL, None)


@pytest.fixture(scope="module")
def tuned(case) -> dict:
    """One search, scored by foreground IoU, written into a copy of the checkpoint."""
    d = case["dir"]
    _invoke("tune-crf", d / "p.zarr", d / "image.tif", "--truth", d / "truth.tif",
            "--score", "foreground-iou", "--max-candidates", CANDIDATES, "--card",
            d / "tuned.safetensors", "--json", d / "tune.json")
    return json.loads((d / "tune.json").read_text())


def test_tuning_improves_a_blurred_map_and_reports_true_numbers(case, tuned):
    truth = case["truth"].astype(bool)
    probs = case["probs"]  # read with zarr: the layer as stored (float16)
    plain = _iou(probs.argmax(0) == 1, truth)
    assert tuned["no_crf"]["foreground_iou"] == pytest.approx(plain, abs=1e-9)
    assert plain < 0.9  # the blur costs IoU: there is something to recover
    best = tuned["best"]
    assert tuned["decision"] == "crf" and best["score"] >= plain + 0.08
    # the reported score is what the CRF with those values gives (NumPy IoU)
    params = CRFParams(**{k: float(v) for k, v in best["params"].items() if k != "iterations"},
                       iterations=best["params"]["iterations"])
    refined = dense_crf(probs, case["image"][None], params)
    assert _iou(refined.argmax(0) == 1, truth) == pytest.approx(best["score"], abs=1e-9)
    # every candidate is listed with its gain over no CRF, the best the largest
    scores = [c["score"] for c in tuned["candidates"]]
    assert 72 < len(scores) <= int(CANDIDATES) and max(scores) == best["score"]
    assert all(c["gain"] == pytest.approx(c["score"] - plain) for c in tuned["candidates"])
    assert any(c["stage"] == "refine" for c in tuned["candidates"])


def test_run_crf_uses_the_tuned_card_by_default(case, tuned):
    d = case["dir"]
    card = json.loads((d / "tuned.json").read_text())
    assert card["crf"]["enabled"] is True
    assert card["crf"]["params"] == tuned["best"]["params"]
    # the tensors were copied unchanged: the card's sha256 still matches them
    assert (d / "tuned.safetensors").read_bytes() == case["ckpt"].read_bytes()
    _invoke("run", d / "image.tif", "-o", d / "crf.zarr", "--model", d / "tuned.safetensors",
            "--crf", "--no-progress")
    from tilesegment.read import open_raster

    mask = open_raster(str(d / "crf.zarr")).read((0, N, 0, N))[0]
    truth = case["truth"].astype(bool)
    assert _iou(mask == 1, truth) == pytest.approx(tuned["best"]["score"], abs=0.01)
    assert _iou(mask == 1, truth) > tuned["no_crf"]["score"] + 0.05
    # an explicit preset still wins over the card
    _invoke("run", d / "image.tif", "-o", d / "k.zarr", "--model", d / "tuned.safetensors",
            "--crf", "--crf-preset", "krahenbuhl", "--no-progress")
    import zarr

    prov = zarr.open(str(d / "k.zarr")).attrs["tilesegment"]["provenance"]
    assert prov["crf"]["w1"] == CRFParams().w1 and prov["crf"]["theta_alpha"] == 80.0


def test_no_setting_better_than_no_crf_records_no_crf(case):
    """Truth = the un-refined argmax: no CRF setting can score above it (1.0), so the card
    says "no CRF", and `run --crf` with that card skips the CRF in one line."""
    d = case["dir"]
    plain = case["probs"].argmax(0).astype(np.uint8)
    tifffile.imwrite(d / "argmax.tif", plain)
    out = _invoke("tune-crf", d / "p.zarr", d / "image.tif", "--truth", d / "argmax.tif",
                  "--max-candidates", "80", "--card", d / "none.safetensors", "--json", "-")
    data = json.loads(out.stdout)
    assert data["decision"] == "no crf" and data["best"] is None
    assert data["no_crf"]["score"] == 1.0
    assert all(c["score"] <= 1.0 for c in data["candidates"])
    assert any(c["score"] < 1.0 for c in data["candidates"])  # CRFs did change pixels
    card = json.loads((d / "none.json").read_text())
    assert card["crf"]["enabled"] is False and card["crf"]["params"] is None
    from tilesegment.errors import CRFSkippedWarning

    with pytest.warns(CRFSkippedWarning) as said:  # the CLI prints it as one line
        _invoke("run", d / "image.tif", "-o", d / "none.zarr", "--model",
                d / "none.safetensors", "--crf", "--no-progress")
    skipped = [w for w in said if issubclass(w.category, CRFSkippedWarning)]
    assert len(skipped) == 1 and "skipping --crf" in str(skipped[0].message)
    assert "\n" not in str(skipped[0].message)
    import zarr

    assert zarr.open(str(d / "none.zarr")).attrs["tilesegment"]["provenance"]["crf"] is None
    from tilesegment.read import open_raster

    mask = open_raster(str(d / "none.zarr")).read((0, N, 0, N))[0]
    np.testing.assert_array_equal(mask, plain)


def test_a_bad_crf_entry_in_a_card_is_refused(case):
    from tilesegment.errors import ModelError
    from tilesegment.models.checkpoint import ModelCard

    card = json.loads(case["ckpt"].with_suffix(".json").read_text())
    for bad, said in ((
            {"enabled": True, "params": {"w1": 1}}, "crf.params"),
            ({"enabled": False, "params": {"w1": 1}}, "must be null"),
            ({"enabled": "yes", "params": None}, "crf.enabled")):
        with pytest.raises(ModelError, match=said):
            ModelCard.from_dict({**card, "crf": bad})


def test_cli_errors_are_one_line(case, tmp_path):
    d = case["dir"]
    _invoke("run", d / "image.tif", "-o", tmp_path / "noprob.zarr", "--model", case["ckpt"],
            "--no-progress")
    args = (d / "image.tif", "--truth", d / "truth.tif")
    big = np.zeros((N, N + 1), np.uint8)
    tifffile.imwrite(tmp_path / "wide.tif", big)
    from tilesegment.models.tuned_card import package_folder

    shipped = (package_folder() / "nuclei.json").read_bytes()
    cases = {
        "no probabilities": ((tmp_path / "noprob.zarr", *args), "--save-probabilities"),
        "not an output": ((d / "image.tif", *args), "tilesegment output"),
        "window outside": ((d / "p.zarr", *args, "--window", "0:10,60:70"),
                           "not a non-empty region"),
        "window syntax": ((d / "p.zarr", *args, "--window", "0-10"), "ROW0:ROW1,COL0:COL1"),
        "over the cap": ((d / "p.zarr", *args, "--max-pixels", "1000"), "--window"),
        "truth grid": ((d / "p.zarr", d / "image.tif", "--truth", tmp_path / "wide.tif"),
                       "share one grid"),
        "card exists": ((d / "p.zarr", *args, "--card", case["ckpt"]), "--overwrite"),
        "shipped card": ((d / "p.zarr", *args, "--card", package_folder() / "nuclei.json",
                          "--overwrite"), "shipped model's card"),
        "no card to hold it": ((d / "p.zarr", *args, "--model", "identity", "--card",
                                tmp_path / "x.safetensors"), "no model card"),
    }
    for name, (argv, said) in cases.items():
        result = _invoke("tune-crf", *argv, ok=False)
        assert result.exit_code != 0, name
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and said in lines[0], (name, result.output)
        assert "Traceback" not in result.output
    assert not (tmp_path / "x.json").exists()
    assert (package_folder() / "nuclei.json").read_bytes() == shipped


def test_the_shipped_nuclei_cards_crf_holds_on_the_held_out_half():
    """The shipped card's tuned CRF, which ``segment(crf=True)`` picks up by itself, scores
    at least the no-CRF nucleus IoU on the held-out right half (NumPy IoU), as its card says."""
    from tilesegment import segment
    from tilesegment.models.tuned_card import package_folder

    repo = Path(__file__).resolve().parents[1]
    card = json.loads((package_folder() / "nuclei.json").read_text(encoding="utf-8"))
    entry = card["crf"]
    no_crf = card["training"]["held_out"]["foreground_iou"]
    assert entry["tuning"]["held_out"]["no_crf"] == no_crf
    if not entry["enabled"]:
        pytest.skip("the shipped card records no CRF")
    mask = segment(str(repo / "examples" / "nuclei" / "nuclei.tif"), crf=True)
    labels = tifffile.imread(repo / "examples" / "nuclei" / "nuclei_labels.tif")
    half = labels.shape[1] // 2
    iou = _iou(mask[:, half:] == 1, labels[:, half:] > 0)
    assert iou >= no_crf
    assert abs(iou - entry["tuning"]["held_out"]["tuned"]) < 5e-4
