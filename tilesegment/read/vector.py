"""Truth polygons (GeoPackage, GeoJSON, FlatGeobuf, Shapefile...) as a raster on a mask's
grid, rasterised one window at a time.

:class:`VectorTruth` is a :class:`~tilesegment.read.base.Raster` of class ids ``int32
(1, H, W)`` on the prediction's grid: ``read(window)`` reads only the features whose
bounding box meets the window (pyogrio's ``bbox`` filter) and burns them with
``rasterio.features.rasterize`` (a pixel takes a polygon's value when its centre lies
inside; where polygons overlap the later feature in the file wins). Pixels no polygon
covers are :data:`UNCOVERED`, the raster's nodata: not counted.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from tilesegment.errors import InputError
from tilesegment.read.base import LevelInfo, Raster, Window, check_window

VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".fgb", ".shp", ".gml", ".kml",
                   ".sqlite")
"""Truth files taken as polygons (with ``--class-field``)."""

UNCOVERED = -1
"""Value (and nodata) of the pixels no truth polygon covers."""


def is_vector(path: str | Path) -> bool:
    """Whether ``path`` names a vector file by its suffix."""
    return Path(path).suffix.lower() in VECTOR_SUFFIXES


class VectorTruth(Raster):
    """The polygons of ``path`` rasterised onto the grid of ``grid`` (the prediction).

    ``class_field``: the attribute holding each polygon's class, either integer ids or
    names matched against ``class_names`` (the prediction's). Georeferenced grids need the
    file in the same CRS (an alias with ``allow_crs_alias``); on a grid without CRS (a
    slide) the coordinates are the mask's pixels (x = column, y = row from the top-left
    corner) and the file's CRS, if any, is not looked at.
    """

    def __init__(self, path: str | Path, grid: Raster, class_field: str,
                 class_names: list[str] | None = None, allow_crs_alias: bool = False) -> None:
        import pyogrio

        self.path = Path(path)
        self.source = str(self.path)
        try:
            info = pyogrio.read_info(self.source)
        except Exception as exc:
            raise InputError(f"{path}: cannot read it as polygons ({exc})") from exc
        fields = list(info["fields"])
        if class_field not in fields:
            raise InputError(f"{path}: no field {class_field!r} (fields: "
                             f"{', '.join(fields) or 'none'})")
        self.field = class_field
        self.lookup = self._lookup(class_names or [])
        self.transform = grid.georef.transform
        if self.transform is not None:
            self._check_crs(info.get("crs"), grid, allow_crs_alias)
        self.shape = (1, grid.height, grid.width)
        self.dtype = np.dtype(np.int32)
        self.nodata = float(UNCOVERED)
        self.georef = grid.georef
        self.block_shape = None
        self.levels = (LevelInfo((grid.height, grid.width), grid.georef.pixel_size),)
        self.level = 0
        self.kind = "vector"
        self._local = threading.local()

    def _lookup(self, class_names: list[str]) -> dict[str, int] | None:
        """Class name → id when the field holds names; None when it holds integers."""
        import pyogrio.raw

        values = pyogrio.raw.read(self.source, read_geometry=False,
                                  columns=[self.field])[3][0]
        if values.dtype.kind in "iub":
            return None
        if values.dtype.kind == "f":
            finite = values[np.isfinite(values)]
            if not np.array_equal(finite, np.round(finite)):
                raise InputError(f"{self.path}: field {self.field!r} holds non-integer "
                                 "numbers, not class ids")
            return None
        names = {str(v) for v in values if v is not None}
        unknown = sorted(names - set(class_names))
        if unknown:
            known = ", ".join(class_names) or "none: the prediction records no class names"
            raise InputError(f"{self.path}: field {self.field!r} names classes the "
                             f"prediction does not have: {', '.join(unknown[:5])} "
                             f"(its classes: {known})")
        return {name: class_names.index(name) for name in names}

    def _check_crs(self, crs: str | None, grid: Raster, allow_alias: bool) -> None:
        from rasterio.crs import CRS

        from tilesegment.read.crs import compare_crs, crs_name

        wkt = CRS.from_user_input(crs).to_wkt() if crs else None
        relation = compare_crs(grid.georef.crs_wkt, wkt)
        if relation == "missing":
            raise InputError(f"{self.path}: only one of prediction and truth polygons has "
                             "a CRS")
        if relation == "different" or (relation == "alias" and not allow_alias):
            hint = " (pass --allow-crs-alias if they are the same)" if relation == "alias" \
                else ""
            raise InputError(f"CRS differ: prediction {crs_name(grid.georef.crs_wkt)} vs "
                             f"truth polygons {crs_name(wkt)}{hint}")

    def _window_transform(self, r0: int, c0: int):
        from affine import Affine

        if self.transform is None:
            return Affine.translation(c0, r0)
        return Affine(*self.transform) @ Affine.translation(c0, r0)

    def read(self, window: Window) -> np.ndarray:
        import pyogrio.raw
        import shapely
        from rasterio import features

        r0, r1, c0, c1 = check_window(self, window)
        out = np.full((1, r1 - r0, c1 - c0), UNCOVERED, np.int32)
        if r1 == r0 or c1 == c0:
            return out
        t = self._window_transform(r0, c0)
        corners = [t @ (x, y) for x in (0, c1 - c0) for y in (0, r1 - r0)]
        xs, ys = zip(*corners, strict=True)
        bbox = (min(xs), min(ys), max(xs), max(ys))
        _, _, wkb, data = pyogrio.raw.read(self.source, bbox=bbox, columns=[self.field])[:4]
        if wkb is None or not len(wkb):
            return out
        shapes = []
        for geom, value in zip(shapely.from_wkb(wkb), data[0], strict=True):
            if geom is None or value is None or (isinstance(value, float)
                                                 and not np.isfinite(value)):
                continue
            shapes.append((geom, self.lookup[str(value)] if self.lookup is not None
                           else int(value)))
        if shapes:
            features.rasterize(shapes, out=out[0], transform=t)
        return out
