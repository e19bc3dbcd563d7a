"""The registered DeepLab-LargeFOV (:mod:`tilesegment.models.deeplab`): spec without torch,
lazy builder."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tilesegment.grid import TileRule
from tilesegment.models.registry import register_model
from tilesegment.models.spec import ModelSpec, imagenet_or_raster

if TYPE_CHECKING:
    from torch import nn

DEEPLAB_RADIUS = 220
"""DeepLab-LargeFOV's receptive radius (analytic, confirmed by a probe in the tests)."""


def deeplab_spec(c: int, k: int) -> ModelSpec:
    """Tiles of any multiple of 8 (its output stride); ImageNet statistics for 3 bands."""
    return ModelSpec(name="deeplab-largefov", in_channels=c, num_classes=k,
                     tile_rule=TileRule(multiple=8, minimum=8),
                     receptive_radius=DEEPLAB_RADIUS, default_tile=1024,
                     normalization=imagenet_or_raster(c))


@register_model("deeplab-largefov", "DeepLab v1 LargeFOV (Chen et al. 2015): VGG16, "
                "atrous convolution, output stride 8; pair with --crf", spec=deeplab_spec,
                default_classes=21)
def build_deeplab_largefov(c: int, k: int, backbone_weights: str | None = None,
                           width: int = 64, fc_channels: int = 1024) -> nn.Module:
    """:func:`tilesegment.models.deeplab.build_deeplab` (imports torch). ``width`` and
    ``fc_channels`` narrow the network (the paper's 64 and 1024 by default) with the same
    geometry; a checkpoint card records them in its ``options``."""
    from tilesegment.models.deeplab import build_deeplab

    return build_deeplab(c, k, backbone_weights, width=width, fc_channels=fc_channels)
