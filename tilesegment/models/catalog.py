"""The built-in models: their specs (no torch) and lazy builders.

Receptive radii are computed (U-Net arithmetic) or were measured once by probing
(:mod:`tilesegment.models.probe`) and are checked against a fresh probe by the tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tilesegment.errors import ModelError
from tilesegment.grid import TileRule
from tilesegment.models.registry import ModelEntry, register_model
from tilesegment.models.spec import ModelSpec, Normalization

if TYPE_CHECKING:
    from torch import nn

IMAGENET = Normalization("fixed", mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
"""ImageNet statistics in 8-bit units, for backbones pretrained on ImageNet (3 bands)."""


def imagenet_or_raster(c: int) -> Normalization:
    """ImageNet statistics for 3-band input; whole-raster statistics otherwise."""
    return IMAGENET if c == 3 else Normalization("raster")


def _unet_entry(name: str, summary: str, depth: int, width: int, padding: str,
                default_tile: int) -> ModelEntry:
    from tilesegment.models.unet_geometry import unet_receptive_radius

    def spec(c: int, k: int) -> ModelSpec:
        rule = (TileRule(multiple=2**depth, minimum=2**depth) if padding == "same"
                else TileRule(valid_depth=depth, convs_per_level=2))
        return ModelSpec(name=name, in_channels=c, num_classes=k, tile_rule=rule,
                         receptive_radius=unet_receptive_radius(depth),
                         default_tile=default_tile, normalization=Normalization("raster"))

    def build(c: int, k: int) -> nn.Module:
        from tilesegment.models.unet import UNet

        return UNet(c, k, depth=depth, width=width, padding=padding)

    return ModelEntry(name, summary, spec, build,
                      kwargs={"depth": depth, "width": width, "padding": padding})


def _identity_entry() -> ModelEntry:
    def spec(c: int, k: int) -> ModelSpec:
        k = k or c
        if k != c:
            raise ModelError(f"model 'identity' returns its {c} input bands as logits; "
                             f"it cannot give {k} classes")
        return ModelSpec(name="identity", in_channels=c, num_classes=c,
                         tile_rule=TileRule(), receptive_radius=0, default_tile=512,
                         normalization=Normalization("none"))

    def build(c: int, k: int) -> nn.Module:
        from torch import nn

        return nn.Identity()

    return ModelEntry("identity", "diagnostic: returns the input bands as logits "
                      "(pipeline-only tests and benchmarks)", spec, build, default_classes=0,
                      trainable=False)


DEEPLAB_RADIUS = 220
"""DeepLab-LargeFOV's receptive radius (analytic, confirmed by a probe in the tests)."""


def _deeplab_entry() -> ModelEntry:
    def spec(c: int, k: int) -> ModelSpec:
        return ModelSpec(name="deeplab-largefov", in_channels=c, num_classes=k,
                         tile_rule=TileRule(multiple=8, minimum=8),
                         receptive_radius=DEEPLAB_RADIUS, default_tile=1024,
                         normalization=imagenet_or_raster(c))

    def build(c: int, k: int, backbone_weights: str | None = None) -> nn.Module:
        from tilesegment.models.deeplab import build_deeplab

        return build_deeplab(c, k, backbone_weights)

    return ModelEntry("deeplab-largefov", "DeepLab v1 LargeFOV (Chen et al. 2015): VGG16, "
                      "atrous convolution, output stride 8; pair with --crf", spec, build,
                      default_classes=21)


FCN_RADIUS = {"32s": 233, "16s": 241, "8s": 245}
"""FCN receptive radii over all 32 pooling phases (analytic; the tests probe them)."""


def _fcn_entry(variant: str) -> ModelEntry:
    name = f"fcn{variant}"

    def spec(c: int, k: int) -> ModelSpec:
        return ModelSpec(name=name, in_channels=c, num_classes=k,
                         tile_rule=TileRule(multiple=32, minimum=32),
                         receptive_radius=FCN_RADIUS[variant], default_tile=1024,
                         normalization=imagenet_or_raster(c))

    def build(c: int, k: int, backbone_weights: str | None = None) -> nn.Module:
        from tilesegment.models.fcn import build_fcn

        return build_fcn(variant, c, k, backbone_weights=backbone_weights)

    skips = {"32s": "no skips", "16s": "skip from pool4", "8s": "skips from pool4 and pool3"}
    return ModelEntry(name, f"FCN-{variant} (Long et al. 2015) on VGG16, {skips[variant]}; "
                      "fc6/fc7 as convolutions, bilinear-initialised upsampling", spec, build,
                      default_classes=21)


for _entry in (
    _identity_entry(),
    _unet_entry("unet-tiny", "same-padded U-Net, depth 3, 8 channels (fast on a CPU)",
                3, 8, "same", 512),
    _unet_entry("unet-small", "same-padded U-Net, depth 4, 16 channels", 4, 16, "same", 512),
    _unet_entry("unet", "same-padded U-Net, depth 4, 64 channels (the paper's widths)",
                4, 64, "same", 512),
    _unet_entry("unet-valid-tiny", "valid-convolution U-Net, depth 3, 8 channels",
                3, 8, "valid", 540),
    _unet_entry("unet-valid", "the paper's U-Net: unpadded convolutions, depth 4, "
                "64 channels, 572→388", 4, 64, "valid", 572),
    _deeplab_entry(),
    _fcn_entry("32s"),
    _fcn_entry("16s"),
    _fcn_entry("8s"),
):
    register_model(_entry)


def _torchvision_entries() -> None:
    from tilesegment.models.tv import tv_entries  # torch-free: specs and lazy builders

    for entry in tv_entries():
        register_model(entry)


_torchvision_entries()


