"""Polygons and QuPath GeoJSON from a mask, checked against independent references: the
polygons rasterised back by rasterio equal the mask; their count equals
``scipy.ndimage.label``'s (4-connectivity, the default cross); areas and mean
probabilities against NumPy sums over those labels; QuPath coordinates against the known
pixel-size ratio of the slide."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
import zarr
from affine import Affine
from click.testing import CliRunner, Result
from rasterio import features
from scipy import ndimage

from tests.read.read_helpers import write_pyramid
from tilesegment.cli.main import cli

CRS = "EPSG:32119"
TRANSFORM = Affine(30.0, 0.0, 630000.0, 0.0, -30.0, 230000.0)
NODATA = 255


def xy(col: float, row: float) -> tuple[float, float]:
    """Map coordinates of a pixel corner (TRANSFORM written out)."""
    return 630000.0 + 30.0 * col, 230000.0 - 30.0 * row
BLOCKS = (16, 37)  # 16: the four-block region below sits on a block corner


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def synthetic_mask() -> np.ndarray:
    """``uint8 (80, 90)``: smooth random classes 0..2, a class-1 square over the corner
    where four 16-px blocks meet, a class-2 ring with a class-0 hole crossing a block
    edge, and some nodata."""
    rng = np.random.default_rng(3)
    m = (ndimage.zoom(rng.random((9, 10)), 9, order=1)[:80, :90] * 3).astype(np.uint8)
    m = np.minimum(m, 2)
    m[9:23, 9:23] = 0            # frames keep the two shapes below apart from the rest
    m[10:22, 10:22] = 1          # rows/cols 10..21: blocks (0,0), (0,1), (1,0), (1,1)
    m[39:61, 39:61] = 1
    m[40:60, 40:60] = 2
    m[46:54, 46:54] = 0          # the hole, itself a region of class 0
    m[70:74, 2:9] = NODATA
    return m


@pytest.fixture(scope="module")
def mask_tif(tmp_path_factory) -> tuple[Path, np.ndarray]:
    folder = tmp_path_factory.mktemp("polygons")
    m = synthetic_mask()
    path = folder / "mask.tif"
    with rasterio.open(path, "w", driver="GTiff", width=m.shape[1], height=m.shape[0],
                       count=1, dtype="uint8", crs=CRS, transform=TRANSFORM,
                       nodata=NODATA) as ds:
        ds.write(m[None])
    return path, m


@pytest.fixture(scope="module")
def exported(mask_tif) -> dict[int, Path]:
    path, _ = mask_tif
    out = {}
    for block in BLOCKS:
        out[block] = path.with_name(f"p{block}.gpkg")
        ok(invoke("polygons", path, "-o", out[block], "--block", block))
    return out


def read_polygons(path: Path) -> tuple[dict, list, dict[str, np.ndarray]]:
    meta, _, wkb, data = pyogrio.raw.read(str(path))[:4]
    return meta, list(shapely.from_wkb(wkb)), dict(zip(meta["fields"], data, strict=True))


@pytest.mark.parametrize("block", BLOCKS)
def test_polygons_rasterise_back_to_the_mask(mask_tif, exported, block):
    _, m = mask_tif
    meta, geoms, fields = read_polygons(exported[block])
    assert meta["crs"] == CRS and meta["geometry_type"] == "Polygon"
    back = features.rasterize(zip(geoms, fields["class_id"].tolist(), strict=True),
                              out_shape=m.shape, transform=TRANSFORM, fill=NODATA,
                              dtype="uint8")
    np.testing.assert_array_equal(back, m)
    # each polygon alone is exactly one 4-connected region of its class
    counts = {c: ndimage.label(m == c)[1] for c in range(3)}
    assert {c: int((fields["class_id"] == c).sum()) for c in range(3)} == counts
    # the square on the block corner is one polygon; the ring keeps its hole
    square = shapely.box(*xy(10, 22), *xy(22, 10))
    assert sum(g.equals(square) for g in geoms) == 1
    ring = [g for g, c in zip(geoms, fields["class_id"], strict=True)
            if c == 2 and g.covers(shapely.Point(*xy(41, 41)))]
    assert len(ring) == 1 and len(ring[0].interiors) == 1
    assert shapely.Polygon(ring[0].interiors[0]).equals(
        shapely.box(*xy(46, 54), *xy(54, 46)))


def test_polygons_do_not_depend_on_block_size(exported):
    a = read_polygons(exported[BLOCKS[0]])
    b = read_polygons(exported[BLOCKS[1]])
    key = [sorted(zip(shapely.to_wkb(shapely.normalize(g)), f["class_id"].tolist(),
                      strict=True)) for _, g, f in (a, b)]
    assert key[0] == key[1]


def test_fields_area_and_names(mask_tif, exported):
    _, m = mask_tif
    _, geoms, fields = read_polygons(exported[BLOCKS[0]])
    assert set(fields) == {"class_id", "class_name", "area", "area_unit"}
    assert set(fields["area_unit"]) == {"m²"}
    # area = pixel count × 30 m × 30 m, region by region
    for g, c, area in zip(geoms, fields["class_id"], fields["area"], strict=True):
        one = features.rasterize([(g, 1)], out_shape=m.shape, transform=TRANSFORM)
        assert area == one.sum() * 900.0 and (m[one == 1] == c).all()
        assert g.area == pytest.approx(area)  # holes subtracted


def test_min_area_simplify_and_formats(mask_tif, tmp_path):
    path, m = mask_tif
    sizes = {c: np.bincount(ndimage.label(m == c)[0].ravel())[1:] for c in range(3)}
    limit = 20 * 900.0
    kept = sum(int((s * 900.0 >= limit).sum()) for s in sizes.values())
    for suffix in (".geojson", ".fgb"):
        out = tmp_path / f"p{suffix}"
        ok(invoke("polygons", path, "-o", out, "--block", 16, "--min-area", limit,
                  "--simplify", 1))
        meta, geoms, fields = read_polygons(out)
        assert meta["crs"] == CRS and len(geoms) == kept and (fields["area"] >= limit).all()
        assert all(g.is_valid and not g.is_empty for g in geoms)
    assert not list(tmp_path.glob(".*"))  # nothing hidden left behind


def test_output_safety(mask_tif, tmp_path):
    path, _ = mask_tif
    out = tmp_path / "p.gpkg"
    out.write_bytes(b"not mine")
    r = invoke("polygons", path, "-o", out)
    assert r.exit_code == 1 and "--overwrite" in r.output and out.read_bytes() == b"not mine"
    r = invoke("polygons", path, "-o", tmp_path / "p.shp")
    assert r.exit_code == 1 and ".gpkg, .geojson or .fgb" in r.output
    r = invoke("polygons", path, "--qupath", path)
    assert r.exit_code == 1 and "input" in r.output
    ok(invoke("polygons", path, "-o", out, "--overwrite"))
    assert pyogrio.raw.read(str(out))[0]["fields"][0] == "class_id"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.gpkg"]


# -- a slide run at --mpp coarser than level 0: QuPath coordinates in level-0 pixels ------

LEVEL0_UM = 0.25
MPP = 0.75  # level 1 (0.5 µm) resampled by 1.5: not a pyramid level


@pytest.fixture(scope="module")
def slide_run(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("slide")
    rng = np.random.default_rng(8)
    base = (ndimage.zoom(rng.random((3, 8, 8)), (1, 24, 24), order=1) * 255).astype(np.uint8)
    write_pyramid(folder / "slide.tif", base, pixel_size_um=LEVEL0_UM, n_levels=3)
    out = folder / "run.zarr"
    r = ok(invoke("run", folder / "slide.tif", "-o", out, "--model", "identity",
                  "--classes", "3", "--tile", "32", "--halo", "0", "--mpp", MPP,
                  "--save-probabilities", "--polygons", folder / "p.gpkg",
                  "--qupath", folder / "q.geojson"))
    group = zarr.open_group(out, mode="r")
    return {"folder": folder, "out": out, "output": r.output, "mask": group["mask"][:],
            "prob": group["probabilities"][:], "attrs": group.attrs["tilesegment"]}


def test_run_writes_polygons_of_its_mask(slide_run):
    m = slide_run["mask"]
    assert m.shape == (64, 64)  # 192 px at 0.25 µm → 64 px at 0.75 µm
    meta, geoms, fields = read_polygons(slide_run["folder"] / "p.gpkg")
    assert meta["crs"] is None and set(fields["area_unit"]) == {"µm²"}
    back = features.rasterize(zip(geoms, fields["class_id"].tolist(), strict=True),
                              out_shape=m.shape, transform=Affine.identity(), fill=NODATA,
                              dtype="uint8")
    np.testing.assert_array_equal(back, m)
    # mean probability: NumPy mean of the stored probabilities over each labelled region
    prob = slide_run["prob"].astype(np.float64)
    expected = []
    for c in range(3):
        labels, n = ndimage.label(m == c)
        for i in range(1, n + 1):
            expected.append((c, int((labels == i).sum()), prob[c][labels == i].mean()))
    got = sorted(zip(fields["class_id"].tolist(), (fields["area"] / MPP**2).round(6),
                     fields["mean_prob"], strict=True))
    assert len(got) == len(expected)
    for (c1, n1, p1), (c2, n2, p2) in zip(got, sorted(expected), strict=True):
        assert (c1, n1) == (c2, n2) and p1 == pytest.approx(p2, rel=1e-9)
    assert "wrote" in slide_run["output"] and "q.geojson" in slide_run["output"]


def _check_qupath(path: Path, attrs: dict, object_type: str) -> list[dict]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["type"] == "FeatureCollection" and doc["features"]
    colors = dict(zip(attrs["class_names"], map(list, attrs["class_colors"]), strict=True))
    for f in doc["features"]:
        assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
        props = f["properties"]
        assert props["objectType"] == object_type
        cls = props["classification"]
        assert set(cls) == {"name", "color"} and cls["color"] == colors[cls["name"]]
        assert all(isinstance(v, float) for v in props["measurements"].values())
    return doc["features"]


def test_qupath_coordinates_are_level0_pixels(slide_run):
    feats = _check_qupath(slide_run["folder"] / "q.geojson", slide_run["attrs"], "annotation")
    _, geoms, fields = read_polygons(slide_run["folder"] / "p.gpkg")
    scale = MPP / LEVEL0_UM  # 3 level-0 pixels per mask pixel
    mine = sorted(shapely.to_wkb(shapely.normalize(shapely.affinity.scale(
        g, scale, scale, origin=(0, 0)))) for g in geoms)
    theirs = sorted(shapely.to_wkb(shapely.normalize(shapely.geometry.shape(f["geometry"])))
                    for f in feats)
    assert mine == theirs
    # rasterised on the level-0 grid they cover the level-0 image (192 × 192 px)
    level0 = features.rasterize(((shapely.geometry.shape(f["geometry"]), 1) for f in feats),
                                out_shape=(192, 192))
    assert level0.all()
    names = slide_run["attrs"]["class_names"]
    assert sorted(f["properties"]["classification"]["name"] for f in feats) == sorted(
        names[c] for c in fields["class_id"])


def test_qupath_detections_from_the_polygons_command(slide_run, tmp_path):
    out = tmp_path / "d.geojson"
    ok(invoke("polygons", slide_run["out"], "--qupath", out, "--qupath-objects",
              "detections", "--block", 16))
    feats = _check_qupath(out, slide_run["attrs"], "detection")
    first = json.loads((slide_run["folder"] / "q.geojson").read_text())["features"]
    assert sorted(json.dumps(f["geometry"]) for f in feats) == sorted(
        json.dumps(f["geometry"]) for f in first)


def test_qupath_needs_the_slide_when_not_level0(slide_run, tmp_path):
    slide = slide_run["folder"] / "slide.tif"
    moved = slide.with_name("moved.tif")
    slide.rename(moved)
    try:
        r = invoke("polygons", slide_run["out"], "--qupath", tmp_path / "q.geojson")
    finally:
        moved.rename(slide)
    assert r.exit_code == 1 and "level-0" in r.output and "slide.tif" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not list(tmp_path.iterdir())
    # the plain polygons need no slide
    ok(invoke("polygons", slide_run["out"], "-o", tmp_path / "p.gpkg"))


def test_skip_class_leaves_holes_where_it_was(mask_tif, tmp_path):
    path, m = mask_tif
    out = tmp_path / "p.gpkg"
    ok(invoke("polygons", path, "-o", out, "--block", 16, "--skip-class", 0))
    _, geoms, fields = read_polygons(out)
    assert 0 not in fields["class_id"]
    back = features.rasterize(zip(geoms, fields["class_id"].tolist(), strict=True),
                              out_shape=m.shape, transform=TRANSFORM, fill=NODATA,
                              dtype="uint8")
    np.testing.assert_array_equal(back, np.where(m == 0, NODATA, m))
    r = invoke("polygons", path, "-o", tmp_path / "q.gpkg", "--skip-class", "sky")
    assert r.exit_code == 1 and "no class named 'sky'" in r.output


def test_qupath_leaves_out_the_background_of_a_real_run(tmp_path):
    """The shipped nuclei model on the sample image: QuPath gets one object per nucleus
    (scipy's 4-connected count of the mask), the GIS file keeps the background too."""
    from scipy import ndimage

    sample = Path(__file__).resolve().parents[1] / "examples" / "nuclei" / "nuclei.tif"
    out = tmp_path / "m.tif"
    ok(invoke("run", sample, "-o", out))
    with rasterio.open(out) as ds:
        mask = ds.read(1)
    ok(invoke("polygons", out, "--qupath", tmp_path / "q.geojson", "-o", tmp_path / "p.gpkg"))
    ok(invoke("polygons", out, "--qupath", tmp_path / "only.geojson"))
    nuclei = ndimage.label(mask == 1)[1]
    for name in ("q.geojson", "only.geojson"):
        feats = json.loads((tmp_path / name).read_text())["features"]
        assert {f["properties"]["classification"]["name"] for f in feats} == {"nucleus"}
        assert len(feats) == nuclei
    _, _, fields = read_polygons(tmp_path / "p.gpkg")
    assert (fields["class_id"] == 1).sum() == nuclei
    assert (fields["class_id"] == 0).sum() == ndimage.label(mask == 0)[1] > 0
