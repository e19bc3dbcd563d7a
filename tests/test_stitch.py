"""Stitching: Gaussian weights, and the map of where overlapping tiles disagree."""

from __future__ import annotations

import numpy as np

from tests.helpers import ConvStack
from tilesegment import segment
from tilesegment.grid import TileSpec, tiles_for_window
from tilesegment.merge.gaussian import MIN_WEIGHT, gaussian_weight


def test_gaussian_weight_is_positive_everywhere_and_peaks_in_the_middle():
    w = gaussian_weight(33)
    assert w.min() >= MIN_WEIGHT and w.max() == 1.0
    assert w[16, 16] == 1.0 and np.allclose(w, w.T) and np.allclose(w, w[::-1])


def test_identical_tiles_never_disagree():
    image = np.random.default_rng(0).normal(size=(3, 70, 90)).astype(np.float32)
    d = segment(image, model="identity", tile=32, halo=8, blend="gaussian",
                returns="disagreement")
    assert d.shape == (70, 90) and d.max() == 0


def test_disagreement_only_where_tiles_overlap():
    image = np.random.default_rng(1).normal(size=(2, 90, 100)).astype(np.float32)
    net = ConvStack(2, 3, layers=6, dilation=2)
    spec = TileSpec(tile=40, halo=10, blend="gaussian")
    d = segment(image, model=net, tile=40, halo=10, blend="gaussian",
                returns="disagreement")
    cover = np.zeros((90, 100), int)
    for t in tiles_for_window((90, 100), spec, (0, 90, 0, 100)):
        cover[max(t.row, 0):t.row + 40, max(t.col, 0):t.col + 40] += 1
    assert d.any()                       # a radius-12 net with halo 10 does disagree
    assert not d[cover == 1].any()       # never where a single tile decides
    crop = segment(image, model=net, tile=40, halo=10, returns="disagreement")
    assert crop.max() == 0
