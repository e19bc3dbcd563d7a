"""FCN-32s/16s/8s and their VGG16 body, each checked against an independent reference.

Most tests use a narrow net (``width``, ``fc_channels``): the geometry — strides, crops,
receptive field — does not depend on the channel counts, and the narrow net runs in
milliseconds. The torchvision comparison uses the full-width VGG16.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import whole_image_logits
from tilesegment import segment
from tilesegment.errors import ModelError
from tilesegment.models.fcn import (
    FCN,
    VARIANTS,
    bilinear_kernel,
    build_fcn,
    convolutionize,
    crop_offsets,
    receptive_radius,
)
from tilesegment.models.probe import measure_receptive_radius
from tilesegment.models.vgg import VGG16, load_torchvision_vgg16

NARROW = {"width": 8, "fc_channels": 32}
FINAL = {"32s": "upscore", "16s": "upscore16", "8s": "upscore8"}
LEARNED = {"32s": (), "16s": ("upscore2",), "8s": ("upscore2", "upscore_pool4")}


def narrow_fcn(variant: str, channels: int = 2, classes: int = 3, seed: int = 0,
               skips: bool = False) -> FCN:
    """A narrow FCN with random class scores (and random skip scores if ``skips``)."""
    torch.manual_seed(seed)
    net = FCN(variant, channels, classes, score_std=0.1, **NARROW).eval()
    if skips:
        with torch.no_grad():
            for name in ("score_pool4", "score_pool3"):
                if hasattr(net, name):
                    getattr(net, name).weight.normal_(0.0, 0.3)
                    getattr(net, name).bias.normal_(0.0, 0.3)
    return net


def reference_bilinear(k: int) -> np.ndarray:
    """Bilinear upsampling filter of size ``k`` written out from its definition: factor
    ``f = ceil(k/2)``, centre ``f - 1`` (odd k) or ``f - 0.5`` (even k), taps
    ``(1 - |i - c|/f)(1 - |j - c|/f)``."""
    f = -(-k // 2)
    c = f - 1 if k % 2 == 1 else f - 0.5
    out = np.empty((k, k))
    for i in range(k):
        for j in range(k):
            out[i, j] = (1 - abs(i - c) / f) * (1 - abs(j - c) / f)
    return out


@pytest.mark.parametrize("k", [3, 4, 5, 16, 32, 64])
def test_bilinear_kernel_is_the_formula_on_the_diagonal(k):
    w = bilinear_kernel(3, k).numpy()
    assert w.shape == (3, 3, k, k)
    for a in range(3):
        for b in range(3):
            expected = reference_bilinear(k) if a == b else np.zeros((k, k))
            np.testing.assert_allclose(w[a, b], expected, atol=1e-7)


@pytest.mark.parametrize("variant", VARIANTS)
def test_upsamplers_are_bilinear_final_fixed_intermediate_learnable(variant):
    net = narrow_fcn(variant, classes=4)
    ups = {n: m for n, m in net.named_modules() if isinstance(m, torch.nn.ConvTranspose2d)}
    assert set(ups) == {FINAL[variant], *LEARNED[variant]}
    for name, layer in ups.items():
        k = layer.kernel_size[0]
        assert layer.stride[0] * 2 == k and layer.bias is None
        ref = np.zeros((4, 4, k, k))
        ref[range(4), range(4)] = reference_bilinear(k)
        np.testing.assert_allclose(layer.weight.detach().numpy(), ref, atol=1e-7)
        assert layer.weight.requires_grad == (name in LEARNED[variant])
    # a fixed upsampler gets no gradient; a learnable one does
    net.train()
    net(torch.randn(1, 2, 40, 40)).square().mean().backward()
    assert net.get_submodule(FINAL[variant]).weight.grad is None
    for name in LEARNED[variant]:
        assert net.get_submodule(name).weight.grad is not None


def test_crop_offsets_are_the_caffe_reference_nets():
    assert crop_offsets("32s") == {"output": 19}
    assert crop_offsets("16s") == {"score_pool4": 5, "output": 27}
    assert crop_offsets("8s") == {"score_pool4": 5, "score_pool3": 9, "output": 31}


def _hat(at: np.ndarray, centres: np.ndarray, spacing: float) -> np.ndarray:
    """Linear-interpolation matrix ``[len(at), len(centres)]``; zero beyond the samples."""
    return np.maximum(0.0, 1.0 - np.abs(at[:, None] - centres[None, :]) / spacing)


def _interp(values: np.ndarray, centres: tuple[np.ndarray, np.ndarray], spacing: float,
            at: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Bilinear interpolation of ``values [K, n, m]`` sampled at ``centres`` onto ``at``."""
    my, mx = _hat(at[0], centres[0], spacing), _hat(at[1], centres[1], spacing)
    return np.einsum("an,knm,bm->kab", my, values, mx)


