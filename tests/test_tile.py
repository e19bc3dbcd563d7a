"""Padding a window of the virtual canvas equals numpy.pad of the whole raster."""

from __future__ import annotations

import numpy as np
import pytest

from tilesegment.split import cut_tiles, read_canvas

MODES = ["reflect", "symmetric", "edge", "constant"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(97, 131), (1, 9), (9, 1), (1, 1), (3, 4)])
def test_canvas_equals_numpy_pad(mode, shape):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 1000, (2, *shape)).astype(np.int32)
    reads = []

    def read(w):
        reads.append(w)
        return a[:, w[0]:w[1], w[2]:w[3]].copy()

    pad = 25  # wider than most of these rasters
    ref = np.pad(a, ((0, 0), (pad, pad), (pad, pad)), mode=mode)
    h, w = shape
    for window in [(-pad, h + pad, -pad, w + pad), (-3, 2, w - 1, w + 7), (0, h, 0, w)]:
        r0, r1, c0, c1 = window
        got = read_canvas(read, shape, window, mode, cval=0)
        assert np.array_equal(got, ref[:, r0 + pad:r1 + pad, c0 + pad:c1 + pad])
    # only in-raster windows are ever read
    assert all(0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w for r0, r1, c0, c1 in reads)


def test_symmetric_is_what_dask_calls_reflect():
    da = pytest.importorskip("dask.array")
    a = np.arange(30, dtype=float).reshape(1, 5, 6)
    dask_pad = da.overlap.overlap(da.from_array(a[0], chunks=(5, 6)), depth=3,
                                  boundary="reflect").compute()
    ours = read_canvas(lambda w: a[:, w[0]:w[1], w[2]:w[3]], (5, 6), (-3, 8, -3, 9),
                       "symmetric")
    assert np.array_equal(ours[0], dask_pad)


def test_cut_tiles_positions():
    canvas = np.arange(2 * 10 * 12).reshape(2, 10, 12)
    tiles = cut_tiles(canvas, (-2, -3), [(-2, -3), (1, 2)], 4)
    assert tiles.shape == (2, 2, 4, 4)
    assert np.array_equal(tiles[1], canvas[:, 3:7, 5:9])
