"""End to end: ``tilesegment run`` through Click's runner and ``segment()``, on small GeoTIFFs.

Every expectation comes from an independent read (rasterio, tifffile, zarr, numpy) of the
input or the output, never from the pipeline's own report. The ``identity`` model returns
the input bands as logits, so its mask must equal ``numpy.argmax`` of the input pixels.
"""

from __future__ import annotations

import importlib.metadata
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
import zarr
from click.testing import CliRunner, Result
from rasterio.crs import CRS
from rasterio.transform import Affine

from tilesegment.cli.main import cli
from tilesegment.models.registry import get_spec
from tilesegment.pipeline import segment
from tilesegment.read import open_raster

REPO = Path(__file__).resolve().parents[1]
NODATA_IN = 0
HEIGHT, WIDTH = 150, 130  # not multiples of any tile, block or TIFF block used here
TRANSFORM = Affine(28.5, 0.0, 600_000.5, 0.0, -28.5, 250_000.25)
SMALL_UNET = ["--model", "unet-tiny", "--tile", "64", "--halo", "16"]
IDENTITY = ["--model", "identity", "--classes", "3", "--tile", "64", "--halo", "0"]


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def write_scene(path: Path, height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> Path:
    """3-band uint8 GeoTIFF (EPSG:32119, 28.5 m) with nodata 0 in all bands of a corner and
    of a scattered set of pixels; no valid pixel has any band equal to 0."""
    rng = np.random.default_rng(seed)
    data = rng.integers(1, 256, (3, height, width), dtype=np.uint8)
    holes = rng.random((height, width)) < 0.03
    holes[:11, :23] = True
    data[:, holes] = NODATA_IN
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=3,
                       dtype="uint8", crs="EPSG:32119", nodata=NODATA_IN,
                       transform=TRANSFORM) as ds:
        ds.write(data)
    return path


