"""Zarr v3 outputs: threaded round trip on an odd shape, attributes, chunk files, nodata,
the optional probabilities and disagreement layers."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr

from tilesegment.errors import OutputError
from tilesegment.read.base import Georef
from tilesegment.write import OutputMeta, create_output, read_output_meta

SHAPE = (97, 131)
BLOCK = (32, 48)
K = 4
GEOREF = Georef(
    crs_wkt='LOCAL_CS["test"]',
    transform=(0.5, 0.0, 100.0, 0.0, -0.5, 200.0),
    pixel_size=(0.5, 0.5),
    unit="m",
)
PROVENANCE = {"model": "unet", "weights_sha256": "ab" * 32, "halo": 16, "nested": {"a": [1, 2]}}


def make_meta(save_probabilities: bool = False, save_disagreement: bool = False) -> OutputMeta:
    return OutputMeta(
        shape=SHAPE,
        num_classes=K,
        class_names=("background", "water", "forest", "urban"),
        class_colors=((0, 0, 0), (0, 0, 255), (0, 128, 0), (200, 0, 0)),
        georef=GEOREF,
        block_shape=BLOCK,
        save_probabilities=save_probabilities,
        provenance=PROVENANCE,
        save_disagreement=save_disagreement,
    )


def block_corners() -> list[tuple[int, int]]:
    return [(r, c) for r in range(0, SHAPE[0], BLOCK[0]) for c in range(0, SHAPE[1], BLOCK[1])]


def source_mask(seed: int = 0) -> np.ndarray:
    """A random ``(H, W)`` uint8 mask whose first block is all class 0 and whose second
    block is all nodata (the fill value: zarr would skip that chunk by default)."""
    mask = np.random.default_rng(seed).integers(0, K, SHAPE).astype(np.uint8)
    mask[: BLOCK[0], : BLOCK[1]] = 0
    mask[: BLOCK[0], BLOCK[1] : 2 * BLOCK[1]] = 255
    return mask


def test_threaded_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "out.zarr"
    src = source_mask()
    skipped = (64, 96)  # never written: must read back as nodata
    out = create_output(path, make_meta())

    def task(corner: tuple[int, int]) -> None:
        r, c = corner
        out.write_block(r, c, src[r : r + BLOCK[0], c : c + BLOCK[1]])

    corners = [rc for rc in block_corners() if rc != skipped]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(task, corners))
    assert not path.exists()
    assert out.finalize() == path

    group = zarr.open_group(str(path), mode="r")
    mask = group["mask"]
    assert mask.shape == SHAPE and mask.chunks == BLOCK
    assert mask.dtype == np.uint8 and mask.fill_value == 255
    got = mask[:]
    want = src.copy()
    want[skipped[0] : skipped[0] + BLOCK[0], skipped[1] :] = 255
    np.testing.assert_array_equal(got, want)
    assert (got[64:96, 96:131] == 255).all()

    # one chunk file per written block, the all-zero and the all-nodata blocks included
    for r, c in block_corners():
        chunk = path / "mask" / "c" / str(r // BLOCK[0]) / str(c // BLOCK[1])
        assert chunk.is_file() == ((r, c) != skipped), chunk

    codecs = json.loads((path / "mask" / "zarr.json").read_text())["codecs"]
    assert any(codec["name"] == "zstd" for codec in codecs)
    assert "probabilities" not in group and "disagreement" not in group
    assert group.attrs["tilesegment"]["layers"] == ["mask"]


def test_attributes(tmp_path: Path) -> None:
    path = tmp_path / "out.zarr"
    src = source_mask(1)
    with create_output(path, make_meta()) as out:
        for r, c in block_corners():
            out.write_block(r, c, src[r : r + BLOCK[0], c : c + BLOCK[1]])
    attrs = zarr.open_group(str(path), mode="r").attrs["tilesegment"]
    assert attrs["crs_wkt"] == GEOREF.crs_wkt
    assert attrs["transform"] == list(GEOREF.transform)
    assert attrs["pixel_size"] == [0.5, 0.5] and attrs["unit"] == "m"
    assert attrs["class_names"] == ["background", "water", "forest", "urban"]
    assert attrs["class_colors"][3] == [200, 0, 0]
    assert attrs["nodata"] == 255 and attrs["num_classes"] == K
    assert attrs["provenance"] == PROVENANCE
    completion = attrs["completion"]
    assert completion["complete"] is True
    assert completion["blocks_written"] == completion["blocks_total"] == 12
    assert read_output_meta(path)["provenance"] == PROVENANCE


def test_probabilities(tmp_path: Path) -> None:
    path = tmp_path / "out.zarr"
    rng = np.random.default_rng(2)
    probs = rng.random((K, *SHAPE), dtype=np.float32)
    probs /= probs.sum(0)
    out = create_output(path, make_meta(save_probabilities=True))
    for r, c in block_corners()[1:]:  # block (0, 0) left unwritten
        sl = np.s_[r : r + BLOCK[0], c : c + BLOCK[1]]
        out.write_block(r, c, probs[(slice(None), *sl)].argmax(0), probs[(slice(None), *sl)])
    out.finalize()
    arr = zarr.open_group(str(path), mode="r")["probabilities"]
    assert arr.shape == (K, *SHAPE) and arr.chunks == (K, *BLOCK)
    assert arr.dtype == np.float16
    got = arr[:]
    assert np.isnan(got[:, : BLOCK[0], : BLOCK[1]]).all()
    np.testing.assert_array_equal(
        got[:, BLOCK[0] :], probs[:, BLOCK[0] :].astype(np.float16), strict=True
    )


def source_disagreement(seed: int = 0) -> np.ndarray:
    """A random ``(H, W)`` uint8 disagreement map: 0/1 with some nodata (255) pixels, block
    ``(0, BLOCK[1])`` all 0 (a chunk zarr would skip if it were the fill value)."""
    rng = np.random.default_rng(seed)
    flags = (rng.random(SHAPE) < 0.1).astype(np.uint8)
    flags[rng.random(SHAPE) < 0.05] = 255
    flags[: BLOCK[0], BLOCK[1] : 2 * BLOCK[1]] = 0
    return flags


def test_disagreement_layer(tmp_path: Path) -> None:
    path = tmp_path / "out.zarr"
    src, flags = source_mask(3), source_disagreement(3)
    skipped = (32, 48)  # never written: reads back as nodata (255), not as "agree" (0)
    out = create_output(path, make_meta(save_probabilities=True, save_disagreement=True))
    want = np.full(SHAPE, 255, np.uint8)
    for i, (r, c) in enumerate(block_corners()):
        if (r, c) == skipped:
            continue
        sl = np.s_[r : r + BLOCK[0], c : c + BLOCK[1]]
        probs = np.stack([src[sl] == k for k in range(K)]).astype(np.float32)
        block = flags[sl] == 1 if i % 2 else flags[sl]  # bool blocks are accepted too
        want[sl] = block
        out.write_block(r, c, src[sl], probs, disagreement=block)
    out.finalize()

    group = zarr.open_group(str(path), mode="r")
    arr = group["disagreement"]
    assert arr.shape == SHAPE and arr.chunks == BLOCK
    assert arr.dtype == np.uint8 and arr.fill_value == 255
    got = arr[:]
    np.testing.assert_array_equal(got, want)
    assert (got[32:64, 48:96] == 255).all() and set(np.unique(got)) == {0, 1, 255}
    for r, c in block_corners():  # one chunk per written block, the all-zero one included
        chunk = path / "disagreement" / "c" / str(r // BLOCK[0]) / str(c // BLOCK[1])
        assert chunk.is_file() == ((r, c) != skipped), chunk
    codecs = json.loads((path / "disagreement" / "zarr.json").read_text())["codecs"]
    assert any(codec["name"] == "zstd" for codec in codecs)
    np.testing.assert_array_equal(group["mask"][:][: BLOCK[0]], src[: BLOCK[0]])

    attrs = group.attrs["tilesegment"]
    assert attrs["layers"] == ["mask", "probabilities", "disagreement"]
    assert attrs["save_disagreement"] is True
    info = read_output_meta(path)
    assert info["layers"] == ["mask", "probabilities", "disagreement"]
    assert info["layer_paths"]["disagreement"] == str(path / "disagreement")


def test_disagreement_is_required_when_saved_and_ignored_otherwise(tmp_path: Path) -> None:
    block = np.zeros(BLOCK, np.uint8)
    out = create_output(tmp_path / "with.zarr", make_meta(save_disagreement=True))
    with pytest.raises(ValueError, match="disagreement"):
        out.write_block(0, 0, block)
    with pytest.raises(ValueError, match="disagreement"):
        out.write_block(0, 0, block, disagreement=np.full(BLOCK, 2, np.uint8))
    out.write_block(0, 0, block, None, np.ones(BLOCK, bool))  # positional works too
    out.finalize()
    assert zarr.open_group(str(tmp_path / "with.zarr"), mode="r")["disagreement"][0, 0] == 1

    path = tmp_path / "without.zarr"
    with create_output(path, make_meta()) as out:
        out.write_block(0, 0, block, disagreement=np.full(BLOCK, 7, np.float32))
    group = zarr.open_group(str(path), mode="r")
    assert "disagreement" not in group
    assert read_output_meta(path)["layers"] == ["mask"]


def test_read_output_meta_of_an_output_without_layers_key(tmp_path: Path) -> None:
    """Outputs written before ``layers`` was recorded: the layers are derived."""
    path = tmp_path / "old.zarr"
    with create_output(path, make_meta(save_probabilities=True)) as out:
        out.write_block(0, 0, np.zeros(BLOCK, np.uint8), np.zeros((K, *BLOCK), np.float32))
    group = zarr.open_group(str(path), mode="r+")
    attrs = dict(group.attrs["tilesegment"])
    del attrs["layers"], attrs["save_disagreement"]
    group.attrs["tilesegment"] = attrs
    info = read_output_meta(path)
    assert info["layers"] == ["mask", "probabilities"]
    assert set(info["layer_paths"]) == {"mask", "probabilities"}


def test_unaligned_block_is_refused(tmp_path: Path) -> None:
    out = create_output(tmp_path / "out.zarr", make_meta())
    with pytest.raises(ValueError, match="aligned"):
        out.write_block(10, 0, np.zeros(BLOCK, np.uint8))
    out.abort()


def test_no_writes_after_finalize(tmp_path: Path) -> None:
    out = create_output(tmp_path / "out.zarr", make_meta())
    out.write_block(0, 0, np.zeros(BLOCK, np.uint8))
    out.finalize()
    assert out.finalize() == tmp_path / "out.zarr"  # idempotent
    with pytest.raises(OutputError, match="finalized"):
        out.write_block(32, 0, np.zeros(BLOCK, np.uint8))
    out.abort()  # a no-op once finalized: the output stays
    assert (tmp_path / "out.zarr" / "zarr.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]
