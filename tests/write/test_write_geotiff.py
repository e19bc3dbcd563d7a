"""GeoTIFF outputs: georeference, values, colour map, tags, COG layout, probabilities and
disagreement siblings."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine

from tilesegment.errors import OutputError
from tilesegment.read.base import Georef
from tilesegment.write import OutputMeta, create_output, read_output_meta

WKT = CRS.from_epsg(32119).to_wkt()
NAMES = ("background", "water", "forest", "urban", "road")
COLORS = ((0, 0, 0), (0, 0, 255), (0, 128, 0), (200, 0, 0), (250, 250, 250))


def make_meta(
    shape: tuple[int, int],
    block: tuple[int, int],
    georef: Georef,
    *,
    save_probabilities: bool = False,
    save_disagreement: bool = False,
) -> OutputMeta:
    return OutputMeta(
        shape=shape,
        num_classes=len(NAMES),
        class_names=NAMES,
        class_colors=COLORS,
        georef=georef,
        block_shape=block,
        save_probabilities=save_probabilities,
        provenance={"model": "fcn", "tile": 512, "halo": 32},
        save_disagreement=save_disagreement,
    )


def write_all(
    path: Path, meta: OutputMeta, *, cog: bool = False, skip=(), labels: np.ndarray | None = None
) -> np.ndarray:
    """Write random blocks, or the one-hot of ``labels`` (except the corners in ``skip``);
    return the ``(K, H, W)`` float32 probabilities whose argmax is the mask."""
    rng = np.random.default_rng(7)
    probs = rng.random((meta.num_classes, *meta.shape), dtype=np.float32)
    if labels is not None:
        probs = (np.arange(meta.num_classes)[:, None, None] == labels).astype(np.float32)
    (h, w), (bh, bw) = meta.shape, meta.block_shape
    out = create_output(path, meta, cog=cog)
    for r in range(0, h, bh):
        for c in range(0, w, bw):
            if (r, c) in skip:
                continue
            block = probs[:, r : r + bh, c : c + bw]
            out.write_block(r, c, block.argmax(0).astype(np.uint8), block)
    assert not path.exists()
    out.finalize()
    return probs


@pytest.mark.parametrize(
    "transform",
    [(0.5, 0.0, 609_000.25, 0.0, -0.5, 200_000.75), (0.3, 0.1, 609_000.0, 0.05, -0.3, 2e5)],
    ids=["north-up", "rotated"],
)
def test_geotiff_round_trip(tmp_path: Path, transform: tuple) -> None:
    path = tmp_path / "mask.tif"
    meta = make_meta((97, 131), (32, 48), Georef(WKT, transform, (0.5, 0.5), "m"))
    probs = write_all(path, meta, skip={(64, 96)})
    want = probs.argmax(0).astype(np.uint8)
    want[64:96, 96:] = 255
    with rasterio.open(path) as ds:
        assert ds.crs == CRS.from_wkt(WKT) and ds.crs.to_epsg() == 32119
        assert ds.transform == Affine(*transform)
        assert (ds.height, ds.width, ds.count) == (97, 131, 1)
        assert ds.dtypes == ("uint8",) and ds.nodata == 255
        assert ds.profile["tiled"] and ds.block_shapes[0] in ((256, 256), (512, 512))
        assert ds.profile["compress"] == "deflate"
        np.testing.assert_array_equal(ds.read(1), want)
        cmap = ds.colormap(1)
        for i, rgb in enumerate(COLORS):
            assert cmap[i] == (*rgb, 255)
        assert cmap[255] == (0, 0, 0, 0)  # nodata black (GDAL makes it transparent)
        tags = ds.tags()
        assert json.loads(tags["CLASS_NAMES"]) == list(NAMES)
        assert json.loads(tags["PROVENANCE"]) == meta.provenance
        assert ds.descriptions[0].startswith("class id")
        assert ds.overviews(1) == []
    info = read_output_meta(path)
    assert info["kind"] == "geotiff" and info["completion"]["complete"] is True
    assert info["completion"]["blocks_written"] == info["completion"]["blocks_total"] - 1
    assert info["transform"] == list(transform) and info["crs_wkt"] == WKT
    with tifffile.TiffFile(path) as tif:
        assert not tif.is_bigtiff
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif", "mask.tif.aux.xml"]


def test_cog(tmp_path: Path) -> None:
    path = tmp_path / "mask.tif"
    transform = (2.0, 0.0, 600_000.0, 0.0, -2.0, 210_000.0)
    meta = make_meta((1100, 1300), (256, 300), Georef(WKT, transform, (2.0, 2.0), "m"))
    labels = np.random.default_rng(3).integers(0, len(NAMES), meta.shape)
    # each 2x2 cell: class 2 top-left (what NEAREST keeps), class 1 elsewhere (MODE keeps)
    labels[:512, :512] = 1
    labels[0:512:2, 0:512:2] = 2
    probs = write_all(path, meta, cog=True, labels=labels)
    with rasterio.open(path) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.overviews(1)  # [2, 4] for 1100x1300 with 512 blocks
        assert ds.block_shapes[0] == (512, 512)
        assert ds.crs.to_epsg() == 32119 and ds.transform == Affine(*transform)
        assert ds.nodata == 255 and ds.colormap(1)[1] == (0, 0, 255, 255)
        assert json.loads(ds.tags()["CLASS_NAMES"]) == list(NAMES)
        np.testing.assert_array_equal(ds.read(1), probs.argmax(0))
        overviews = ds.overviews(1)
    with tifffile.TiffFile(path) as tif:
        pages = tif.pages
        assert len(pages) == 1 + len(overviews)
        overview = pages[1].asarray()
        assert overview.shape == (550, 650)
        assert (overview[:256, :256] == 1).all()  # the majority class of each 2x2 cell
        assert all(page.is_tiled for page in pages)
        # COG layout: every IFD before any image data; smallest overview data first
        first_data = min(min(p.dataoffsets) for p in pages)
        assert max(p.offset for p in pages) < first_data
        assert min(pages[0].dataoffsets) > max(pages[-1].dataoffsets)
    with path.open("rb") as f:
        ghost = f.read(1000)  # GDAL's structural metadata follows the TIFF header
    assert b"LAYOUT=IFDS_BEFORE_DATA" in ghost
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif", "mask.tif.aux.xml"]


def test_probabilities_sibling(tmp_path: Path) -> None:
    path = tmp_path / "scene.tif"
    transform = (0.5, 0.0, 609_000.0, 0.0, -0.5, 200_000.0)
    meta = make_meta((97, 131), (32, 48), Georef(WKT, transform), save_probabilities=True)
    probs = write_all(path, meta, skip={(0, 0)})
    sibling = tmp_path / "scene.probabilities.tif"
    with rasterio.open(sibling) as ds:
        assert ds.count == len(NAMES) and ds.dtypes[0] == "float32"
        assert ds.crs.to_epsg() == 32119 and ds.transform == Affine(*transform)
        got = ds.read()
        assert ds.descriptions[1] == "probability: water"
    assert np.isnan(got[:, :32, :48]).all()
    want = probs.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(got[:, 32:], want[:, 32:])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "scene.probabilities.tif", "scene.tif", "scene.tif.aux.xml"]


@pytest.mark.parametrize(
    ("cog", "shape", "block"),
    [(False, (97, 131), (32, 48)), (True, (600, 700), (256, 300))],
    ids=["tiled", "cog"],
)
def test_disagreement_sibling(tmp_path: Path, cog: bool, shape, block) -> None:
    path = tmp_path / "scene.tif"
    transform = (0.5, 0.0, 609_000.0, 0.0, -0.5, 200_000.0)
    meta = make_meta(shape, block, Georef(WKT, transform, (0.5, 0.5), "m"),
                     save_disagreement=True)
    rng = np.random.default_rng(11)
    labels = rng.integers(0, len(NAMES), shape).astype(np.uint8)
    flags = (rng.random(shape) < 0.2).astype(np.uint8)
    flags[rng.random(shape) < 0.05] = 255
    (h, w), (bh, bw) = shape, block
    out = create_output(path, meta, cog=cog)
    for r in range(0, h, bh):
        for c in range(0, w, bw):
            if (r, c) != (0, 0):  # block (0, 0) never written: nodata in every layer
                sl = np.s_[r : r + bh, c : c + bw]
                out.write_block(r, c, labels[sl], disagreement=flags[sl])
    assert not path.exists() and not (tmp_path / "scene.disagreement.tif").exists()
    out.finalize()
    want = flags.copy()
    want[:bh, :bw] = 255

    sibling = tmp_path / "scene.disagreement.tif"
    with rasterio.open(sibling) as ds:
        assert (ds.height, ds.width, ds.count) == (h, w, 1)
        assert ds.dtypes == ("uint8",) and ds.nodata == 255
        assert ds.crs.to_epsg() == 32119 and ds.transform == Affine(*transform)
        assert ds.profile["tiled"] and ds.block_shapes[0] in ((256, 256), (512, 512))
        assert ds.profile["compress"] == "deflate"
        assert ds.tags()["TILESEGMENT_LAYER"] == "disagreement"
        assert ds.descriptions[0].startswith("1: overlapping tiles disagree")
        assert ds.colormap(1)[1] == (255, 0, 0, 255)
        np.testing.assert_array_equal(ds.read(1), want)
        layout = ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")
        assert (layout == "COG") == cog
        assert bool(ds.overviews(1)) == cog
    with rasterio.open(path) as ds:  # the mask is untouched by the extra layer
        mask = labels.copy()
        mask[:bh, :bw] = 255
        np.testing.assert_array_equal(ds.read(1), mask)
        assert (ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG") == cog
    info = read_output_meta(path)
    assert info["layers"] == ["mask", "disagreement"]
    assert info["layer_paths"] == {"mask": str(path), "disagreement": str(sibling)}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "scene.disagreement.tif", "scene.tif", "scene.tif.aux.xml"]


def test_slide_without_crs_keeps_pixel_size(tmp_path: Path) -> None:
    path = tmp_path / "slide.tiff"
    meta = make_meta((300, 200), (128, 128), Georef(None, None, (0.25, 0.5), "um"))
    probs = write_all(path, meta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            assert ds.crs is None
            np.testing.assert_array_equal(ds.read(1), probs.argmax(0))
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        assert tags["ResolutionUnit"].value == 3  # centimetre
        assert tags["XResolution"].value == (20_000, 1)  # 0.5 µm → 20 000 px/cm
        assert tags["YResolution"].value == (40_000, 1)  # 0.25 µm
    info = read_output_meta(path)
    assert info["pixel_size"] == [0.25, 0.5] and info["unit"] == "um"


def test_bad_crs_fails_at_create(tmp_path: Path) -> None:
    meta = make_meta((97, 131), (32, 48), Georef("NOT A CRS", None))
    with pytest.raises(OutputError, match="CRS"):
        create_output(tmp_path / "x.tif", meta)
    assert list(tmp_path.iterdir()) == []
