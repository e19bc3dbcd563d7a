"""Training: fit a zoo architecture to labelled rasters with the inference splitter.

``train(images, truths, model=..., output=...)`` (``tilesegment.train.api``) writes the best
checkpoint as ``.safetensors`` + model card. torch is imported on first use, not here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["TrainSummary", "train"]

if TYPE_CHECKING:
    from tilesegment.train.api import TrainSummary, train


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tilesegment.train import api

        return getattr(api, name)
    raise AttributeError(f"module 'tilesegment.train' has no attribute {name!r}")
