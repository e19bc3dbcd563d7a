"""GeoTIFF class metadata for GIS: category names and a raster attribute table in the
mask's PAM sidecar (``<name>.aux.xml``) as GDAL reads them back, published and replaced
with the mask; a palette that stays distinct past 16 classes."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil

from tilesegment.errors import OutputExistsError
from tilesegment.models.spec import PALETTE, ModelSpec, palette
from tilesegment.read.base import Georef
from tilesegment.write import OutputMeta, create_output

SHAPE, BLOCK = (40, 56), (16, 32)
NAMES = ("background", "water & ice", "<urban>", 'crop "A"')
COLORS = ((0, 0, 0), (0, 0, 255), (200, 0, 0), (10, 200, 30))
GEOREF = Georef(crs_wkt=rasterio.crs.CRS.from_epsg(32633).to_wkt(),
                transform=(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0),
                pixel_size=(10.0, 10.0), unit="m")


def meta(names=NAMES, colors=COLORS) -> OutputMeta:
    return OutputMeta(shape=SHAPE, num_classes=len(names), class_names=names,
                      class_colors=colors, georef=GEOREF, block_shape=BLOCK)


def write(path: Path, m: OutputMeta, *, overwrite: bool = False, seed: int = 0) -> np.ndarray:
    mask = np.random.default_rng(seed).integers(0, m.num_classes, SHAPE).astype(m.mask_dtype)
    with create_output(path, m, overwrite=overwrite) as out:
        for r in range(0, SHAPE[0], BLOCK[0]):
            for c in range(0, SHAPE[1], BLOCK[1]):
                out.write_block(r, c, mask[r:r + BLOCK[0], c:c + BLOCK[1]])
    return mask


def gdal_band(path: Path, tmp: Path) -> ET.Element:
    """Band 1 as GDAL sees it (the TIFF with its PAM sidecar), serialised by GDAL itself:
    a VRT copy made through rasterio carries the category names, colour table and RAT."""
    vrt = tmp / f"{path.stem}.check.vrt"
    rasterio.shutil.copy(str(path), str(vrt), driver="VRT")
    return ET.parse(vrt).getroot().find("VRTRasterBand")


def rat_rows(band: ET.Element) -> tuple[list[str], list[list[str]]]:
    table = band.find("GDALRasterAttributeTable")
    assert table is not None and table.get("tableType") == "thematic"
    fields = [f.findtext("Name") for f in table.findall("FieldDefn")]
    rows = [[cell.text or "" for cell in row.findall("F")] for row in table.findall("Row")]
    return fields, rows


def test_category_names_and_rat_read_back_through_gdal(tmp_path: Path) -> None:
    path = tmp_path / "classes.tif"
    mask = write(path, meta())
    band = gdal_band(path, tmp_path)
    assert [c.text for c in band.find("CategoryNames")] == list(NAMES)
    fields, rows = rat_rows(band)
    assert fields == ["Value", "Class", "Red", "Green", "Blue", "Alpha"]
    assert rows == [[str(i), name, *map(str, rgb), "255"]
                    for i, (name, rgb) in enumerate(zip(NAMES, COLORS, strict=True))]
    with rasterio.open(path) as ds:  # the pixels and the colour map are untouched
        np.testing.assert_array_equal(ds.read(1), mask)
        assert [ds.colormap(1)[i][:3] for i in range(len(NAMES))] == list(COLORS)
    if shutil.which("gdalinfo"):  # where the GDAL tools are installed, ask them too
        import json

        info = json.loads(subprocess.run(["gdalinfo", "-json", str(path)], check=True,
                                         capture_output=True, text=True).stdout)
        assert info["bands"][0]["categories"] == list(NAMES)


def test_pam_sidecar_follows_the_overwrite_rules(tmp_path: Path) -> None:
    path = tmp_path / "out.tif"
    pam = tmp_path / "out.tif.aux.xml"
    pam.write_text("<PAMDataset/>")  # e.g. left by a GIS; not ours
    with pytest.raises(OutputExistsError, match=r"aux\.xml"):
        create_output(path, meta())
    assert pam.read_text() == "<PAMDataset/>" and not path.exists()
    write(path, meta(), overwrite=True)
    assert [c.text for c in gdal_band(path, tmp_path).find("CategoryNames")] == list(NAMES)
    renamed = ("bg", "a", "b", "c")
    write(path, meta(names=renamed), overwrite=True, seed=1)  # replaced with the mask
    assert [c.text for c in gdal_band(path, tmp_path).find("CategoryNames")] == list(renamed)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".vrt")) == [
        "out.tif", "out.tif.aux.xml"]
    # an aborted run leaves the published pair alone and no partial sidecar
    out = create_output(path, meta(), overwrite=True)
    out.abort()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".vrt")) == [
        "out.tif", "out.tif.aux.xml"]


def test_palette_stays_distinct_past_16_classes(tmp_path: Path) -> None:
    assert palette(16) == PALETTE  # the first colours are the ones outputs always had
    for k in (17, 40, 300):
        assert len(set(palette(k))) == k
    spec = ModelSpec(name="x", in_channels=3, num_classes=40, tile_rule=None,  # type: ignore
                     receptive_radius=0, default_tile=64)
    assert len(set(spec.class_colors)) == 40
    names = tuple(f"c{i}" for i in range(40))
    path = tmp_path / "many.tif"
    write(path, meta(names=names, colors=spec.class_colors))
    with rasterio.open(path) as ds:
        cmap = ds.colormap(1)
    assert len({cmap[i] for i in range(40)}) == 40
    _, rows = rat_rows(gdal_band(path, tmp_path))
    assert [tuple(int(v) for v in row[2:5]) for row in rows] == list(spec.class_colors)
