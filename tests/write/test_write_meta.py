"""OutputMeta, block geometry checks, output kinds and the BigTIFF rule (no big files)."""

from __future__ import annotations

import numpy as np
import pytest

from tilesegment.errors import OutputError, TilesegmentError
from tilesegment.read.base import Georef
from tilesegment.write import OutputMeta, create_output, output_kind
from tilesegment.write.base import check_block, check_disagreement
from tilesegment.write.meta import meta_to_attrs
from tilesegment.write.transcode import bigtiff_option, tiff_tile_size, windows


def make_meta(k: int = 3, **kw: object) -> OutputMeta:
    args: dict = {
        "shape": (97, 131),
        "num_classes": k,
        "class_names": [f"class{i}" for i in range(k)],
        "class_colors": [(i % 256, 0, 0) for i in range(k)],
        "georef": Georef(),
        "block_shape": (32, 48),
    }
    args.update(kw)
    return OutputMeta(**args)


@pytest.mark.parametrize(
    ("k", "dtype", "nodata"),
    [(1, np.uint8, 255), (255, np.uint8, 255), (256, np.uint16, 65535), (65535, np.uint16, 65535)],
)
def test_mask_dtype_leaves_nodata_free(k: int, dtype: type, nodata: int) -> None:
    meta = make_meta(k)
    assert meta.mask_dtype == np.dtype(dtype)
    assert meta.nodata == nodata
    assert k - 1 < meta.nodata  # the largest class id is never the nodata value


def test_meta_normalises_lists_and_rejects_bad_values() -> None:
    meta = make_meta(shape=[97, 131], block_shape=[32, 48])
    assert meta.shape == (97, 131) and meta.block_shape == (32, 48)
    assert meta.class_colors[1] == (1, 0, 0)
    with pytest.raises(ValueError, match="class names"):
        make_meta(class_names=["a"])
    with pytest.raises(ValueError, match="RGB"):
        make_meta(class_colors=[(0, 0, 0), (0, 0, 300), (1, 2, 3)])
    with pytest.raises(ValueError, match="num_classes"):
        make_meta(0, class_names=[], class_colors=[])
    with pytest.raises(ValueError, match="JSON"):
        make_meta(provenance={"model": object()})
    with pytest.raises(ValueError, match="block_shape"):
        make_meta(block_shape=(0, 48))


def test_attrs_hold_everything_as_json() -> None:
    georef = Georef("WKT", (1.0, 0.0, 5.0, 0.0, -1.0, 9.0), (1.0, 1.0), "m")
    attrs = meta_to_attrs(make_meta(georef=georef, provenance={"a": [1, 2]}), kind="zarr")
    assert attrs["transform"] == [1.0, 0.0, 5.0, 0.0, -1.0, 9.0]
    assert attrs["crs_wkt"] == "WKT" and attrs["unit"] == "m"
    assert attrs["nodata"] == 255 and attrs["mask_dtype"] == "uint8"
    assert attrs["provenance"] == {"a": [1, 2]}
    assert attrs["completion"]["complete"] is False
    assert attrs["completion"]["blocks_total"] == 4 * 3


def test_block_checks() -> None:
    meta = make_meta(save_probabilities=True)
    probs = np.zeros((3, 32, 48), np.float32)
    mask, out = check_block(meta, 32, 48, np.zeros((32, 48), np.int64), probs)
    assert mask.dtype == np.uint8 and out is not None and out.dtype == np.float16
    edge = np.zeros((97 - 96, 131 - 96), np.uint8)
    check_block(meta, 96, 96, edge, np.zeros((3, *edge.shape), np.float16))
    with pytest.raises(ValueError, match="not aligned"):
        check_block(meta, 16, 0, np.zeros((32, 48), np.uint8), probs)
    with pytest.raises(ValueError, match="outside"):
        check_block(meta, 128, 0, np.zeros((32, 48), np.uint8), probs)
    with pytest.raises(ValueError, match="shape"):
        check_block(meta, 96, 0, np.zeros((32, 48), np.uint8), probs)
    with pytest.raises(ValueError, match="integer"):
        check_block(meta, 0, 0, np.zeros((32, 48), np.float32), probs)
    with pytest.raises(ValueError, match="class id 3"):
        check_block(meta, 0, 0, np.full((32, 48), 3, np.uint8), probs)
    with pytest.raises(ValueError, match="pass them"):
        check_block(meta, 0, 0, np.zeros((32, 48), np.uint8), None)
    with pytest.raises(ValueError, match="shape"):
        check_block(meta, 0, 0, np.zeros((32, 48), np.uint8), probs[:2])
    # nodata is a legal value in a block (pixels the task could not compute)
    check_block(meta, 0, 0, np.full((32, 48), 255, np.uint8), probs)


