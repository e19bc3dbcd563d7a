"""The registered U-Nets (:mod:`tilesegment.models.unet`): specs without torch, lazy builders.

Receptive radii come from the U-Net arithmetic of :mod:`tilesegment.models.unet_geometry`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tilesegment.grid import TileRule
from tilesegment.models.registry import ModelEntry, register_model
from tilesegment.models.spec import ModelSpec, Normalization
from tilesegment.models.unet_geometry import unet_receptive_radius

if TYPE_CHECKING:
    from torch import nn


def unet_entry(name: str, summary: str, depth: int, width: int, padding: str,
               default_tile: int) -> ModelEntry:
    """The entry of a U-Net of ``depth`` poolings and ``width`` top-level channels."""

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


for _entry in (
    unet_entry("unet-tiny", "same-padded U-Net, depth 3, 8 channels (fast on a CPU)",
               3, 8, "same", 512),
    unet_entry("unet-small", "same-padded U-Net, depth 4, 16 channels", 4, 16, "same", 512),
    unet_entry("unet", "same-padded U-Net, depth 4, 64 channels (the paper's widths)",
               4, 64, "same", 512),
    unet_entry("unet-valid-tiny", "valid-convolution U-Net, depth 3, 8 channels",
               3, 8, "valid", 540),
    unet_entry("unet-valid", "the paper's U-Net: unpadded convolutions, depth 4, "
               "64 channels, 572→388", 4, 64, "valid", 572),
):
    register_model(_entry)
