"""Specs for user-supplied ``torch.nn.Module`` objects, probed once on a zero tile."""

from __future__ import annotations

import torch
from torch import nn

from tilesegment.errors import ModelError
from tilesegment.grid import TileRule
from tilesegment.models.spec import ModelSpec, Normalization


def spec_for_module(module: nn.Module, in_channels: int, tile: int | None) -> ModelSpec:
    """Probe ``module`` with one ``float32[1, in_channels, tile, tile]`` zero tile to learn its
    class count and shrink. Its receptive field is unknown: the default halo is a quarter of
    the tile (or the shrink, if larger); pass ``halo`` for a model you know."""
    tile = tile or 256
    if not isinstance(module, nn.Module):
        raise ModelError(f"model must be a registered name or a torch.nn.Module, "
                         f"not {type(module).__name__}")
    try:
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.inference_mode():
            y = module.eval()(torch.zeros(1, in_channels, tile, tile, device=device))
    except Exception as exc:
        raise ModelError(f"the model fails on a {in_channels}-band {tile}×{tile} tile: "
                         f"{exc}".splitlines()[0]) from None
    if not isinstance(y, torch.Tensor) or y.ndim != 4 or y.shape[-1] != y.shape[-2]:
        raise ModelError("the model must return one float32[N, K, H', W'] tensor")
    shrink2 = tile - int(y.shape[-1])
    if shrink2 < 0 or shrink2 % 2:
        raise ModelError(f"the model turns a {tile} tile into {y.shape[-1]}: "
                         "output must be the input less the same margin on each side")
    shrink = shrink2 // 2
    rule = TileRule(minimum=2 * shrink + 1, margin=shrink)
    return ModelSpec(name=type(module).__name__, in_channels=in_channels,
                     num_classes=int(y.shape[1]), tile_rule=rule,
                     receptive_radius=max(shrink, tile // 4), default_tile=tile,
                     normalization=Normalization("none"))
