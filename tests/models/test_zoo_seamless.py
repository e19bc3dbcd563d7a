"""For every registered model whose receptive field is bounded, at its default tile and its
default halo: tiled output equals ONE PLAIN whole-image forward pass of the same network in
the raster's interior, and the pass over the raster mirror-padded by the pad mode
everywhere, under both ``--blend crop`` and ``--blend gaussian``.

The references here are computed from the architecture alone (the output stride and the
receptive radius), never from the halo the pipeline chose: a reference padded by the
pipeline's own halo would shift its pooling grid exactly as the tiles do and hide the error.
Wide VGG/U-Net nets are checked at reduced width: the geometry is the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from tilesegment import segment
from tilesegment.errors import GeometryError
from tilesegment.models import create_model, get_spec, list_models
from tilesegment.models.registry import get_entry

C, K = 2, 3
INTERIOR_TOL = 1e-4
HEAVY = {"fcn_resnet101"}  # a 2048-px tile of ResNet-101: minutes on two CPU cores
# torchvision's FCN-ResNet50 cannot be narrowed and runs ~20 s per megapixel here: it is
# checked at its default halo on the smallest tile that leaves a core of two strides (a
# same-padded model's seamless halo does not depend on the tile) and on small rasters,
# against the mirror-padded pass only (its interior would need a raster of 500+ px).
SMALL = {"fcn_resnet50"}
# Checked by their own tests (CI time: each would cost as much as its sibling here): the -bn
# FCNs are fcn* with a per-channel affine map after each conv (tests/models/
# test_fcn_bn_msc.py cuts a tile from a whole image); the MSc heads are shallower than the
# LargeFOV trunk (same test file); the ResNet U-Nets run through this file's pipeline check
# at a tile of two cores in tests/models/test_resnet_unet.py.
ELSEWHERE = {"fcn32s-bn", "fcn16s-bn", "fcn8s-bn", "deeplab-largefov-msc", "unet-resnet18",
             "unet-resnet34", "unet-resnet50"}

def _bounded() -> list[str]:
    return [n for n in list_models() if not get_entry(n).pretrained  # fixed bands: unet-tiny's
            and not get_spec(n, C, K if n != "identity" else None).global_context]


def _network(name: str) -> torch.nn.Module:
    """The registered network, or a narrow copy of the same geometry."""
    torch.manual_seed(1)
    if name.startswith("fcn") and name[3:] in ("32s", "16s", "8s"):
        from tilesegment.models.fcn import FCN

        net = FCN(name[3:], C, K, width=8, fc_channels=32)
        for p in net.parameters():  # give the zero-initialised scores and skips some weight
            torch.nn.init.normal_(p, 0.0, 0.1)
        return net.eval()
    if name.startswith("fcn") and name[3:] in ("32s-bn", "16s-bn", "8s-bn"):
        from tilesegment.models.fcn import FCN

        net = FCN(name[3:-3], C, K, width=8, fc_channels=32, batch_norm=True)
        for p in net.parameters():
            torch.nn.init.normal_(p, 0.0, 0.1)
        for m in net.modules():  # BN with statistics of its own: an affine map per channel
            if isinstance(m, torch.nn.BatchNorm2d):
                torch.nn.init.uniform_(m.weight, 0.5, 1.5)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
        return net.eval()
    if name == "deeplab-largefov":
        from tilesegment.models.deeplab import DeepLabV1

        return DeepLabV1(C, K, width=8, fc_channels=32).eval()
    if name == "deeplab-largefov-msc":
        from tilesegment.models.deeplab import DeepLabMSc

        return DeepLabMSc(C, K, width=8, fc_channels=32, msc_channels=8).eval()
    if name.startswith("unet-resnet"):
        from tilesegment.models.resnet_unet import ResNetUNet

        return ResNetUNet(name[5:], C, K, width=4).eval()
    if name in ("unet", "unet-small", "unet-valid"):
        from tilesegment.models.unet import UNet

        padding = "valid" if name == "unet-valid" else "same"
        return UNet(C, K, depth=4, width=4, padding=padding).eval()
    return create_model(name, C, K if name != "identity" else None, seed=1)


@contextlib.contextmanager
def _registered(name: str, net: torch.nn.Module) -> Iterator[str]:
    """``net`` registered, for the duration, under a new name with ``name``'s spec, so the
    pipeline knows its stride and receptive radius as it knows the real model's (a bare
    module is probed). The entry is removed afterwards: other tests see the real registry."""
    from tilesegment.models import registry

    original = registry.get_entry(name)
    alias = f"test-{name}-{id(net):x}"
    registry.register_model(registry.ModelEntry(
        alias, "test copy", lambda c, k: dataclasses.replace(original.spec(c, k), name=alias),
        lambda c, k, **options: net, default_classes=original.default_classes,
        trainable=False))
    try:
        yield alias
    finally:
        registry._REGISTRY.pop(alias, None)


def _reference_pad(spec) -> int:
    """How far the reference pass mirror-pads the raster: a multiple of the output stride
    (the raster's own pooling grid) that covers the receptive radius, one stride more than
    needed. Valid U-Nets: the residue modulo the stride that puts a core of a whole number of
    strides into a legal tile (their output side is never a multiple of the stride)."""
    rule = spec.tile_rule
    s = rule.output_stride
    if not spec.valid:
        return -(-spec.receptive_radius // s) * s + s
    tile = spec.default_tile
    shrink = spec.check_tile(tile)
    pad = next(p for p in range(shrink, shrink + s) if (tile - 2 * p) % s == 0)
    return pad + s


def _pass(net, image: np.ndarray, top: int, spec, mode: str = "reflect") -> np.ndarray:
    """One forward pass over ``image`` mirror-padded by ``top`` on each side (numpy's own
    padding), extended bottom/right to a size the model accepts; cropped to ``(K, H, W)``.
    ``top = 0`` for a same-padded model is the plain pass over the raster itself."""
    rule = spec.tile_rule
    _, h, w = image.shape
    shrink = spec.check_tile(spec.default_tile)
    sides = []
    for n in (h, w):
        side = rule.nearest_legal(n + 2 * top + shrink)
        while side < n + 2 * top + shrink:
            side = rule.nearest_legal(side + rule.output_stride)
        sides.append(side)
    big = 2 * max(sides)
    padded = np.pad(image, ((0, 0), (big, big), (big, big)), mode=mode)
    canvas = padded[:, big - top:big - top + sides[0], big - top:big - top + sides[1]]
    with torch.inference_mode():
        out = net(torch.from_numpy(np.ascontiguousarray(canvas))[None])[0].numpy()
    off = top - shrink
    return out[:, off:off + h, off:off + w]


def _lead(logits: np.ndarray) -> np.ndarray:
    """How far each pixel's top class leads the runner-up: a label may only differ from the
    reference where that lead is within the float tolerance (an exact tie, up to rounding)."""
    top2 = np.partition(logits, -2, axis=0)[-2:]
    return top2[1] - top2[0]


def _sizes(spec, tile: int, halo: int) -> list[tuple[int, int]]:
    """A raster whose sides are multiples of the stride and one whose sides are not, both
    with an interior (farther than the radius from every edge) that crosses tile seams."""
    s = spec.tile_rule.output_stride
    core = tile - 2 * halo
    if spec.name in SMALL:
        return [(core + s, core + 2 * s), (core + core // 2 + 3, core + 5)]
    reach = max(spec.receptive_radius, spec.check_tile(tile))
    side = -(-(2 * reach + core + core // 2) // s) * s
    return [(side, side), (side + s // 2 + 3, side + s + 5)]


def _geometry(name: str, spec) -> tuple[int, int]:
    """The default tile and halo; for the models in SMALL the default halo on the smallest
    tile that leaves a core of two output strides."""
    if name not in SMALL:
        return spec.default_tile, spec.default_halo(spec.default_tile)
    halo = spec.default_halo(spec.default_tile)
    return spec.smallest_tile(halo + spec.tile_rule.output_stride // 2), halo


def _cases():
    for name in _bounded():
        marks = []
        if name in ELSEWHERE:
            marks = [pytest.mark.skip(reason="checked by its own test file (CI time)")]
        elif name in HEAVY:
            marks = [pytest.mark.skip(reason="minutes on 2 CPU cores; same code path as "
                                      "fcn_resnet50")]
        elif name.startswith(("fcn", "deeplab")):
            marks = [pytest.mark.slow]
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", _cases())
def test_tiled_equals_one_whole_image_pass_at_the_default_tile_and_halo(name):
    spec = get_spec(name, C, K if name != "identity" else None)
    tile, halo = _geometry(name, spec)
    net = _network(name)
    with _registered(name, net) as model:
        rng = np.random.default_rng(3)
        for h, w in _sizes(spec, tile, halo):
            image = rng.normal(size=(C, h, w)).astype(np.float32)
            padded_ref = _pass(net, image, _reference_pad(spec), spec)
            assert np.abs(padded_ref).max() > 0.05, "a degenerate network proves nothing"
            plain = padded_ref if spec.valid else _pass(net, image, 0, spec)
            inner = max(spec.receptive_radius, spec.check_tile(tile)) + spec.tile_rule.output_stride
            if name in SMALL:  # no interior: the mirror-padded pass is the reference everywhere
                plain, inner = padded_ref, 0
            interior = (slice(None), slice(inner, h - inner), slice(inner, w - inner))
            for blend in ("crop", "gaussian"):
                tiled = segment(image, model=model, classes=spec.num_classes, tile=tile,
                                halo=halo, blend=blend, returns="logits", normalization="none")
                assert np.abs(tiled - padded_ref).max() <= INTERIOR_TOL, (name, blend, (h, w))
                assert np.abs(tiled[interior] - plain[interior]).max() <= INTERIOR_TOL
                differing = tiled[interior].argmax(0) != plain[interior].argmax(0)
                assert not (differing & (_lead(plain[interior]) > INTERIOR_TOL)).any(), (
                    name, blend, int(differing.sum()))


@pytest.mark.parametrize("name", ["unet-tiny", "unet-valid-tiny",
                                  pytest.param("deeplab-largefov", marks=pytest.mark.slow)])
def test_a_halo_off_the_stride_grid_breaks_it(name):
    """Negative control: the module passed as a plain torch module (so the pipeline knows
    nothing of its stride) with a halo half a stride off its grid differs from the pass."""
    spec = get_spec(name, C, K)
    tile = spec.default_tile
    s = spec.tile_rule.output_stride
    halo = spec.default_halo(tile) + s // 2
    net = _network(name)
    h, w = _sizes(spec, tile, halo)[0]
    image = np.random.default_rng(4).normal(size=(C, h, w)).astype(np.float32)
    whole = _pass(net, image, _reference_pad(spec), spec)
    tiled = segment(image, model=net, tile=tile, halo=halo, returns="logits",
                    normalization="none")
    inner = spec.receptive_radius + s
    interior = (slice(None), slice(inner, h - inner), slice(inner, w - inner))
    assert np.abs(tiled[interior] - whole[interior]).max() > 1e-2
    assert (tiled[interior].argmax(0) != whole[interior].argmax(0)).any()


@pytest.mark.parametrize("name,halo,good", [("unet-tiny", 52, "--halo 48 or --halo 56"),
                                            ("deeplab-largefov", 220, "--halo 216 or --halo 224"),
                                            ("fcn32s", 240, "--halo 224 or --halo 256"),
                                            ("unet-valid", 102, "--halo 94 or --halo 110")])
def test_registered_models_refuse_a_halo_off_their_grid(name, halo, good):
    image = np.zeros((C, 40, 40), np.float32)
    with pytest.raises(GeometryError, match=f"pooling grid.*{good}"):
        segment(image, model=name, classes=K, halo=halo)
