"""``export_polygons``: a written mask as polygons — a GIS file and/or QuPath GeoJSON.

One polygon per connected region (4-connectivity) per class, holes kept, traced out of
core (:mod:`tilesegment.export.regions`) and streamed to the files (:mod:`.sinks`).
Fields: ``class_id``, ``class_name``, ``area`` with its ``area_unit`` (CRS units² for a
georeferenced mask, µm² for a slide with a pixel size, else px²; pixel count × pixel area,
so exact) and ``mean_prob`` (the mean probability of the region's class, when the output
holds probabilities).

Coordinates: the raster's CRS for a georeferenced mask; for slides and plain arrays mask
pixels (x = column, y = row, origin at the top-left corner), or µm with ``physical``.
QuPath output is always in level-0 pixels of the run's source, whatever ``--level`` or
``--mpp`` the mask was made at (the scale is the ratio of the mask's pixel size to level
0's, or of the sizes when no pixel size is known).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tilesegment.errors import InputError, UnsafeOutputError

AREA_UNITS = {"metre": "m²", "meter": "m²", "foot": "ft²", "US survey foot": "ftUS²",
              "degree": "degree²"}


@dataclass(frozen=True)
class Grid:
    """How mask pixel coordinates map to output coordinates and areas."""

    transform: tuple[float, float, float, float, float, float]  # rasterio Affine order
    crs_wkt: str | None
    pixel_area: float
    area_unit: str


@dataclass
class ExportSummary:
    """What an export wrote: the paths, the regions found and kept, the seconds it took."""

    outputs: list[Path]
    regions: int
    written: int
    area_unit: str
    seconds: float


def _mask_source(mask: str | Path) -> tuple[dict[str, Any] | None, Any, Any]:
    """The output's metadata (None for a plain raster), its mask and probability rasters."""
    from tilesegment.read import open_raster
    from tilesegment.write.verify import check_output, read_output_meta

    try:
        read_output_meta(mask)
    except InputError:  # not a tilesegment output: any one-band raster of class ids
        raster = open_raster(mask)
        if raster.bands != 1:
            raise InputError(f"{mask}: a mask has one band, not {raster.bands}") from None
        return None, raster, None
    meta = check_output(mask)
    paths = meta.get("layer_paths") or {}
    prob = paths.get("probabilities")
    return meta, open_raster(paths.get("mask", mask)), open_raster(prob) if prob else None


def _grid(meta: dict | None, raster, physical: bool) -> Grid:
    georef = raster.georef
    transform = (meta or {}).get("transform") or georef.transform
    crs = (meta or {}).get("crs_wkt") or georef.crs_wkt
    pixel_size = (meta or {}).get("pixel_size") or georef.pixel_size
    unit = (meta or {}).get("unit") or georef.unit
    if transform is not None:
        a, b, _, d, e, _ = transform
        return Grid(tuple(transform), crs, abs(a * e - b * d), _crs_area_unit(crs))
    if pixel_size is not None and unit:
        py, px = pixel_size
        shown = "µm" if unit == "um" else unit
        scale = (px, 0.0, 0.0, 0.0, py, 0.0) if physical else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        return Grid(scale, None, px * py, f"{shown}²")
    if physical:
        raise InputError(f"{raster.source}: --physical needs a pixel size, and the mask "
                         "records none")
    return Grid((1.0, 0.0, 0.0, 0.0, 1.0, 0.0), None, 1.0, "px²")


def _crs_area_unit(crs_wkt: str | None) -> str:
    if not crs_wkt:
        return "unit²"
    from rasterio.crs import CRS

    try:
        units = CRS.from_wkt(crs_wkt).linear_units
    except Exception:
        return "unit²"
    return AREA_UNITS.get(units, f"{units}²")


def level0_scale(meta: dict | None, raster) -> tuple[float, float]:
    """``(sy, sx)``: level-0 pixels of the run's source per mask pixel.

    1 for a mask made at level 0 without ``--mpp``; otherwise the ratio of the mask's
    pixel size to level 0's (the source named in the provenance is opened for it), or of
    level 0's size to the mask's when the source records no pixel size.
    """
    from tilesegment.read import open_raster

    source = ((meta or {}).get("provenance") or {}).get("input") or {}
    if not source.get("level") and source.get("mpp") is None:
        return 1.0, 1.0
    path = source.get("path")
    if not path or not Path(path).exists():
        raise InputError(
            f"QuPath coordinates are level-0 pixels, but the mask was made at level "
            f"{source.get('level')} / mpp {source.get('mpp')} of {path}, which is not "
            "there to say how level 0 relates to it")
    level0 = open_raster(path).levels[0]
    mine = (meta or {}).get("pixel_size") or raster.georef.pixel_size
    if mine and level0.pixel_size:
        return (float(mine[0]) / level0.pixel_size[0], float(mine[1]) / level0.pixel_size[1])
    return level0.shape[0] / raster.height, level0.shape[1] / raster.width


def _affine(geometry, t: tuple[float, ...]):
    import shapely

    a, b, c, d, e, f = t
    if (a, b, c, d, e, f) == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0):
        return geometry
    return shapely.transform(
        geometry, lambda xy: np.column_stack([a * xy[:, 0] + b * xy[:, 1] + c,
                                              d * xy[:, 0] + e * xy[:, 1] + f]))


def _class_ids(classes: tuple[int | str, ...], names: list[str]) -> frozenset[int]:
    """Class ids from ids or names (``"0"`` is an id unless a class is named so)."""
    ids = set()
    for c in classes:
        if isinstance(c, str) and c in names:
            ids.add(names.index(c))
        elif isinstance(c, int) or str(c).isdigit():
            ids.add(int(c))
        else:
            raise InputError(f"no class named {c!r} (classes: {', '.join(names) or 'none'})")
    return frozenset(ids)


