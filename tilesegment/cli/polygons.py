"""``tilesegment polygons``: a written mask as polygons (GIS file, QuPath GeoJSON); the
same options on ``run`` export right after the mask is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

QUPATH_OBJECTS = {"annotations": "annotation", "detections": "detection"}

SHARED = (
    click.option("--qupath", type=click.Path(dir_okay=False),
                 help="Also write QuPath GeoJSON (File > Import objects): coordinates in "
                 "level-0 pixels of the slide, whatever --level/--mpp made the mask."),
    click.option("--qupath-objects", type=click.Choice(sorted(QUPATH_OBJECTS)),
                 default="annotations", show_default=True,
                 help="QuPath object type of the regions."),
    click.option("--min-area", type=click.FloatRange(min=0),
                 help="Drop regions smaller than this, in the area field's unit (CRS "
                 "units², µm² for slides with a pixel size, else px²)."),
    click.option("--simplify", type=click.FloatRange(min=0),
                 help="Simplify each polygon with this tolerance in mask pixels "
                 "(topology kept per polygon; edges shared with a neighbour may drift "
                 "apart by up to the tolerance)."),
    click.option("--skip-class", "skip_classes", multiple=True,
                 help="Class id or name to leave out (repeatable), e.g. the background."),
)
"""Options of ``polygons`` that ``run`` takes too."""

RUN_POLYGON_OPTIONS = (
    click.option("--polygons", type=click.Path(dir_okay=False),
                 help="Also write the regions as polygons: .gpkg, .geojson or .fgb."),
    *SHARED,
)
RUN_POLYGON_NAMES = ("polygons", "qupath", "qupath_objects", "min_area", "simplify",
                     "skip_classes")
"""Parameter names of :data:`RUN_POLYGON_OPTIONS` (``run``'s "Polygons" section)."""


def run_polygon_options(f):
    """``--polygons``, ``--qupath`` and their settings, for ``run``."""
    for option in reversed(RUN_POLYGON_OPTIONS):
        f = option(f)
    return f


def export_settings(options: dict[str, Any]) -> dict[str, Any] | None:
    """Pop the polygon options from ``run``'s ``options``; None when nothing is asked."""
    settings = {name: options.pop(name) for name in RUN_POLYGON_NAMES}
    if settings["polygons"] is None and settings["qupath"] is None:
        if (settings["min_area"] is not None or settings["simplify"] is not None
                or settings["skip_classes"]):
            raise click.UsageError("--min-area, --simplify and --skip-class need "
                                   "--polygons or --qupath")
        return None
    settings["qupath_objects"] = QUPATH_OBJECTS[settings["qupath_objects"]]
    return settings


def precheck(settings: dict[str, Any] | None, inputs: list[str], overwrite: bool) -> None:
    """Refuse unwritable polygon outputs before a run spends anything on the mask."""
    if settings is None:
        return
    from tilesegment.export.polygons import check_targets
    from tilesegment.export.sinks import driver_for

    if settings["polygons"] is not None:
        driver_for(Path(settings["polygons"]))
    targets = [Path(p) for p in (settings["polygons"], settings["qupath"]) if p is not None]
    check_targets(targets, [Path(p) for p in inputs], overwrite)


def export_and_report(mask: str | Path, settings: dict[str, Any], *, overwrite: bool,
                      protect: tuple[str, ...] = (), block: int = 2048,
                      physical: bool = False) -> None:
    from tilesegment.export.polygons import export_polygons

    summary = export_polygons(mask, overwrite=overwrite, protect=protect, block=block,
                              physical=physical, **settings)
    dropped = summary.regions - summary.written
    more = f" ({dropped} under --min-area dropped)" if dropped else ""
    for path in summary.outputs:
        click.echo(f"wrote {path}  ({summary.written} polygons{more}, area in "
                   f"{summary.area_unit}, {summary.seconds:.1f} s)")


@click.command()
@click.argument("mask", type=click.Path(exists=True))
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Polygon file: .gpkg (GeoPackage), .geojson or .fgb (FlatGeobuf).")
@SHARED[0]
@SHARED[1]
@SHARED[2]
@SHARED[3]
@SHARED[4]
@click.option("--block", type=click.IntRange(min=16), default=2048, show_default=True,
              help="Pixels per side read at a time (memory; the result does not depend "
              "on it).")
@click.option("--physical", is_flag=True,
              help="Slides: coordinates in µm (the mask's pixel size) instead of pixels.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def polygons(mask: str, output: str | None, qupath: str | None, qupath_objects: str,
             min_area: float | None, simplify: float | None,
             skip_classes: tuple[str, ...], block: int, physical: bool,
             overwrite: bool) -> None:
    """One polygon per connected region (4-connectivity) per class of MASK, holes kept:
    class id and name, area (CRS units², µm², or px²) and the mean probability when the
    output holds probabilities. Georeferenced masks keep their CRS; slides give pixel
    coordinates (--physical: µm)."""
    if output is None and qupath is None:
        raise click.UsageError("give -o/--output and/or --qupath")
    export_and_report(mask, {"polygons": output, "qupath": qupath,
                             "qupath_objects": QUPATH_OBJECTS[qupath_objects],
                             "min_area": min_area, "simplify": simplify,
                             "skip_classes": skip_classes},
                      overwrite=overwrite, block=block, physical=physical)
