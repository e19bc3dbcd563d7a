"""Test-time augmentation (``tta``): per-tile averaging over flips / the square's symmetries
in probability space, checked against whole-image references computed here with NumPy
transforms and one torch call per transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from tests.helpers import ConvStack
from tilesegment import segment
from tilesegment.errors import SettingError
from tilesegment.infer import Predictor

H, W = 70, 90


def _image(seed: int = 0, c: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(c, H, W)).astype(np.float32)


def _group(tta: str) -> list:
    """(forward, inverse) on ``(..., H, W)`` NumPy arrays: the identity and flips, plus
    the quarter turns and transposes for d4 (enumerated independently of tilesegment)."""
    flips = [(lambda a: a, lambda a: a),
             (lambda a: a[..., ::-1], lambda a: a[..., ::-1]),
             (lambda a: a[..., ::-1, :], lambda a: a[..., ::-1, :]),
             (lambda a: a[..., ::-1, ::-1], lambda a: a[..., ::-1, ::-1])]
    if tta in ("none", "flips"):
        return flips[:1] if tta == "none" else flips
    turns = [(lambda a, k=k: np.rot90(a, k, (-2, -1)), lambda a, k=k: np.rot90(a, -k, (-2, -1)))
             for k in (1, 3)]
    transposes = [(lambda a: np.swapaxes(a, -1, -2), lambda a: np.swapaxes(a, -1, -2)),
                  (lambda a: np.rot90(a, 2, (-2, -1)).swapaxes(-1, -2),
                   lambda a: np.rot90(a.swapaxes(-1, -2), -2, (-2, -1)))]
    return flips + turns + transposes


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def whole_image_tta(module: nn.Module, image: np.ndarray, pad: int, tta: str,
                    shrink: int = 0) -> np.ndarray:
    """Probabilities ``(K, H, W)``: the model run once per transform on the whole image
    reflect-padded by ``pad`` (numpy.pad), each output mapped back, softmax, mean."""
    _, h, w = image.shape
    canvas = np.pad(image, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    total = 0.0
    group = _group(tta)
    for fwd, inv in group:
        x = torch.from_numpy(np.ascontiguousarray(fwd(canvas)))[None]
        with torch.inference_mode():
            y = module.eval()(x)[0].double().numpy()
        total = total + _softmax(inv(y))
    off = pad - shrink
    return (total / len(group))[:, off:off + h, off:off + w]


class Valid(nn.Module):
    """Two unpadded convolutions (5×5 then 3×3): shrink 3, receptive radius 3."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.a, self.b = nn.Conv2d(1, 4, 5), nn.Conv2d(4, 3, 3)
        with torch.no_grad():
            for conv in (self.a, self.b):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


