"""The registered DeepLab-LargeFOV and DeepLab-MSc-LargeFOV (:mod:`tilesegment.models.deeplab`):
specs and layer lists without torch, lazy builders."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tilesegment.grid import TileRule
from tilesegment.models.deeplab_geometry import MSC_CHANNELS, OUTPUT_STRIDE, deeplab_radius
from tilesegment.models.registry import register_model
from tilesegment.models.spec import ModelSpec, imagenet_or_raster

if TYPE_CHECKING:
    from torch import nn

DEEPLAB_RADIUS = 220
"""DeepLab-LargeFOV's receptive radius (analytic, confirmed by a probe in the tests; also
what :func:`~tilesegment.models.deeplab_geometry.deeplab_steps` gives)."""

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


def deeplab_msc_spec(c: int, k: int) -> ModelSpec:
    """As :func:`deeplab_spec`; the radius derived from the layer list with the MSc heads."""
    return ModelSpec(name="deeplab-largefov-msc", in_channels=c, num_classes=k,
                     tile_rule=TileRule(multiple=OUTPUT_STRIDE, minimum=OUTPUT_STRIDE),
                     receptive_radius=deeplab_radius(msc=True), default_tile=1024,
                     normalization=imagenet_or_raster(c))


@register_model("deeplab-largefov-msc", "DeepLab v1 MSc-LargeFOV: LargeFOV plus the paper's "
                "multi-scale heads (3×3/1×1/1×1 on input and pool1-4, summed with fc8)",
                spec=deeplab_msc_spec, default_classes=21)
def build_deeplab_largefov_msc(c: int, k: int, backbone_weights: str | None = None,
                               width: int = 64, fc_channels: int = 1024,
                               msc_channels: int = MSC_CHANNELS) -> nn.Module:
    """:func:`tilesegment.models.deeplab.build_deeplab` with ``msc=True`` (imports torch);
    VGG16 weights initialise the body and fc6/fc7, the MSc heads start random."""
    from tilesegment.models.deeplab import build_deeplab

    return build_deeplab(c, k, backbone_weights, width=width, fc_channels=fc_channels,
                         msc=True, msc_channels=msc_channels)
