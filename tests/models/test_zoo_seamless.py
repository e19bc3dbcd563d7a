"""For every registered model whose receptive field is bounded: tiled with its default
(seamless) halo, the output equals one run of the same network on the whole mirror-padded
raster. Wide VGG nets are checked at reduced width: the geometry is the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import whole_image_logits
from tilesegment import segment
from tilesegment.grid import aligned_halo
from tilesegment.models import create_model, get_spec, list_models

C, K = 2, 3
HEAVY = {"fcn_resnet101"}  # a 1.1k-px tile of ResNet-101: minutes on two CPU cores


def _bounded() -> list[str]:
    names = []
    for name in list_models():
        spec = get_spec(name, C, K if name != "identity" else None)
        if not spec.global_context:
            names.append(name)
    return names


def _network(name: str) -> torch.nn.Module:
    """The registered network, or a narrow copy of the same geometry for the VGG nets."""
    torch.manual_seed(1)
    if name.startswith("fcn") and name[3:] in ("32s", "16s", "8s"):
        from tilesegment.models.fcn import FCN

        net = FCN(name[3:], C, K, width=8, fc_channels=32)
        for p in net.parameters():  # give the zero-initialised scores and skips some weight
            if p.requires_grad:
                torch.nn.init.normal_(p, 0.0, 0.1)
        return net.eval()
    if name == "deeplab-largefov":
        from tilesegment.models.deeplab import DeepLabV1

        return DeepLabV1(C, K, width=8, fc_channels=32).eval()
    return create_model(name, C, K if name != "identity" else None, seed=1)


def _geometry(spec) -> tuple[int, int]:
    """The smallest legal tile whose seamless halo leaves a core of two output strides."""
    stride = spec.tile_rule.output_stride
    for tile in range(stride, 4096):
        if not spec.tile_rule.is_legal(tile):
            continue
        shrink = spec.check_tile(tile)
        need = shrink if spec.valid else spec.receptive_radius
        if tile - 2 * need < 2 * stride:
            continue
        halo = aligned_halo(tile, need, stride)
        if tile - 2 * halo >= 2 * stride:
            return tile, halo
    raise AssertionError("no tile found")


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.skip(reason="minutes on 2 CPU cores; same code path "
                                           "as fcn_resnet50")) if n in HEAVY else n
    for n in _bounded()])
def test_tiled_equals_whole_at_the_default_halo(name):
    spec = get_spec(name, C, K if name != "identity" else None)
    tile, halo = _geometry(spec)
    core = tile - 2 * halo
    rng = np.random.default_rng(3)
    image = rng.normal(size=(C, core + core // 2 + 3, core + 5)).astype(np.float32)
    net = _network(name)
    shrink = spec.check_tile(tile)
    if spec.valid:
        rule = spec.tile_rule
        h, w = image.shape[1:]
        sides = []
        for n in (h, w):
            side = rule.nearest_legal(n + 2 * halo)
            while side < n + 2 * halo:
                side = rule.nearest_legal(side + rule.output_stride)
            sides.append(side)
        big = 2 * max(sides)
        padded = np.pad(image, ((0, 0), (big, big), (big, big)), mode="reflect")
        canvas = padded[:, big - halo:big - halo + sides[0], big - halo:big - halo + sides[1]]
        with torch.inference_mode():
            out = net(torch.from_numpy(np.ascontiguousarray(canvas))[None])[0].numpy()
        whole = out[:, halo - shrink:halo - shrink + h, halo - shrink:halo - shrink + w]
    else:
        whole = whole_image_logits(net, image, pad=halo, mode="reflect",
                                   multiple=spec.tile_rule.output_stride)
    tiled = segment(image, model=net, tile=tile, halo=halo, returns="logits",
                    normalization="none")
    scale = max(float(np.abs(whole).max()), 1e-3)
    assert np.abs(tiled - whole).max() <= 1e-5 * max(scale, 1.0), (name, tile, halo)