class Symmetric(nn.Module):
    """Equivariant under all 8 symmetries of the square: 3×3 kernels with
    ``k[i, j] = k[-i, j] = k[i, -j] = k[j, i]`` (zero padding is symmetric too), tanh, then
    a 1×1 convolution."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(5)
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 3, 1)
        with torch.no_grad():
            corner, edge, centre = (torch.randn(3, 4, 1, generator=gen))
            k = torch.stack([torch.cat([corner, edge, corner], 1),
                             torch.cat([edge, centre, edge], 1),
                             torch.cat([corner, edge, corner], 1)], 1)  # (4, 3, 3)
            self.a.weight.copy_(k[:, None])
            self.b.weight.copy_(torch.randn(self.b.weight.shape, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


@pytest.mark.parametrize("tta", ["flips", "d4"])
def test_tiled_tta_equals_whole_image_tta(tta):
    net = ConvStack(1, 3, layers=3, dilation=2, seed=1)  # same-padded, radius 6
    image = _image(1)
    got = segment(image, model=net, tile=32, halo=8, normalization="none",
                  returns="probabilities", tta=tta, device="cpu")
    ref = whole_image_tta(net, image, pad=8, tta=tta)
    np.testing.assert_allclose(got, ref, atol=2e-5)


def test_tta_keeps_the_crop_geometry_of_a_shrinking_model():
    net = Valid()
    image = _image(2)
    got = segment(image, model=net, tile=30, halo=4, normalization="none",
                  returns="probabilities", tta="d4", device="cpu")
    np.testing.assert_allclose(got, whole_image_tta(net, image, 7, "d4", shrink=3),
                               atol=2e-5)


def test_an_asymmetric_model_gives_another_result_under_tta():
    net = ConvStack(1, 3, layers=3, dilation=1, seed=2)
    image = _image(3)
    common = dict(model=net, tile=32, halo=8, normalization="none", device="cpu")
    plain = segment(image, returns="probabilities", **common)
    np.testing.assert_allclose(plain, whole_image_tta(net, image, 8, "none"), atol=2e-5)
    flips = segment(image, returns="probabilities", tta="flips", **common)
    d4 = segment(image, returns="probabilities", tta="d4", **common)
    assert np.abs(flips - plain).max() > 1e-2 and np.abs(d4 - flips).max() > 1e-2
    mask, mask_d4 = (segment(image, tta=t, **common) for t in ("none", "d4"))
    assert (mask != mask_d4).any()


def test_an_equivariant_model_gives_the_same_result_under_tta():
    net = Symmetric()
    image = _image(4)
    common = dict(model=net, tile=32, halo=4, normalization="none", device="cpu")
    plain = segment(image, returns="probabilities", **common)
    for tta in ("flips", "d4"):
        np.testing.assert_allclose(segment(image, returns="probabilities", tta=tta, **common),
                                   plain, atol=1e-5)
        assert np.array_equal(segment(image, tta=tta, **common), segment(image, **common))


def test_predictor_batches_transforms_and_refuses_what_it_cannot_turn():
    calls = []

    class Spy(nn.Module):
        def forward(self, x):
            calls.append(tuple(x.shape))
            return torch.cat([x, -x], 1)

    dev = torch.device("cpu")
    tiles = np.random.default_rng(6).normal(size=(3, 1, 16, 16)).astype(np.float32)
    out = Predictor(Spy(), dev, 8, 16, 2, tta="d4")(tiles)
    assert calls == [(8, 1, 16, 16)] * 3  # one call per tile, its 8 transforms together
    # a flip-equivariant pointwise model: log of the averaged probabilities = its log-softmax
    ref = torch.log_softmax(torch.cat([torch.from_numpy(tiles)] * 1 + [-torch.from_numpy(
        tiles)], 1), 1).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-6)
    with pytest.raises(SettingError, match="square"):
        Predictor(Spy(), dev, 8, 16, 2, tta="d4")(np.zeros((1, 1, 16, 12), np.float32))
    with pytest.raises(SettingError, match="tta must be one of"):
        Predictor(Spy(), dev, 8, 16, 2, tta="d8")


def test_tta_in_plan_fingerprint_and_cli(tmp_path):
    import tifffile

    from tilesegment.cli.main import cli
    from tilesegment.plan import build_plan, fingerprint_fields, load_recipe

    image = (np.random.default_rng(7).random((64, 64)) * 255).astype(np.uint8)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, image)
    plans = {t: build_plan(str(src), model="identity", classes=1, tta=t, resolve=False)
             for t in ("none", "flips", "d4")}
    assert len({p.fingerprint for p in plans.values()}) == 3
    recipe = tmp_path / "r.toml"
    recipe.write_text('[geometry]\nblend = "gaussian:monai"\n[execution]\ntta = "d4"\n')
    assert load_recipe(recipe) == {"blend": "gaussian:monai", "tta": "d4"}
    assert "tta" not in fingerprint_fields(plans["none"])  # older runs keep their prints
    with pytest.raises(SettingError, match="tta must be one of"):
        build_plan(str(src), model="identity", tta="rot", resolve=False)
    runner = CliRunner()
    shown = runner.invoke(cli, ["plan", str(src), "-o", str(tmp_path / "m.zarr"), "--model",
                                "unet-tiny", "--tta", "d4"])
    assert shown.exit_code == 0, shown.output
    assert "TTA          d4 (8 model passes per tile" in shown.output
    bad = runner.invoke(cli, ["plan", str(src), "-o", str(tmp_path / "m.zarr"), "--tta", "x"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    # a written run records both in its provenance
    import zarr

    out = tmp_path / "w.zarr"
    done = runner.invoke(cli, ["run", str(src), "-o", str(out), "--tta", "flips", "--blend",
                               "gaussian:nnunet", "--no-progress"])
    assert done.exit_code == 0, done.output
    prov = zarr.open_group(out, mode="r").attrs["tilesegment"]["provenance"]
    assert (prov["tta"], prov["blend"], prov["blend_preset"]) == ("flips", "gaussian", "nnunet")
