"""Zarr arrays (v2, v3) and OME-Zarr multiscale groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from tilesegment.errors import DamagedInputError, InputError
from tilesegment.read import open_raster
from tilesegment.read.zarr_reader import ZarrRaster


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_plain_array(tmp_path: Path, rng: np.random.Generator, zarr_format: int) -> None:
    data = rng.integers(0, 1000, (3, 50, 70), dtype=np.int32)
    path = tmp_path / "plain.zarr"
    array = zarr.create_array(path, shape=data.shape, chunks=(1, 16, 32), dtype=data.dtype,
                              zarr_format=zarr_format)
    array[:] = data
    raster = open_raster(path)
    assert isinstance(raster, ZarrRaster) and raster.kind == "zarr"
    assert raster.shape == (3, 50, 70) and raster.dtype == np.int32
    assert raster.block_shape == (16, 32)
    assert raster.describe()["zarr_format"] == zarr_format
    np.testing.assert_array_equal(raster.read((3, 47, 10, 69)), data[:, 3:47, 10:69])


def test_plain_2d_array_with_georef_attrs(tmp_path: Path) -> None:
    data = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)
    path = tmp_path / "georef.zarr"
    array = zarr.create_array(path, shape=data.shape, chunks=(8, 8), dtype=data.dtype)
    array[:] = data
    array.attrs.update(nodata=-1.0, crs_wkt="LOCAL_CS[\"x\"]", unit="m",
                       transform=[2.0, 0.0, 10.0, 0.0, -2.0, 50.0], pixel_size=[2.0, 2.0])
    raster = open_raster(path)
    assert raster.shape == (1, 20, 30) and raster.nodata == -1.0
    assert raster.georef.transform == (2.0, 0.0, 10.0, 0.0, -2.0, 50.0)
    assert raster.georef.pixel_size == (2.0, 2.0) and raster.georef.unit == "m"
    np.testing.assert_array_equal(raster.read((0, 20, 0, 30))[0], data)


def _ome_zarr(path: Path, levels: list[np.ndarray], version: str) -> None:
    """Write ``levels`` ``(C, H, W)`` as an OME-Zarr with axes tczyx, 0.5 µm at level 0."""
    group = zarr.open_group(path, mode="w", zarr_format=3 if version == "0.5" else 2)
    datasets = []
    for i, level in enumerate(levels):
        array = group.create_array(str(i), shape=(1, level.shape[0], 1, *level.shape[1:]),
                                   chunks=(1, 1, 1, 16, 16), dtype=level.dtype)
        array[:] = level[np.newaxis, :, np.newaxis]
        scale = [1.0, 1.0, 1.0, 0.5 * 2**i, 0.5 * 2**i]
        datasets.append({"path": str(i),
                         "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
            {"name": "z", "type": "space", "unit": "micrometer"},
            {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    multiscales = [{"version": version, "axes": axes, "datasets": datasets}]
    if version == "0.5":
        group.attrs["ome"] = {"version": version, "multiscales": multiscales}
    else:
        group.attrs["multiscales"] = multiscales


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_multiscale(tmp_path: Path, rng: np.random.Generator, version: str) -> None:
    base = rng.integers(0, 255, (2, 64, 48), dtype=np.uint8)
    levels = [base, base[:, ::2, ::2].copy()]
    path = tmp_path / "image.ome.zarr"
    _ome_zarr(path, levels, version)
    raster = open_raster(path)
    assert raster.shape == (2, 64, 48)
    assert [lv.shape for lv in raster.levels] == [(64, 48), (32, 24)]
    assert [lv.pixel_size for lv in raster.levels] == [(0.5, 0.5), (1.0, 1.0)]
    assert raster.georef.unit == "um"
    np.testing.assert_array_equal(raster.read((5, 60, 3, 40)), base[:, 5:60, 3:40])
    low = open_raster(path, mpp=1.0)
    assert low.level == 1 and low.shape == (2, 32, 24)
    np.testing.assert_array_equal(low.read((0, 32, 0, 24)), levels[1])


def test_group_without_multiscales(tmp_path: Path) -> None:
    group = zarr.open_group(tmp_path / "bare.zarr", mode="w")
    group.create_array("mask", shape=(4, 4), dtype="u1")
    with pytest.raises(InputError, match=r"bare\.zarr: Zarr group without OME-Zarr"):
        open_raster(tmp_path / "bare.zarr")
    assert open_raster(tmp_path / "bare.zarr" / "mask").shape == (1, 4, 4)


def test_corrupt_chunk(tmp_path: Path) -> None:
    path = tmp_path / "broken.zarr"
    array = zarr.create_array(path, shape=(32, 32), chunks=(16, 16), dtype="f4")
    array[:] = 1.0
    chunk = path / "c" / "1" / "1"
    chunk.write_bytes(b"this is not zstd data")
    raster = open_raster(path)
    np.testing.assert_array_equal(raster.read((0, 16, 0, 16)), 1.0)
    with pytest.raises(DamagedInputError, match=r"broken\.zarr: cannot read window rows 10:20"):
        raster.read((10, 20, 10, 20))


def test_tilesegment_output_disagreement_layer(tmp_path: Path, rng: np.random.Generator) -> None:
    """``out.zarr/disagreement``: one uint8 band, nodata 255, the group's georeference."""
    from tilesegment.read.base import Georef
    from tilesegment.write import OutputMeta, create_output

    shape, block = (70, 90), (32, 40)
    georef = Georef('LOCAL_CS["t"]', (2.0, 0.0, 10.0, 0.0, -2.0, 50.0), (2.0, 2.0), "m")
    meta = OutputMeta(shape=shape, num_classes=2, class_names=("a", "b"),
                      class_colors=((0, 0, 0), (9, 9, 9)), georef=georef, block_shape=block,
                      save_disagreement=True)
    labels = rng.integers(0, 2, shape, dtype=np.uint8)
    flags = rng.random(shape) < 0.3
    path = tmp_path / "out.zarr"
    with create_output(path, meta) as out:
        for r in range(0, shape[0], block[0]):
            for c in range(0, shape[1], block[1]):
                if (r, c) != (32, 40):  # left unwritten: nodata
                    sl = np.s_[r : r + block[0], c : c + block[1]]
                    out.write_block(r, c, labels[sl], disagreement=flags[sl])
    want = flags.astype(np.uint8)
    want[32:64, 40:80] = 255

    layer = open_raster(path / "disagreement")
    assert isinstance(layer, ZarrRaster)
    assert layer.shape == (1, *shape) and layer.dtype == np.uint8
    assert layer.nodata == 255 and layer.block_shape == block
    assert layer.georef == georef
    np.testing.assert_array_equal(layer.read((0, shape[0], 0, shape[1]))[0], want)
    np.testing.assert_array_equal(layer.read((30, 70, 35, 85))[0], want[30:70, 35:85])
    info = layer.describe()["output"]
    assert info["layer"] == "disagreement" and info["layers"] == ["mask", "disagreement"]

    mask = open_raster(path)  # the group still opens as its mask
    assert mask.shape == (1, *shape) and mask.nodata == 255 and mask.georef == georef
    assert mask.describe()["output"]["layer"] == "mask"

    plain = tmp_path / "plain.zarr"  # an output without the layer: nothing to open
    with create_output(plain, OutputMeta(shape=shape, num_classes=2, class_names=("a", "b"),
                                         class_colors=((0, 0, 0), (9, 9, 9)), georef=georef,
                                         block_shape=block)) as out:
        out.write_block(0, 0, labels[:32, :40])
    with pytest.raises(InputError, match="not found"):
        open_raster(plain / "disagreement")
