"""Gaussian blend presets (``--blend gaussian:<preset>``): each weight map against its
peer's own code (MONAI's ``compute_importance_map``, nnU-Net's ``compute_gaussian`` written
out here with SciPy), the merger using the preset, and the spellings."""

from __future__ import annotations

import numpy as np
import pytest

from tilesegment.errors import GeometryError
from tilesegment.grid import (
    BLEND_CHOICES,
    GAUSSIAN_PRESETS,
    TileSpec,
    parse_blend,
    tiles_for_window,
)
from tilesegment.merge import GaussianMerger
from tilesegment.merge.gaussian import MIN_WEIGHT, gaussian_weight

SIDES = (7, 24, 33, 64, 144)


def nnunet_gaussian(side: int) -> np.ndarray:
    """nnU-Net v2's ``compute_gaussian((side, side), sigma_scale=1/8)`` (its default
    float16), less torch: impulse at ``side // 2``, SciPy's filter, / max, zeros → min."""
    ndimage = pytest.importorskip("scipy.ndimage")
    tmp = np.zeros((side, side))
    tmp[side // 2, side // 2] = 1
    g = ndimage.gaussian_filter(tmp, [side / 8, side / 8], 0, mode="constant", cval=0)
    g = (g / g.max()).astype(np.float16)
    g[g == 0] = g[g != 0].min()
    return g.astype(np.float32)


def monai_importance_map(side: int) -> np.ndarray:
    """MONAI 1.6.1's ``compute_importance_map((side, side), "gaussian", sigma_scale=0.125)``
    transcribed (torch float32 samples, product of the axes, clamp at max(min, 1e-3))."""
    torch = pytest.importorskip("torch")
    sigma = side * 0.125
    x = torch.arange(start=-(side - 1) / 2.0, end=(side - 1) / 2.0 + 1, dtype=torch.float)
    x = torch.exp(x**2 / (-2 * sigma**2))
    m = x.unsqueeze(-1) * x[None]
    return torch.clamp(m, min=max(torch.min(m).item(), 1e-3)).numpy()


@pytest.mark.parametrize("side", SIDES)
def test_presets_match_their_peers(side):
    monai = monai_importance_map(side)
    # float32 exp in NumPy and torch may differ in the last bit
    np.testing.assert_allclose(gaussian_weight(side, preset="monai"), monai, rtol=0,
                               atol=2.5e-7)
    np.testing.assert_allclose(gaussian_weight(side), monai, rtol=0, atol=2.5e-7)
    assert np.array_equal(gaussian_weight(side, preset="nnunet"), nnunet_gaussian(side))


@pytest.mark.slow
def test_the_monai_transcription_is_monai():
    """Against the installed MONAI itself (its import alone takes seconds)."""
    torch = pytest.importorskip("torch")
    inferers = pytest.importorskip("monai.inferers.utils")
    for side in SIDES:
        real = inferers.compute_importance_map((side, side), "gaussian", 0.125,
                                               dtype=torch.float32).numpy()
        assert np.array_equal(monai_importance_map(side), real)


def test_the_default_preset_is_the_old_formula():
    x = np.arange(33) - 16.0
    g = np.exp(-x**2 / (2 * (33 / 8) ** 2))
    ref = np.maximum(np.outer(g, g), MIN_WEIGHT).astype(np.float32)
    assert np.array_equal(gaussian_weight(33), ref)
    assert np.array_equal(gaussian_weight(33, preset="tilesegment"), ref)
    # nnU-Net's map is off centre for even sides and floored far lower
    nn = gaussian_weight(24, preset="nnunet")
    assert nn[12, 12] == 1.0 and nn[11, 11] < 1.0 and nn.min() < 1e-4


def test_the_merger_blends_with_the_preset_of_its_spec():
    shape, k = (40, 52), 2
    spec = TileSpec(tile=24, halo=6, blend="gaussian", blend_preset="nnunet")
    tiles = tiles_for_window(shape, spec, (0, 40, 0, 52))
    outputs = np.random.default_rng(0).normal(size=(len(tiles), k, 24, 24)).astype(np.float32)
    weight = nnunet_gaussian(24).astype(np.float64)
    pad = 20
    num = np.zeros((k, shape[0] + 2 * pad, shape[1] + 2 * pad))
    den = np.zeros(num.shape[1:])
    for tile, out in zip(tiles, outputs, strict=True):
        y, x = tile.row + pad, tile.col + pad
        num[:, y:y + 24, x:x + 24] += weight * out
        den[y:y + 24, x:x + 24] += weight
    ref = num[:, pad:-pad, pad:-pad] / den[pad:-pad, pad:-pad]
    merger = GaussianMerger(spec, (0, 40, 0, 52), k)
    merger.add(tiles, outputs)
    np.testing.assert_allclose(merger.result(), ref, atol=1e-5)
    plain = GaussianMerger(TileSpec(tile=24, halo=6, blend="gaussian"), (0, 40, 0, 52), k)
    plain.add(tiles, outputs)
    assert np.abs(plain.result() - ref).max() > 1e-3  # another weight map, another blend


def test_spellings_plan_and_fingerprint(tmp_path):
    from click.testing import CliRunner

    from tilesegment import segment
    from tilesegment.cli.main import cli
    from tilesegment.plan import build_plan, fingerprint_fields

    assert parse_blend("gaussian") == ("gaussian", "tilesegment") == parse_blend(
        "gaussian:tilesegment")
    assert parse_blend("crop") == ("crop", "tilesegment")
    assert set(BLEND_CHOICES) >= {f"gaussian:{p}" for p in GAUSSIAN_PRESETS}
    for bad in ("crop:monai", "gaussian:", "gaussian:mona", "median"):
        with pytest.raises(GeometryError, match="unknown; use one of crop, gaussian"):
            parse_blend(bad)
    image = np.random.default_rng(1).normal(size=(1, 40, 40)).astype(np.float32)
    plans = {b: build_plan(image, model="identity", classes=1, tile=16, halo=4, blend=b)
             for b in ("crop", "gaussian", "gaussian:tilesegment", "gaussian:monai",
                       "gaussian:nnunet")}
    prints = {b: p.fingerprint for b, p in plans.items()}
    assert prints["gaussian"] == prints["gaussian:tilesegment"]
    assert len(set(prints.values())) == 4
    assert "blend_preset" not in fingerprint_fields(plans["gaussian"])["geometry"]
    assert plans["gaussian:nnunet"].geometry.spec.blend_preset == "nnunet"
    with pytest.raises(GeometryError, match="unknown"):
        segment(image, model="identity", blend="crop:nnunet")
    import tifffile

    tif = tmp_path / "in.tif"
    tifffile.imwrite(tif, (image[0] * 50 + 100).astype(np.uint8))
    runner = CliRunner()
    shown = runner.invoke(cli, ["plan", str(tif), "-o", str(tmp_path / "m.zarr"), "--model",
                                "unet-tiny", "--blend", "gaussian:monai"])
    assert shown.exit_code == 0, shown.output
    assert "/ gaussian:monai" in shown.output
    bad = runner.invoke(cli, ["plan", str(tif), "-o", str(tmp_path / "m.zarr"), "--blend",
                              "gaussian:x"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
