"""``evaluate`` against truth polygons: the same report as against the raster those
polygons make when rasterised whole (rasterio, in the test), block by block at any size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner
from rasterio import features

from tilesegment.cli.main import cli
from tilesegment.errors import InputError
from tilesegment.evaluation import evaluate

CRS = "EPSG:32119"
TRANSFORM = Affine(30.0, 0.0, 630000.0, 0.0, -30.0, 230000.0)
SHAPE = (70, 90)
NAMES = ["water", "field", "forest"]


def _xy(col: float, row: float) -> tuple[float, float]:
    return 630000.0 + 30.0 * col, 230000.0 - 30.0 * row


def _truth_polygons() -> tuple[list, list[int]]:
    """Polygons with off-grid vertices (triangles, a rotated square, a polygon with a
    hole) that cross the 16-px blocks; overlapping ones (the later wins) included."""
    geoms = [
        shapely.Polygon([_xy(3.3, 2.1), _xy(60.7, 9.4), _xy(20.2, 55.5)]),
        shapely.Polygon([_xy(45, 20.5), _xy(70.5, 35), _xy(56, 60.5), _xy(30.5, 46)]),
        shapely.Polygon([_xy(0, 40), _xy(40, 40), _xy(40, 70), _xy(0, 70)],
                        [[_xy(10.5, 50.5), _xy(25.5, 50.5), _xy(25.5, 62.5),
                          _xy(10.5, 62.5)]]),
        shapely.box(*_xy(75, 69.9), *_xy(89.6, 0.2)),
    ]
    return geoms, [1, 2, 0, 1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("vector")
    geoms, classes = _truth_polygons()
    truth = features.rasterize(zip(geoms, classes, strict=True), out_shape=SHAPE,
                               transform=TRANSFORM, fill=255, dtype="uint8")
    rng = np.random.default_rng(4)
    pred = np.where(rng.random(SHAPE) < 0.8, np.minimum(truth, 2),
                    rng.integers(0, 3, SHAPE)).astype(np.uint8)
    paths = {}
    for name, data, nodata in (("pred", pred, None), ("truth", truth, 255)):
        paths[name] = folder / f"{name}.tif"
        with rasterio.open(paths[name], "w", driver="GTiff", width=SHAPE[1],
                           height=SHAPE[0], count=1, dtype="uint8", crs=CRS,
                           transform=TRANSFORM, nodata=nodata) as ds:
            ds.write(data[None])
    wkb = np.array(shapely.to_wkb(geoms), dtype=object)
    fields = [np.array(classes, np.int32), np.array([NAMES[c] for c in classes], object)]
    paths["gpkg"] = folder / "truth.gpkg"
    pyogrio.raw.write(str(paths["gpkg"]), wkb, fields, ["cls", "name"], driver="GPKG",
                      geometry_type="Polygon", crs=CRS)
    paths["wgs84"] = folder / "wgs84.geojson"
    pyogrio.raw.write(str(paths["wgs84"]), wkb, fields, ["cls", "name"], driver="GeoJSON",
                      geometry_type="Polygon", crs="EPSG:4326")
    return paths


@pytest.mark.parametrize("block", [16, 4096])
def test_vector_truth_equals_raster_truth(files, block):
    raster = evaluate(str(files["pred"]), str(files["truth"]), num_classes=3, block=block)
    vector = evaluate(str(files["pred"]), str(files["gpkg"]), num_classes=3, block=block,
                      class_field="cls")
    assert raster.confusion.sum() > 0.5 * SHAPE[0] * SHAPE[1]  # most pixels are covered
    np.testing.assert_array_equal(vector.confusion, raster.confusion)
    assert vector.measures == raster.measures


def test_class_names_field_through_the_cli(files):
    def report(truth: Path, *extra: str) -> dict:
        r = CliRunner().invoke(cli, ["evaluate", str(files["pred"]), str(truth),
                                     "--classes", "3", "--json", "-", *extra])
        assert r.exit_code == 0, r.output
        return json.loads(r.output)

    by_id = report(files["gpkg"], "--class-field", "cls")
    assert by_id["confusion"] == report(files["truth"])["confusion"]
    # a field of names needs the prediction's class names: a plain GeoTIFF has none
    r = CliRunner().invoke(cli, ["evaluate", str(files["pred"]), str(files["gpkg"]),
                                 "--class-field", "name"])
    assert r.exit_code == 1 and "field 'name' names classes" in r.output
    assert len(r.output.strip().splitlines()) == 1
    # an array prediction with names given: names map to their ids
    with rasterio.open(files["pred"]) as ds:
        pred = ds.read(1)
    from tilesegment.read.array import ArrayRaster
    from tilesegment.read.base import Georef

    grid = ArrayRaster(pred, georef=Georef(crs_wkt=rasterio.crs.CRS.from_string(
        CRS).to_wkt(), transform=tuple(TRANSFORM)[:6]))
    named = evaluate(grid, str(files["gpkg"]), class_field="name", class_names=NAMES)
    assert named.confusion.tolist() == by_id["confusion"]


def test_vector_truth_refusals(files):
    with pytest.raises(InputError, match="CRS differ"):
        evaluate(str(files["pred"]), str(files["wgs84"]), class_field="cls")
    with pytest.raises(InputError, match="no field 'klass'"):
        evaluate(str(files["pred"]), str(files["gpkg"]), class_field="klass")
    with pytest.raises(InputError, match="--class-field"):
        evaluate(str(files["pred"]), str(files["gpkg"]))
