"""The one path by which models reach the registry.

Built-in models register themselves beside their code when their modules are imported
here (:mod:`~tilesegment.models.identity`, :mod:`~tilesegment.models.unet_spec`,
:mod:`~tilesegment.models.deeplab_spec`, :mod:`~tilesegment.models.fcn_spec`,
:mod:`~tilesegment.models.tv`, :mod:`~tilesegment.models.resnet_unet_spec`, and the shipped
trained models of :mod:`~tilesegment.models.pretrained`; all torch-free at import). Plugin
packages (entry points
``tilesegment.models``, :mod:`~tilesegment.models.plugins`) load through the hook installed
here into the registry, on the first listing or on a lookup of an unknown name.

``tilesegment.models`` imports this module, so the catalogue is complete wherever the
registry is used. Imports go one way only: model modules → registry, catalogue → model
modules and plugin loader; the registry imports none of them.
"""

from __future__ import annotations

from tilesegment.models import (
    deeplab_spec,
    fcn_spec,
    identity,
    pretrained,
    registry,
    resnet_unet_spec,
    smp_models,
    tv,
    unet_spec,
)
from tilesegment.models.deeplab_spec import DEEPLAB_RADIUS
from tilesegment.models.fcn_spec import FCN_RADIUS
from tilesegment.models.plugins import load_plugins
from tilesegment.models.spec import IMAGENET, imagenet_or_raster

BUILTIN_MODULES = (identity, unet_spec, deeplab_spec, fcn_spec, tv, pretrained,
                   resnet_unet_spec, smp_models)
"""The modules whose import registered the built-in models."""

__all__ = ["BUILTIN_MODULES", "DEEPLAB_RADIUS", "FCN_RADIUS", "IMAGENET", "imagenet_or_raster",
           "load_models"]


def load_models() -> None:
    """Register what is not registered yet: the plugins' models (once per process; a broken
    plugin is a warning here, resolving its name is an error)."""
    load_plugins(strict=False)


registry.set_loader(load_models)