def _by_position(values: np.ndarray, step: float, origin: float,
                 want: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The pixels of ``values [K, n, m]`` (pixel i centred on ``origin + step·i``) whose
    centres are ``want`` (rows, columns); a KeyError if the grids do not align."""
    picked = []
    for axis, at in enumerate(want):
        index = {origin + step * i: i for i in range(values.shape[axis + 1])}
        picked.append([index[float(p)] for p in at])
    return values[:, picked[0]][:, :, picked[1]]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", [(100, 77), (64, 64), (33, 130)])
def test_output_is_bilinear_fusion_of_the_score_maps(variant, size):
    """Whole forward pass against a NumPy reference placing each map by hand-derived pixel
    centres (input pixel j covers [j - ½, j + ½]): score_fr pixel k on 32k + 12.5, pool4
    pixel m on 16m - 91.5, pool3 pixel m on 8m - 95.5 (conv1_1 padding 100 puts its first
    output on -99; a 2×2 pool adds half its step; fc6 7×7 adds three pool5 steps)."""
    net = narrow_fcn(variant, skips=True, seed=1)
    x = torch.randn(1, 2, *size, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        y = net(x)[0].numpy().astype(np.float64)
        feats = net.backbone(F.pad(x, (99, 99, 99, 99)))
        score = net.score_fr(net.fc(feats.pool5))[0].double().numpy()
        p4 = net.score_pool4(feats.pool4)[0].double().numpy() if variant != "32s" else None
        p3 = net.score_pool3(feats.pool3)[0].double().numpy() if variant == "8s" else None
    out_at = (np.arange(size[0], dtype=float), np.arange(size[1], dtype=float))

    def grid(n: int, step: float, origin: float) -> np.ndarray:
        return origin + step * np.arange(n)

    s_at = tuple(grid(n, 32, 12.5) for n in score.shape[1:])
    if variant == "32s":
        ref = _interp(score, s_at, 32, out_at)
    else:
        # a ×2 transposed conv (kernel 4) of n samples gives 2n + 2, the first ¾ of an input
        # step before the first input sample: 12.5 - 32·0.75 = -11.5, step 16
        f4 = tuple(grid(2 * n + 2, 16, -11.5) for n in score.shape[1:])
        fuse = _interp(score, s_at, 32, f4)
        fuse += _by_position(p4, 16, -91.5, f4)
        if variant == "16s":
            ref = _interp(fuse, f4, 16, out_at)
        else:
            f3 = tuple(grid(2 * len(c) + 2, 8, c[0] - 16 * 0.75) for c in f4)
            fuse = _interp(fuse, f4, 16, f3)
            fuse += _by_position(p3, 8, -95.5, f3)
            ref = _interp(fuse, f3, 8, out_at)
    assert y.shape == ref.shape == (3, *size)
    assert np.abs(ref).max() > 0.1
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()


def _exact_band(n: int, half: int) -> np.ndarray:
    """Pixels ≥ ``half`` px from every score_fr centre 32k + 12.5."""
    r = (np.arange(n) - 12.5) % 32
    return np.minimum(r, 32 - r) >= half


@pytest.mark.parametrize("size", [(96, 96), (100, 77)])
def test_finer_nets_start_from_the_coarser_predictions(size):
    """FCN-16s from FCN-32s (and FCN-8s from that) share every layer and add zero skips, so
    they predict ×2-then-×16 bilinear where FCN-32s predicts ×32 bilinear. Those agree
    exactly except within 8 px (16s; 8s: 12 px) of a score_fr centre, where ×2 bilinear
    rounds off the ×32 kink: they differ by ⅛ of the local second difference there."""
    torch.manual_seed(3)
    fcn32 = FCN("32s", 2, 3, score_std=0.05, width=16, fc_channels=64).eval()
    fcn16 = FCN.from_coarser(fcn32)
    fcn8 = FCN.from_coarser(fcn16)
    assert (fcn16.variant, fcn8.variant) == ("16s", "8s")
    for net in (fcn16, fcn8):
        own = net.state_dict()
        for k, v in fcn32.state_dict().items():
            if k in own:
                assert torch.equal(own[k], v), k
        assert not net.training
    assert not fcn8.score_pool3.weight.any() and not fcn8.score_pool4.weight.any()
    x = torch.randn(1, 2, *size, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        y32, y16, y8 = (n(x)[0].numpy() for n in (fcn32, fcn16, fcn8))
    scale = np.abs(y32).max()
    assert scale > 0.1 and y16.shape == y8.shape == y32.shape == (3, *size)
    for y, half in ((y16, 8), (y8, 12)):
        band = _exact_band(size[0], half)[:, None] & _exact_band(size[1], half)[None, :]
        assert band.sum() >= 4
        assert np.abs(y - y32)[:, band].max() <= 1e-5 * scale
        # elsewhere the nets do differ a little (bilinear∘bilinear ≠ bilinear)
        assert 1e-4 * scale < np.abs(y - y32).max() < 0.5 * scale
    with pytest.raises(ModelError, match="finest"):
        FCN.from_coarser(fcn8)


@pytest.fixture(scope="module")
def torchvision_vgg(tmp_path_factory):
    """torchvision's VGG16 with seeded random weights, and its state dict saved to a file."""
    import torchvision

    torch.manual_seed(11)
    vgg = torchvision.models.vgg16(weights=None).eval()
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    torch.save(vgg.state_dict(), path)
    return vgg, path


def test_convolutionized_vgg_reproduces_the_classifier(torchvision_vgg):
    vgg, path = torchvision_vgg
    net = build_fcn("32s", 3, 5, backbone_weights=path)
    assert not net.score_fr.weight.any()  # the paper's zero-initialised class scores
    fc8 = convolutionize(load_torchvision_vgg16(path).fc8, 4096, 1)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(12))
    with torch.inference_mode():
        feats = net.backbone(x)  # the classifier's own geometry: padding 1, 224 → 7
        pools, h = [], x
        for layer in vgg.features:  # torchvision's own body, its pools kept
            h = layer(h)
            if isinstance(layer, torch.nn.MaxPool2d):
                pools.append(h)
        logits = vgg.classifier(torch.flatten(vgg.avgpool(h), 1))
        scores = fc8(net.fc(feats.pool5))
    for ours, ref in zip(feats, pools[2:], strict=True):
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert scores.shape == (1, 1000, 1, 1)
    assert logits.abs().max() > 1e-3
    assert (scores[:, :, 0, 0] - logits).abs().max() <= 1e-4 * logits.abs().max()


