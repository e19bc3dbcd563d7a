"""The registered U-Nets on ResNet encoders (:mod:`tilesegment.models.resnet_unet`): specs
without torch (geometry from :mod:`tilesegment.models.resnet_unet_geometry`), lazy builders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tilesegment.grid import TileRule
from tilesegment.models.geometry import output_stride
from tilesegment.models.registry import ModelEntry, register_model
from tilesegment.models.resnet_unet_geometry import (
    DEFAULT_TILE,
    RESNETS,
    encoder_steps,
    resnet_unet_radius,
)
from tilesegment.models.spec import ModelSpec, imagenet_or_raster

if TYPE_CHECKING:
    from torch import nn

def resnet_unet_entry(arch: str) -> ModelEntry:
    """The entry of ``unet-{arch}``; builder options ``backbone_weights`` (a local
    torchvision ResNet state dict) and ``width`` (64; smaller only for fast tests)."""
    name = f"unet-{arch}"
    stride = output_stride(encoder_steps(arch)[-1])
    radius = resnet_unet_radius(arch)

    def spec(c: int, k: int) -> ModelSpec:
        return ModelSpec(name=name, in_channels=c, num_classes=k,
                         tile_rule=TileRule(multiple=stride, minimum=stride),
                         receptive_radius=radius, default_tile=DEFAULT_TILE[arch],
                         normalization=imagenet_or_raster(c))

    def build(c: int, k: int, backbone_weights: str | None = None,
              width: int = 64) -> nn.Module:
        from tilesegment.models.resnet_unet import build_resnet_unet

        return build_resnet_unet(arch, c, k, backbone_weights=backbone_weights, width=width)

    return ModelEntry(name, f"U-Net decoder on a torchvision {arch.capitalize()} encoder "
                      "(same-padded, output stride 32; smp Unet's layout)", spec, build,
                      kwargs={"encoder": arch})


for _arch in RESNETS:
    register_model(resnet_unet_entry(_arch))
