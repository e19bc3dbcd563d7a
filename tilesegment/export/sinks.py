"""Where exported regions go: GeoPackage and FlatGeobuf through pyogrio (a batch at a
time), GeoJSON and QuPath's GeoJSON dialect written by hand (a feature at a time).

Every sink writes a hidden sibling of its final path (``.<name>.partial-<token>``) and
renames it into place only when complete (:meth:`Sink.publish`); :meth:`Sink.abort`
removes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tilesegment.errors import InputError, OutputError
from tilesegment.write import atomic, layout

DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON", ".fgb": "FlatGeobuf"}
"""Polygon file suffix → the OGR driver pyogrio writes it with."""

BATCH = 4096
"""Features written per pyogrio call."""


def driver_for(path: Path) -> str:
    """The OGR driver of a polygon output path (by suffix); InputError for others."""
    try:
        return DRIVERS[path.suffix.lower()]
    except KeyError:
        raise InputError(f"{path}: polygon output must end in .gpkg, .geojson or .fgb "
                         f"(not {path.suffix or 'no suffix'!r})") from None


def gis_sink(final: Path, fields: dict[str, Any], crs_wkt: str | None) -> Sink:
    """The sink of a polygon file, by its suffix."""
    if driver_for(final) == "GeoJSON":
        return GeoJsonSink(final, fields, crs_wkt)
    return OgrSink(final, fields, crs_wkt)


class Sink:
    """Collects features and writes them in batches to a hidden partial file."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.partial = layout.partial_path(final, atomic.new_token(), final.suffix)
        self.count = 0

    def add(self, geometry, properties: dict[str, Any]) -> None:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        """Write what is buffered and close the partial file."""

    def publish(self, overwrite: bool) -> None:
        self.close()
        atomic.publish(self.partial, self.final, overwrite=overwrite)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.close()
        for path in self.partial.parent.glob(self.partial.name + "*"):
            with contextlib.suppress(OSError):
                path.unlink()


class OgrSink(Sink):
    """A GeoPackage or FlatGeobuf file of polygons with ``fields`` (name → numpy
    dtype or ``str``), appended a batch at a time.

    FlatGeobuf cannot be appended to (its header holds the feature count): its batches
    go to a hidden GeoPackage first, copied into the ``.fgb`` in one call at the end — so a
    FlatGeobuf output needs memory for all its features once; GeoPackage is streamed.
    """

    def __init__(self, final: Path, fields: dict[str, Any], crs_wkt: str | None) -> None:
        super().__init__(final)
        self.driver = driver_for(final)
        self.fields = fields
        self.crs = crs_wkt
        self.stage = (self.partial if self.driver != "FlatGeobuf"
                      else self.partial.with_name(self.partial.name + ".gpkg"))
        self.stage_driver = "GPKG" if self.driver == "FlatGeobuf" else self.driver
        self.geoms: list[bytes] = []
        self.values: dict[str, list] = {name: [] for name in fields}
        self.started = False

    def add(self, geometry, properties: dict[str, Any]) -> None:
        import shapely

        self.geoms.append(shapely.to_wkb(geometry))
        for name in self.fields:
            self.values[name].append(properties[name])
        self.count += 1
        if len(self.geoms) >= BATCH:
            self._flush()

    def _flush(self, *, force: bool = False) -> None:
        if not self.geoms and not force:
            return
        self._write(self.stage, self.stage_driver, np.array(self.geoms, dtype=object),
                    [np.asarray(self.values[n], dtype=object if t is str else t)
                     for n, t in self.fields.items()], append=self.started)
        self.started = True
        self.geoms = []
        self.values = {name: [] for name in self.fields}

    def _write(self, path: Path, driver: str, geoms, data, *, append: bool) -> None:
        import pyogrio.raw

        try:
            with warnings.catch_warnings():  # pixel coordinates have no CRS, on purpose
                warnings.filterwarnings("ignore", "'crs' was not provided")
                pyogrio.raw.write(str(path), geoms, data, list(self.fields), driver=driver,
                                  geometry_type="Polygon", crs=self.crs, append=append,
                                  layer=self.final.stem)
        except Exception as exc:  # pyogrio's and GDAL's errors: one line, a library's
            raise OutputError(f"cannot write {self.final}: {exc}") from exc

    def close(self) -> None:
        if self.geoms or not self.started:
            self._flush(force=True)
        if self.driver == "FlatGeobuf" and self.stage.exists():
            import pyogrio.raw

            _, _, geoms, data = pyogrio.raw.read(str(self.stage))[:4]
            self._write(self.partial, "FlatGeobuf", geoms, list(data), append=False)
            self.stage.unlink()


