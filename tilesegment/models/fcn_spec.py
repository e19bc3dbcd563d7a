"""The registered FCN-32s/16s/8s (:mod:`tilesegment.models.fcn`): specs without torch, lazy
builders."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tilesegment.grid import TileRule
from tilesegment.models.registry import ModelEntry, register_model
from tilesegment.models.spec import ModelSpec, imagenet_or_raster

if TYPE_CHECKING:
    from torch import nn

FCN_RADIUS = {"32s": 233, "16s": 241, "8s": 245}
"""FCN receptive radii over all 32 pooling phases (analytic; the tests probe them)."""


def fcn_entry(variant: str, batch_norm: bool = False) -> ModelEntry:
    """The entry of FCN-``variant`` (``32s``, ``16s`` or ``8s``); ``batch_norm``: on
    VGG16-BN (``fcn{variant}-bn``: BN changes no geometry, so the radius is the same)."""
    name = f"fcn{variant}" + ("-bn" if batch_norm else "")

    def spec(c: int, k: int) -> ModelSpec:
        return ModelSpec(name=name, in_channels=c, num_classes=k,
                         tile_rule=TileRule(multiple=32, minimum=32),
                         receptive_radius=FCN_RADIUS[variant], default_tile=1024,
                         normalization=imagenet_or_raster(c))

    def build(c: int, k: int, backbone_weights: str | None = None) -> nn.Module:
        from tilesegment.models.fcn import build_fcn

        return build_fcn(variant, c, k, backbone_weights=backbone_weights,
                         batch_norm=batch_norm)

    skips = {"32s": "no skips", "16s": "skip from pool4", "8s": "skips from pool4 and pool3"}
    body = "VGG16-BN (torchvision vgg16_bn)" if batch_norm else "VGG16"
    return ModelEntry(name, f"FCN-{variant} (Long et al. 2015) on {body}, {skips[variant]}; "
                      "fc6/fc7 as convolutions, bilinear-initialised upsampling", spec, build,
                      default_classes=21)


for _bn in (False, True):
    for _variant in FCN_RADIUS:
        register_model(fcn_entry(_variant, batch_norm=_bn))