def test_other_band_counts_keep_the_rgb_response_to_grey(torchvision_vgg):
    _, path = torchvision_vgg
    weights = load_torchvision_vgg16(path)
    rgb = VGG16(3).load_pretrained(weights).conv("conv1_1")
    grey = torch.rand(1, 1, 20, 20)
    with torch.inference_mode():
        ref = rgb(grey.repeat(1, 3, 1, 1))
        for c in (1, 2, 4, 7):
            conv = VGG16(c).load_pretrained(weights).conv("conv1_1")
            assert conv.weight.shape == (64, c, 3, 3)
            assert torch.allclose(conv(grey.repeat(1, c, 1, 1)), ref, atol=1e-5)


def test_loader_names_missing_unexpected_and_misshapen_tensors(tmp_path):
    state = {"features.0.weight": torch.zeros(64, 4, 3, 3), "features.0.bias": torch.zeros(64),
             "features.2.weight": torch.zeros(64, 64, 3, 3),
             "features.1.running_mean": torch.zeros(64)}
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ModelError) as info:
        load_torchvision_vgg16(path)
    msg = str(info.value)
    assert "partial.pth" in msg
    assert "missing: classifier.0.bias, classifier.0.weight" in msg and "more)" in msg
    assert "unexpected: features.1.running_mean" in msg
    assert "wrong shape: features.0.weight (64, 4, 3, 3) (expected (64, 3, 3, 3))" in msg

    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelError, match=r"cut\.pth"):
        load_torchvision_vgg16(cut)
    with pytest.raises(ModelError, match="not found"):
        build_fcn("8s", 3, 2, backbone_weights=tmp_path / "absent.pth")