def check_targets(targets: list[Path], inputs: list[Path], overwrite: bool) -> None:
    """The output-file rules: never an input, never one path twice, never an existing
    file without ``overwrite`` (and never a directory)."""
    from tilesegment.write import guard

    if len({t.absolute() for t in targets}) < len(targets):
        raise UnsafeOutputError(f"{targets[0]}: the polygon and QuPath outputs must differ")
    for target in targets:
        guard.check_inputs(target, inputs)
        guard.check_replaceable_file(target, overwrite=overwrite)


def export_polygons(
    mask: str | Path,
    *,
    polygons: str | Path | None = None,
    qupath: str | Path | None = None,
    qupath_objects: str = "annotation",
    block: int = 2048,
    min_area: float | None = None,
    simplify: float | None = None,
    physical: bool = False,
    skip_classes: tuple[int | str, ...] = (),
    overwrite: bool = False,
    protect: tuple[str | Path, ...] = (),
) -> ExportSummary:
    """Write the regions of ``mask`` (a tilesegment output or any one-band raster of class
    ids) to ``polygons`` (``.gpkg``, ``.geojson`` or ``.fgb``) and/or ``qupath``.

    ``block``: pixels per side read at a time (memory ∝ ``block``² plus the regions
    crossing the block edges still open; the result does not depend on it). ``min_area``:
    drop regions smaller than this, in the ``area`` field's unit. ``simplify``: a
    tolerance in mask pixels for shapely's ``simplify(preserve_topology=True)``, per
    polygon: a polygon stays valid, but the edge it shares with a neighbour may be
    simplified differently on each side (gaps or overlaps up to the tolerance).
    ``skip_classes``: class ids or names left out (a background class: its region spans
    the raster, and memory holds an unfinished region whole).
    ``qupath_objects``: ``"annotation"`` or ``"detection"``; a class named
    ``background`` is not written to the QuPath file (its objects are what is there).
    Each file is written hidden and renamed into place when complete; an existing one is
    replaced only with ``overwrite``; neither may be the mask or an input of its run (or
    ``protect``).
    """
    import shapely

    from tilesegment.export.regions import trace_regions
    from tilesegment.export.sinks import QuPathSink, driver_for, gis_sink
    from tilesegment.models.spec import PALETTE

    started = time.perf_counter()
    if polygons is None and qupath is None:
        raise InputError("nothing to write: give a polygon output and/or a QuPath output")
    if block < 1:
        raise InputError(f"block must be a positive number of pixels, not {block}")
    targets = [Path(p) for p in (polygons, qupath) if p is not None]
    if polygons is not None:
        driver_for(Path(polygons))
    meta, raster, prob = _mask_source(mask)
    inputs = [Path(mask), *(Path(p) for p in ((meta or {}).get("layer_paths") or {}).values()),
              *(Path(p) for p in protect)]
    if (meta or {}).get("path"):
        inputs.append(Path(meta["path"]))
    source = (((meta or {}).get("provenance") or {}).get("input") or {}).get("path")
    if source:
        inputs.append(Path(source))
    check_targets(targets, inputs, overwrite)
    grid = _grid(meta, raster, physical)
    nodata = None if raster.nodata is None or not math.isfinite(raster.nodata) else int(
        raster.nodata)
    names = list((meta or {}).get("class_names") or [])
    colors = [tuple(c) for c in (meta or {}).get("class_colors") or []]

    def name_of(c: int) -> str:
        return names[c] if c < len(names) else f"class {c}"

    def color_of(c: int) -> tuple[int, int, int]:
        return colors[c] if c < len(colors) else PALETTE[c % len(PALETTE)]

    skip = _class_ids(skip_classes, names)
    # QuPath objects are what is on the slide: a class named background is not one
    not_objects = {c for c, n in enumerate(names) if n.strip().lower() == "background"}
    if polygons is None:
        skip = skip | not_objects
    scale = level0_scale(meta, raster) if qupath is not None else (1.0, 1.0)
    fields: dict[str, Any] = {"class_id": np.int32, "class_name": str, "area": np.float64,
                              "area_unit": str}
    if prob is not None:
        fields["mean_prob"] = np.float64
    sinks = []
    try:
        if polygons is not None:
            sinks.append(("gis", gis_sink(Path(polygons), fields, grid.crs_wkt)))
        if qupath is not None:
            sinks.append(("qupath", QuPathSink(Path(qupath), qupath_objects)))
        found = written = 0
        for region in trace_regions(raster, block, nodata=nodata, probabilities=prob,
                                     skip=skip):
            found += 1
            area = region.pixels * grid.pixel_area
            if min_area is not None and area < min_area:
                continue
            written += 1
            geom = region.geometry
            if simplify:
                geom = shapely.simplify(geom, simplify, preserve_topology=True)
            c = region.class_id
            mean = region.mean_probability
            props = {"class_id": c, "class_name": name_of(c), "area": area,
                     "area_unit": grid.area_unit, "mean_prob": np.nan if mean is None else mean}
            for kind, sink in sinks:
                if kind == "gis":
                    sink.add(_affine(geom, grid.transform), props)
                elif c not in not_objects:
                    measurements = {f"Area {grid.area_unit}": area}
                    if mean is not None:
                        measurements["Mean probability"] = mean
                    sink.add(_affine(geom, (scale[1], 0.0, 0.0, 0.0, scale[0], 0.0)),
                             {"class_name": name_of(c), "color": color_of(c),
                              "measurements": measurements})
        for _, sink in sinks:
            sink.publish(overwrite)
    except BaseException:
        for _, sink in sinks:
            sink.abort()
        raise
    return ExportSummary(targets, found, written, grid.area_unit,
                         time.perf_counter() - started)
