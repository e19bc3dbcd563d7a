"""Tiled inference equals one whole-image run when the halo covers the receptive field."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import ConvStack, whole_image_logits
from tilesegment import segment
from tilesegment.errors import SeamWarning
from tilesegment.grid import phase_halo
from tilesegment.models import create_model, get_spec
from tilesegment.models.probe import measure_receptive_radius

RNG = np.random.default_rng(7)
IMAGE = RNG.normal(size=(2, 150, 173)).astype(np.float32)


@pytest.mark.parametrize("mode", ["reflect", "symmetric", "edge"])
def test_conv_stack_halo_at_radius_is_seamless(mode):
    net = ConvStack(2, 3, layers=4, dilation=2)  # radius 8
    whole = whole_image_logits(net, IMAGE, pad=net.radius, mode=mode)
    tiled = segment(IMAGE, model=net, tile=40, halo=net.radius, pad_mode=mode,
                    returns="logits", block_size=64)
    assert np.abs(tiled - whole).max() <= 1e-5


def test_conv_stack_halo_below_radius_shows_the_seam():
    net = ConvStack(2, 3, layers=4, dilation=2)
    whole = whole_image_logits(net, IMAGE, pad=net.radius, mode="reflect")
    tiled = segment(IMAGE, model=net, tile=40, halo=net.radius - 3, returns="logits")
    diff = np.abs(tiled - whole).max(axis=0)
    assert diff.max() > 1e-3
    # the damage sits on the core boundaries, not inside the cores
    core = 40 - 2 * (net.radius - 3)
    on_seam = np.zeros(diff.shape, bool)
    for k in range(0, diff.shape[0] + core, core):  # core boundaries, raster edges included
        on_seam[max(k - 3, 0):k + 3] = True
    for k in range(0, diff.shape[1] + core, core):
        on_seam[:, max(k - 3, 0):k + 3] = True
    assert diff[~on_seam].max() <= 1e-5


def _scaled(module: torch.nn.Module) -> torch.nn.Module:
    """Shrink the 1×1 head so logits are O(1) and a float32 tolerance of 1e-5 is fair."""
    with torch.no_grad():
        module.head.weight.mul_(0.05)
    return module


def test_same_padded_unet_is_seamless_at_its_radius():
    spec = get_spec("unet-tiny", 2, 3)
    net = _scaled(create_model("unet-tiny", 2, 3, seed=3))
    tile = 192
    halo = spec.default_halo(tile)
    assert halo >= spec.receptive_radius and halo % 8 == 0 and (tile - 2 * halo) % 8 == 0
    whole = whole_image_logits(net, IMAGE, pad=halo, mode="reflect", multiple=8)
    tiled = segment(IMAGE, model=net, tile=tile, halo=halo, returns="logits", block_size=100)
    assert np.abs(whole).max() > 0.1
    assert np.abs(tiled - whole).max() <= 1e-5

    short = phase_halo(12, 8)
    tiled_short = segment(IMAGE, model=net, tile=tile, halo=short, returns="logits")
    assert np.abs(tiled_short - whole).max() > 1e-3
    # the registry model warns about such a halo before running
    with pytest.warns(SeamWarning, match="receptive radius 51"):
        segment(IMAGE[:, :40, :40], model="unet-tiny", classes=3, tile=tile, halo=short)


def test_valid_unet_is_seamless():
    spec = get_spec("unet-valid-tiny", 2, 3)
    net = _scaled(create_model("unet-valid-tiny", 2, 3, seed=4))
    tile = 188
    shrink = spec.check_tile(tile)
    halo = spec.default_halo(tile)
    assert halo >= shrink and (tile - 2 * halo) % 8 == 0 and halo % 8 == spec.tile_rule.halo_phase()
    # whole-image reference: one valid run over the raster padded by `halo` on each side,
    # extended to a legal size; the valid net loses `shrink`, so crop halo - shrink.
    h, w = IMAGE.shape[1:]
    rule = spec.tile_rule
    side_h = rule.nearest_legal(h + 2 * halo)
    side_h = side_h if side_h >= h + 2 * halo else side_h + rule.output_stride
    side_w = rule.nearest_legal(w + 2 * halo)
    side_w = side_w if side_w >= w + 2 * halo else side_w + rule.output_stride
    big = 400
    padded = np.pad(IMAGE, ((0, 0), (big, big), (big, big)), mode="reflect")
    canvas = padded[:, big - halo:big - halo + side_h, big - halo:big - halo + side_w]
    with torch.inference_mode():
        out = net(torch.from_numpy(np.ascontiguousarray(canvas))[None])[0].numpy()
    whole = out[:, halo - shrink:halo - shrink + h, halo - shrink:halo - shrink + w]
    tiled = segment(IMAGE, model="unet-valid-tiny", classes=3, tile=tile, halo=halo,
                    seed=4, normalization="none", returns="logits")
    tiled_net = segment(IMAGE, model=net, tile=tile, halo=halo, returns="logits")
    assert np.abs(tiled_net - whole).max() <= 1e-5
    # the registry model is the same network up to the head scale
    assert np.abs(tiled * 0.05 - tiled_net).max() <= 1e-4


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_unet_radius_bound_holds_when_probed(depth):
    from tilesegment.models.unet import UNet
    from tilesegment.models.unet_geometry import unet_receptive_radius

    torch.manual_seed(depth)
    net = UNet(1, 2, depth=depth, width=4, padding="same")
    measured = measure_receptive_radius(net, 1, 2**depth * 24, draws=3, phases=2**depth)
    assert measured == unet_receptive_radius(depth)