def test_convolutionize_refuses_a_wrong_geometry():
    with pytest.raises(ModelError, match="7×7"):
        convolutionize(torch.nn.Linear(100, 4), 512, 7)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("channels,classes", [(1, 2), (4, 5)])
def test_shape_contract_at_small_sizes(variant, channels, classes):
    net = narrow_fcn(variant, channels, classes, skips=True)
    with torch.inference_mode():
        for h, w in ((1, 1), (7, 9), (32, 32), (45, 64)):
            y = net(torch.randn(2, channels, h, w))
            assert tuple(y.shape) == (2, classes, h, w)
            assert y.dtype == torch.float32 and torch.isfinite(y).all()


class _ChannelsLast(torch.nn.Module):
    """Feeds the net NHWC input (3× faster convolutions on a CPU); gradients still reach x."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last))


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_receptive_radius_is_what_probing_finds(variant):
    """All 32 phases of the stride-32 output probed; side 576 > 2·(245 + 32) so no phase is
    cut off by the tile border. Width 4 keeps it quick; the geometry is the paper's."""
    torch.manual_seed(5)
    net = FCN(variant, 1, 2, score_std=0.1, width=4, fc_channels=16).eval()
    with torch.no_grad():
        for name in ("score_pool4", "score_pool3"):
            if hasattr(net, name):
                getattr(net, name).weight.normal_(0.0, 0.3)
    measured = measure_receptive_radius(_ChannelsLast(net), 1, 576, draws=1, phases=32)
    assert measured == receptive_radius(variant) == {"32s": 233, "16s": 241, "8s": 245}[variant]


def test_tiling_is_seamless_with_cores_on_the_stride_32_grid():
    image = np.random.default_rng(8).normal(size=(2, 150, 173)).astype(np.float32)
    net = narrow_fcn("8s", 2, 3, skips=True, seed=6)
    tile, halo = 576, 256  # halo ≥ radius 245, core 64 = 2·32
    whole = whole_image_logits(net, image, pad=halo, mode="reflect")
    tiled = segment(image, model=net, tile=tile, halo=halo, returns="logits")
    assert np.abs(whole).max() > 0.1
    assert np.abs(tiled - whole).max() <= 1e-5 * np.abs(whole).max()
    # cores off the 32 grid (core 76) break the equality even with a larger halo
    off_grid = segment(image, model=net, tile=tile, halo=250, returns="logits")
    assert np.abs(off_grid - whole).max() > 1e-3 * np.abs(whole).max()