def read_input(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``(C, H, W)`` and the bool nodata mask (all bands equal nodata), via rasterio."""
    with rasterio.open(path) as ds:
        data = ds.read()
        return data, (data == ds.nodata).all(axis=0)


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return write_scene(tmp_path / "scene.tif")


# -- GeoTIFF in → GeoTIFF out ---------------------------------------------------------------


def test_geotiff_to_geotiff_keeps_grid_and_nodata(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "mask.tif"
    ok(invoke("run", scene, "-o", out, *SMALL_UNET))
    _, holes = read_input(scene)
    assert holes.sum() > 11 * 23  # the fixture has nodata to carry over
    spec = get_spec("unet-tiny", 3, None)
    with rasterio.open(scene) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs
        assert dst.transform == src.transform
        assert (dst.height, dst.width) == (src.height, src.width)
        assert dst.count == 1 and dst.dtypes[0] == "uint8"
        assert dst.nodata == 255
        mask = dst.read(1)
        cmap = dst.colormap(1)
        assert dst.profile["tiled"] is True
        assert dst.compression == rasterio.enums.Compression.deflate
    np.testing.assert_array_equal(mask == 255, holes)  # nodata exactly where input has it
    assert mask[~holes].max() < spec.num_classes
    for k, rgb in enumerate(spec.class_colors):
        assert cmap[k] == (*rgb, 255)
    assert cmap[255][3] == 0  # nodata transparent
    with tifffile.TiffFile(out) as tif:  # the on-disk layout, read without GDAL
        page = tif.pages[0]
        assert page.is_tiled and page.tilewidth % 16 == 0 and page.tilelength % 16 == 0
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.photometric == tifffile.PHOTOMETRIC.PALETTE


def test_identity_mask_is_argmax_of_input(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "mask.tif"
    ok(invoke("run", scene, "-o", out, *IDENTITY, "--block-size", "64"))
    data, holes = read_input(scene)
    expect = np.argmax(data, axis=0).astype(np.uint8)
    expect[holes] = 255
    with rasterio.open(out) as dst:
        np.testing.assert_array_equal(dst.read(1), expect)


def test_cog_has_overviews(tmp_path: Path) -> None:
    scene = write_scene(tmp_path / "big.tif", height=700, width=600)
    out = tmp_path / "mask.tif"
    ok(invoke("run", scene, "-o", out, "--model", "identity", "--classes", "3",
              "--tile", "256", "--halo", "0", "--cog"))
    data, holes = read_input(scene)
    with rasterio.open(out) as dst:
        assert dst.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        factors = dst.overviews(1)
        assert factors and factors[0] == 2
        overview = dst.read(1, out_shape=(700 // factors[0], 600 // factors[0]))
        full = dst.read(1)
        with rasterio.open(scene) as src:
            assert dst.crs == src.crs and dst.transform == src.transform
    expect = np.argmax(data, axis=0).astype(np.uint8)
    expect[holes] = 255
    np.testing.assert_array_equal(full, expect)
    # class-mask overviews hold class ids or nodata only (MODE, not an average)
    assert set(np.unique(overview)) <= {0, 1, 2, 255}
    with tifffile.TiffFile(out) as tif:
        assert len(tif.series[0].levels) == 1 + len(factors)


# -- GeoTIFF in → Zarr out ------------------------------------------------------------------


def test_geotiff_to_zarr_metadata_and_provenance(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "mask.zarr"
    ok(invoke("run", scene, "-o", out, *SMALL_UNET, "--block-size", "64",
              "--pad-mode", "symmetric", "--blend", "gaussian"))
    group = zarr.open_group(out, mode="r")
    assert group.metadata.zarr_format == 3
    mask = group["mask"]
    assert mask.dtype == np.uint8 and mask.shape == (HEIGHT, WIDTH)
    assert mask.chunks == (64, 64)
    attrs = group.attrs["tilesegment"]
    spec = get_spec("unet-tiny", 3, None)
    with rasterio.open(scene) as src:
        assert CRS.from_wkt(attrs["crs_wkt"]) == src.crs
        assert Affine(*attrs["transform"]) == src.transform
        assert attrs["nodata"] == 255
    assert attrs["class_names"] == list(spec.class_names)
    prov = attrs["provenance"]
    assert prov["model"] == "unet-tiny"
    assert (prov["tile"], prov["halo"]) == (64, 16)
    assert (prov["pad_mode"], prov["blend"]) == ("symmetric", "gaussian")
    assert Path(prov["input"]["path"]).resolve() == scene.resolve()
    assert prov["input"]["shape"] == [3, HEIGHT, WIDTH]
    assert prov["tilesegment_version"] == importlib.metadata.version("tilesegment")
    _, holes = read_input(scene)
    np.testing.assert_array_equal(mask[:] == 255, holes)
    assert "probabilities" not in group


def test_zarr_probabilities_sum_to_one_and_match_mask(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "mask.zarr"
    ok(invoke("run", scene, "-o", out, *SMALL_UNET, "--classes", "3", "--block-size", "64",
              "--save-probabilities"))
    group = zarr.open_group(out, mode="r")
    probs_arr = group["probabilities"]
    assert probs_arr.dtype == np.float16 and probs_arr.shape == (3, HEIGHT, WIDTH)
    assert probs_arr.chunks == (3, 64, 64)
    probs = probs_arr[:].astype(np.float32)
    mask = group["mask"][:]
    _, holes = read_input(scene)
    valid = ~holes
    np.testing.assert_allclose(probs[:, valid].sum(axis=0), 1.0, atol=1e-3)
    assert np.isnan(probs[:, holes]).all()
    # argmax of the stored probabilities is the mask; float16 may tie two classes, and
    # then the mask's class must be one of the tied maxima
    top = probs.max(axis=0)
    rows, cols = np.nonzero(valid)
    np.testing.assert_array_equal(probs[mask[rows, cols], rows, cols], top[rows, cols])
    tied = (probs == top).sum(axis=0) > 1
    strict = valid & ~tied
    np.testing.assert_array_equal(np.argmax(probs, axis=0)[strict], mask[strict])
    assert len(np.unique(mask[valid])) > 1  # a random U-Net still uses several classes


def test_python_api_equals_cli(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "mask.zarr"
    ok(invoke("run", scene, "-o", out, *SMALL_UNET, "--block-size", "64"))
    api = segment(scene, None, model="unet-tiny", tile=64, halo=16, returns="mask")
    assert isinstance(api, np.ndarray) and api.dtype == np.uint8
    np.testing.assert_array_equal(api, zarr.open_group(out, mode="r")["mask"][:])


# -- reading the output back (Zarr reader of tilesegment's own output) ------------------------


def test_zarr_output_reads_back_as_raster(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "mask.zarr"
    ok(invoke("run", scene, "-o", out, *IDENTITY, "--block-size", "64",
              "--save-probabilities"))
    group = zarr.open_group(out, mode="r")
    with rasterio.open(scene) as src:
        crs, transform = src.crs, src.transform
    raster = open_raster(out)
    assert raster.shape == (1, HEIGHT, WIDTH) and raster.dtype == np.uint8
    assert raster.nodata == 255
    assert CRS.from_wkt(raster.georef.crs_wkt) == crs
    assert Affine(*raster.georef.transform) == transform
    assert raster.georef.pixel_size == (28.5, 28.5) and raster.georef.unit == "m"
    assert raster.block_shape == (64, 64)
    np.testing.assert_array_equal(raster.read((0, HEIGHT, 0, WIDTH))[0], group["mask"][:])
    np.testing.assert_array_equal(raster.read((10, 77, 5, 129))[0],
                                  group["mask"][10:77, 5:129])
    same = open_raster(out / "mask")
    assert same.shape == raster.shape and same.nodata == 255 and same.georef == raster.georef

    probs = open_raster(out / "probabilities")
    assert probs.shape == (3, HEIGHT, WIDTH) and probs.dtype == np.float16
    assert np.isnan(probs.nodata)
    assert probs.georef == raster.georef
    np.testing.assert_array_equal(probs.read((0, HEIGHT, 0, WIDTH)), group["probabilities"][:])
    with pytest.raises(ValueError, match="level 1"):
        open_raster(out, level=1)


def test_geotiff_output_reads_back_as_raster(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "mask.tif"
    ok(invoke("run", scene, "-o", out, *IDENTITY))
    raster = open_raster(out)
    with rasterio.open(out) as dst:
        expect, crs = dst.read(), dst.crs
    assert raster.shape == expect.shape and raster.nodata == 255
    assert CRS.from_wkt(raster.georef.crs_wkt) == crs
    np.testing.assert_array_equal(raster.read((0, HEIGHT, 0, WIDTH)), expect)


# -- recipes ----------------------------------------------------------------------------------

RECIPE = REPO / "pipelines" / "sample-unet.toml"


def _recipe() -> dict:
    """The recipe's settings by their old flat names (its tables are the plan's sections)."""
    data = tomllib.loads(RECIPE.read_text(encoding="utf-8"))
    return {"model": data["model"]["name"], "classes": data["model"]["classes"],
            "tile": data["geometry"]["tile"], "halo": data["geometry"]["halo"],
            "pad-mode": data["geometry"]["pad_mode"], "blend": data["geometry"]["blend"],
            "normalize": data["normalization"]["mode"]}


@pytest.mark.skipif(not RECIPE.is_file(), reason="pipelines/sample-unet.toml is absent")
def test_config_is_applied(scene: Path, tmp_path: Path) -> None:
    recipe = _recipe()
    out = tmp_path / "mask.zarr"
    ok(invoke("run", scene, "-o", out, "--config", RECIPE))
    attrs = zarr.open_group(out, mode="r").attrs["tilesegment"]
    prov = attrs["provenance"]
    assert prov["model"] == recipe["model"]
    assert (prov["tile"], prov["halo"]) == (recipe["tile"], recipe["halo"])
    assert prov["pad_mode"] == recipe["pad-mode"] and prov["blend"] == recipe["blend"]
    assert prov["normalization"] == recipe["normalize"]
    assert attrs["num_classes"] == recipe["classes"]


@pytest.mark.skipif(not RECIPE.is_file(), reason="pipelines/sample-unet.toml is absent")
def test_flags_override_config(scene: Path, tmp_path: Path) -> None:
    recipe = _recipe()
    assert (recipe["tile"], recipe["halo"]) != (64, 16)
    out = tmp_path / "mask.zarr"
    ok(invoke("run", scene, "-o", out, "--config", RECIPE, "--tile", "64", "--halo", "16",
              "--pad-mode", "edge"))
    attrs = zarr.open_group(out, mode="r").attrs["tilesegment"]
    prov = attrs["provenance"]
    assert (prov["tile"], prov["halo"], prov["pad_mode"]) == (64, 16, "edge")
    assert attrs["num_classes"] == recipe["classes"]  # the rest still from the recipe
    assert prov["normalization"] == recipe["normalize"]


# -- info and models --------------------------------------------------------------------------


def test_info_geotiff(scene: Path) -> None:
    text = ok(invoke("info", scene)).output
    assert f"{WIDTH} × {HEIGHT} px, 3 band(s), uint8" in text
    desc = json.loads(ok(invoke("info", scene, "--json")).stdout)
    with rasterio.open(scene) as src:
        assert CRS.from_wkt(desc["crs_wkt"]) == src.crs
        assert Affine(*desc["transform"]) == src.transform
        assert desc["shape"] == [src.count, src.height, src.width]
        assert desc["nodata"] == src.nodata
        assert desc["block_shape"] == list(src.block_shapes[0])


def test_info_zarr_output(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "mask.zarr"
    ok(invoke("run", scene, "-o", out, *IDENTITY))
    text = ok(invoke("info", out)).output
    assert f"{WIDTH} × {HEIGHT} px, 1 band(s), uint8, nodata 255" in text
    desc = json.loads(ok(invoke("info", out, "--json")).stdout)
    assert desc["shape"] == [1, HEIGHT, WIDTH] and desc["nodata"] == 255
    with rasterio.open(scene) as src:
        assert CRS.from_wkt(desc["crs_wkt"]) == src.crs
    assert desc["output"]["layer"] == "mask"
    assert desc["output"]["class_names"] == list(get_spec("identity", 3, 3).class_names)


def test_models_json_lists_unet_valid_geometry() -> None:
    rows = json.loads(ok(invoke("models", "--json")).stdout)
    by_name = {row["name"]: row for row in rows}
    row = by_name["unet-valid"]
    assert row["default_tile"] == 572
    assert row["default_tile"] - 2 * row["shrink"] == 388  # the paper's 572 → 388
    assert "388" in row["summary"]
    assert {"identity", "unet-tiny"} <= set(by_name)
    text = ok(invoke("models", "unet-valid")).output
    assert "default tile 572" in text and "shrink 92" in text
