"""The merger contract: crop and gaussian against independent NumPy placements."""

from __future__ import annotations

import numpy as np
import pytest

from tilesegment.grid import BLEND_MODES, TileSpec, tiles_for_window
from tilesegment.merge import MERGERS, CropMerger, GaussianMerger, merger_for
from tilesegment.merge.gaussian import gaussian_weight

SHAPE = (50, 63)
K = 3


def _outputs(spec: TileSpec, tiles, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(len(tiles), K, spec.out_side, spec.out_side)).astype(np.float32)


def _merge(kind, spec, window, tiles, outputs, batch: int):
    merger = kind(spec, window, outputs.shape[1])
    for start in range(0, len(tiles), batch):
        merger.add(tiles[start:start + batch], outputs[start:start + batch])
    return merger


def test_the_registry_covers_every_blend():
    assert set(MERGERS) == set(BLEND_MODES)
    assert merger_for("crop") is CropMerger and merger_for("gaussian") is GaussianMerger
    with pytest.raises(ValueError, match="unknown"):
        merger_for("median")


@pytest.mark.parametrize("window", [(0, 50, 0, 63), (7, 40, 11, 55), (45, 50, 0, 9)])
def test_crop_places_each_core_where_numpy_does(window):
    spec = TileSpec(tile=20, halo=5, shrink=2)
    everything = tiles_for_window(SHAPE, spec, (0, *SHAPE[:1], 0, SHAPE[1]))
    outputs = _outputs(spec, everything)
    # Reference: every pixel of every core, one by one, on a canvas larger than the raster.
    ref = np.full((K, SHAPE[0] + 40, SHAPE[1] + 40), np.nan, np.float32)
    keep = spec.halo - spec.shrink
    for tile, out in zip(everything, outputs, strict=True):
        for p in range(spec.core):
            for q in range(spec.core):
                ref[:, tile.row + spec.halo + p, tile.col + spec.halo + q] = out[:, keep + p,
                                                                                 keep + q]
    index = {(t.i, t.j): n for n, t in enumerate(everything)}
    tiles = tiles_for_window(SHAPE, spec, window)
    mine = outputs[[index[t.i, t.j] for t in tiles]]
    r0, r1, c0, c1 = window
    for batch in (1, 4, len(tiles)):
        merger = _merge(CropMerger, spec, window, tiles, mine, batch)
        assert merger.result().dtype == np.float32
        assert np.array_equal(merger.result(), ref[:, r0:r1, c0:c1])
        assert merger.disagreement() is None


def test_gaussian_is_the_weighted_mean_and_the_same_whatever_the_block():
    spec = TileSpec(tile=24, halo=8, shrink=2, blend="gaussian", blend_margin=1)
    full = (0, SHAPE[0], 0, SHAPE[1])
    everything = tiles_for_window(SHAPE, spec, full)
    outputs = _outputs(spec, everything, seed=1)
    # Reference in float64: Σ w·out / Σ w over the blended part of each output.
    m, side = spec.blend_margin, spec.blend_side
    weight = gaussian_weight(side).astype(np.float64)
    num = np.zeros((K, SHAPE[0] + 60, SHAPE[1] + 60))
    den = np.zeros((SHAPE[0] + 60, SHAPE[1] + 60))
    pad = 30
    for tile, out in zip(everything, outputs, strict=True):
        y, x = tile.row + spec.shrink + m + pad, tile.col + spec.shrink + m + pad
        num[:, y:y + side, x:x + side] += weight * out[:, m:m + side, m:m + side]
        den[y:y + side, x:x + side] += weight
    inside = (slice(pad, pad + SHAPE[0]), slice(pad, pad + SHAPE[1]))
    ref = num[(slice(None), *inside)] / den[inside]
    whole = _merge(GaussianMerger, spec, full, everything, outputs, 3).result()
    assert np.allclose(whole, ref, atol=1e-5)
    # Constant outputs blend to that constant: the weights are normalised.
    flat = np.broadcast_to(np.arange(K, dtype=np.float32)[None, :, None, None],
                           outputs.shape).copy()
    blended = _merge(GaussianMerger, spec, full, everything, flat, 5).result()
    assert np.allclose(blended, np.arange(K)[:, None, None], atol=1e-6)
    # Blocks see the same tiles in the same (global) order: the same bytes as the whole.
    index = {(t.i, t.j): n for n, t in enumerate(everything)}
    for window in [(0, 20, 0, 30), (20, 50, 30, 63), (13, 37, 5, 61)]:
        tiles = tiles_for_window(SHAPE, spec, window)
        block = _merge(GaussianMerger, spec, window, tiles,
                       outputs[[index[t.i, t.j] for t in tiles]], 2).result()
        r0, r1, c0, c1 = window
        assert np.array_equal(block, whole[:, r0:r1, c0:c1])
    # Another order of the same tiles: equal up to float rounding only.
    order = np.random.default_rng(2).permutation(len(everything))
    shuffled = _merge(GaussianMerger, spec, full, [everything[n] for n in order],
                      outputs[order], 4).result()
    assert np.allclose(shuffled, whole, atol=1e-5)


def test_gaussian_disagreement_only_where_votes_differ():
    spec = TileSpec(tile=24, halo=8, shrink=0, blend="gaussian")
    full = (0, 40, 0, 40)
    tiles = tiles_for_window((40, 40), spec, full)
    outputs = np.zeros((len(tiles), 2, 24, 24), np.float32)
    outputs[:, 0] = 1.0  # every tile votes class 0 ...
    special = 0
    outputs[special, :] = [[[0.0]], [[1.0]]]  # ... but the first votes class 1
    merger = _merge(GaussianMerger, spec, full, tiles, outputs, 8)
    t = tiles[special]
    cover = np.zeros((40, 40), int)
    for other in tiles:
        cover[max(other.row, 0):other.row + 24, max(other.col, 0):other.col + 24] += 1
    mine = np.zeros((40, 40), bool)
    mine[max(t.row, 0):t.row + 24, max(t.col, 0):t.col + 24] = True
    assert np.array_equal(merger.disagreement(), mine & (cover > 1))
    with pytest.raises(ValueError, match="tiles but"):
        merger.add(tiles[:2], outputs[:1])
