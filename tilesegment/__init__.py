"""tilesegment: out-of-core overlap-tile semantic segmentation of huge rasters and slides.

``segment(source, output, model=...)`` runs the whole pipeline (``segment_many(sources,
output_dir)`` over many inputs); ``open_raster(path)`` opens an input lazily. Heavy
dependencies (torch, rasterio, dask) load on first use, not here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "evaluate", "list_models", "open_raster", "segment",
           "segment_many"]

if TYPE_CHECKING:
    from tilesegment.evaluation import evaluate
    from tilesegment.many import segment_many
    from tilesegment.models import create_model, list_models
    from tilesegment.pipeline import segment
    from tilesegment.read import open_raster

_LAZY = {
    "segment": "tilesegment.pipeline",
    "segment_many": "tilesegment.many",
    "evaluate": "tilesegment.evaluation",
    "open_raster": "tilesegment.read",
    "create_model": "tilesegment.models",
    "list_models": "tilesegment.models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tilesegment' has no attribute {name!r}")