class JsonStreamSink(Sink):
    """A JSON FeatureCollection written by hand, a feature at a time, into the hidden file."""

    def _open(self, head: str) -> None:
        try:
            self.file = open(self.partial, "x", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise OutputError(f"cannot write {self.final}: {exc}") from exc
        self.file.write(head)

    def _feature(self, text: str) -> None:
        self.file.write((",\n" if self.count else "") + text)
        self.count += 1

    def close(self) -> None:
        if not self.file.closed:
            self.file.write("\n]}\n")
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()


class GeoJsonSink(JsonStreamSink):
    """A GeoJSON FeatureCollection streamed by hand, a feature at a time (GDAL's GeoJSON
    append re-reads the file on every batch). The CRS goes in a ``crs`` member, as GDAL
    writes it: ``urn:ogc:def:crs:EPSG::<code>`` where the CRS has an EPSG code, else its
    WKT (which GDAL reads back too); none for pixel coordinates. NaN fields become null."""

    def __init__(self, final: Path, fields: dict[str, Any], crs_wkt: str | None) -> None:
        super().__init__(final)
        self.fields = list(fields)
        head: dict[str, Any] = {"type": "FeatureCollection", "name": final.stem}
        if crs_wkt:
            from rasterio.crs import CRS

            code = CRS.from_wkt(crs_wkt).to_epsg()
            name = f"urn:ogc:def:crs:EPSG::{code}" if code else crs_wkt
            head["crs"] = {"type": "name", "properties": {"name": name}}
        self._open(json.dumps(head)[:-1] + ', "features": [\n')

    def add(self, geometry, properties: dict[str, Any]) -> None:
        import shapely

        values = {}
        for name in self.fields:
            v = properties[name]
            v = v.item() if isinstance(v, np.generic) else v
            values[name] = None if isinstance(v, float) and not np.isfinite(v) else v
        feature = {"type": "Feature", "properties": values,
                   "geometry": json.loads(shapely.to_geojson(geometry))}
        self._feature(json.dumps(feature, ensure_ascii=False))



class QuPathSink(JsonStreamSink):
    """QuPath's GeoJSON dialect: a FeatureCollection whose features carry
    ``properties.objectType`` (``"annotation"`` or ``"detection"``),
    ``properties.classification`` ``{"name", "color": [r, g, b]}`` and
    ``properties.measurements``; coordinates in level-0 pixels. Streamed by hand."""

    def __init__(self, final: Path, object_type: str) -> None:
        super().__init__(final)
        if object_type not in ("annotation", "detection"):
            raise InputError(f"QuPath object type must be annotation or detection, not "
                             f"{object_type!r}")
        self.object_type = object_type
        self._open('{"type": "FeatureCollection", "features": [\n')

    def add(self, geometry, properties: dict[str, Any]) -> None:
        import shapely

        feature = {
            "type": "Feature",
            "geometry": json.loads(shapely.to_geojson(geometry)),
            "properties": {
                "objectType": self.object_type,
                "classification": {"name": properties["class_name"],
                                   "color": list(properties["color"])},
                "measurements": properties["measurements"],
            },
        }
        self._feature(json.dumps(feature))

