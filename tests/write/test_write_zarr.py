"""Zarr v3 outputs: threaded round trip on an odd shape, attributes, chunk files, nodata."""

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


def make_meta(save_probabilities: bool = False) -> OutputMeta:
    return OutputMeta(
        shape=SHAPE,
        num_classes=K,
        class_names=("background", "water", "forest", "urban"),
        class_colors=((0, 0, 0), (0, 0, 255), (0, 128, 0), (200, 0, 0)),
        georef=GEOREF,
        block_shape=BLOCK,
        save_probabilities=save_probabilities,
        provenance=PROVENANCE,
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
    assert "probabilities" not in group


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