def test_disagreement_checks() -> None:
    meta = make_meta(save_disagreement=True)
    flags = np.zeros((32, 48), bool)
    flags[3, 4] = True
    got = check_disagreement(meta, 32, 48, flags)
    assert got is not None and got.dtype == np.uint8 and got[3, 4] == 1 and got.sum() == 1
    values = np.array([0, 1, 255] * 16 * 32, np.int64).reshape(32, 48)
    got = check_disagreement(meta, 0, 0, values)
    assert got is not None and got.dtype == np.uint8
    np.testing.assert_array_equal(got, values)
    edge = check_disagreement(meta, 96, 96, np.ones((1, 35), np.uint8))
    assert edge is not None and edge.shape == (1, 35)
    with pytest.raises(ValueError, match="pass it"):
        check_disagreement(meta, 0, 0, None)
    with pytest.raises(ValueError, match="shape"):
        check_disagreement(meta, 96, 0, flags)
    with pytest.raises(ValueError, match="not aligned"):
        check_disagreement(meta, 16, 0, flags)
    with pytest.raises(ValueError, match="dtype float32"):
        check_disagreement(meta, 0, 0, flags.astype(np.float32))
    with pytest.raises(ValueError, match="holds 2"):
        check_disagreement(meta, 0, 0, np.full((32, 48), 2, np.uint8))
    # not saved: ignored, whatever it is
    assert check_disagreement(make_meta(), 0, 0, np.full((5, 5), 9.5)) is None


def test_layers_recorded_in_attrs() -> None:
    assert meta_to_attrs(make_meta(), kind="zarr")["layers"] == ["mask"]
    both = make_meta(save_probabilities=True, save_disagreement=True)
    attrs = meta_to_attrs(both, kind="geotiff")
    assert attrs["layers"] == ["mask", "probabilities", "disagreement"]
    assert attrs["save_disagreement"] is True
    assert make_meta(save_disagreement=True).layers == ("mask", "disagreement")


@pytest.mark.parametrize(
    ("name", "kind"), [("a.zarr", "zarr"), ("a.tif", "geotiff"), ("A.TIFF", "geotiff")]
)
def test_output_kind(name: str, kind: str) -> None:
    assert output_kind(name) == kind


@pytest.mark.parametrize("name", ["out.png", "out.nc", "out"])
def test_unsupported_extension(tmp_path, name: str) -> None:
    with pytest.raises(OutputError) as info:
        create_output(tmp_path / name, make_meta())
    message = str(info.value)
    assert ".zarr" in message and ".tif" in message and ".tiff" in message
    suffix = name.partition(".")[2]
    assert (f"'.{suffix}'" if suffix else "no extension") in message
    assert isinstance(info.value, TilesegmentError)
    assert list(tmp_path.iterdir()) == []


def test_cog_needs_geotiff(tmp_path) -> None:
    with pytest.raises(OutputError, match="cog"):
        create_output(tmp_path / "a.zarr", make_meta(), cog=True)


def test_bigtiff_decision_on_big_fake_meta() -> None:
    big = make_meta(shape=(70_000, 70_000), block_shape=(2048, 2048))  # 4.9 GB of uint8
    assert bigtiff_option(big.shape, 1, big.mask_dtype) == "YES"
    small = make_meta(shape=(20_000, 20_000), block_shape=(2048, 2048))  # 0.4 GB
    assert bigtiff_option(small.shape, 1, small.mask_dtype) == "IF_SAFER"
    # 3.2 GB: below the limit alone, above it once overviews (+1/3) are added
    edge = make_meta(shape=(56_755, 56_755), block_shape=(2048, 2048))
    assert bigtiff_option(edge.shape, 1, edge.mask_dtype) == "IF_SAFER"
    assert bigtiff_option(edge.shape, 1, edge.mask_dtype, overviews=True) == "YES"
    # probabilities: K float32 bands of a modest mask pass 4 GiB
    probs = make_meta(10, shape=(12_000, 12_000), block_shape=(2048, 2048))
    assert bigtiff_option(probs.shape, 1, probs.mask_dtype) == "IF_SAFER"
    assert bigtiff_option(probs.shape, probs.num_classes, np.float32) == "YES"
    # uint16 masks count two bytes a pixel
    wide = make_meta(300, shape=(50_000, 50_000), block_shape=(2048, 2048))
    assert wide.mask_dtype == np.uint16
    assert bigtiff_option(wide.shape, 1, wide.mask_dtype) == "YES"


@pytest.mark.parametrize(
    ("shape", "block"), [((97, 131), (32, 48)), ((1100, 1300), (256, 300)), ((700, 513), (700, 1))]
)
def test_transcode_windows_cover_once_aligned_and_bounded(shape, block) -> None:
    tile = tiff_tile_size(shape)
    hits = np.zeros(shape, np.int32)
    for r0, r1, c0, c1 in windows(shape, block, tile):
        assert r0 % tile == 0 and c0 % tile == 0
        assert r1 - r0 <= -(-block[0] // tile) * tile and c1 - c0 <= -(-block[1] // tile) * tile
        hits[r0:r1, c0:c1] += 1
    assert (hits == 1).all()
