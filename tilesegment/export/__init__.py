"""After a run: the mask as polygons (GeoPackage, GeoJSON, FlatGeobuf) and QuPath GeoJSON.

``export_polygons(mask, polygons=..., qupath=...)`` (:mod:`.polygons`) reads a written
mask block by block; shapely, pyogrio and rasterio load on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_polygons"]


def __getattr__(name: str) -> Any:
    if name == "export_polygons":
        from tilesegment.export.polygons import export_polygons

        return export_polygons
    raise AttributeError(name)
