"""The diagnostic ``identity`` model: returns its input bands as logits. No torch at import."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tilesegment.errors import ModelError
from tilesegment.grid import TileRule
from tilesegment.models.registry import register_model
from tilesegment.models.spec import ModelSpec, Normalization

if TYPE_CHECKING:
    from torch import nn


def identity_spec(c: int, k: int) -> ModelSpec:
    """``c`` bands in, the same ``c`` bands out as logits (``k`` must be ``c`` or 0)."""
    k = k or c
    if k != c:
        raise ModelError(f"model 'identity' returns its {c} input bands as logits; "
                         f"it cannot give {k} classes")
    return ModelSpec(name="identity", in_channels=c, num_classes=c,
                     tile_rule=TileRule(), receptive_radius=0, default_tile=512,
                     normalization=Normalization("none"))


@register_model("identity", "diagnostic: returns the input bands as logits "
                "(pipeline-only tests and benchmarks)", spec=identity_spec, default_classes=0,
                trainable=False)
def build_identity(c: int, k: int) -> nn.Module:
    """``torch.nn.Identity``: ``float32[N, C, T, T]`` in and out."""
    from torch import nn

    return nn.Identity()
