"""The splitter: training tiles and label crops line up with what inference stitches.

A valid-convolution U-Net's geometry (``unet-valid-tiny``: tile 188 → output 100, shrink 44)
with an identity-like module in its place: the output is the input centre-cropped by the
shrink. So for every training pair the model's output on the image tile, the label crop of a
label raster equal to the input, and the stitched output of a real run at the same place
must be the same pixels; any offset between them shows as different values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from tilesegment import segment
from tilesegment.grid import TileSpec
from tilesegment.split import Splitter

TILE = 188
MEAN, STD = np.array([20.0, 30.0]), np.array([4.0, 8.0])


class CentreCrop(torch.nn.Module):
    """``float32[N, C, T, T]`` → the same bands cropped by the valid U-Net's shrink at T."""

    def __init__(self, rule):
        super().__init__()
        self.rule = rule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.rule.shrink(x.shape[-1])
        return x[:, :, s:x.shape[-2] - s, s:x.shape[-1] - s]


@contextmanager
def _valid_identity() -> Iterator[tuple[str, TileSpec, CentreCrop]]:
    """The crop module registered, for the duration, with ``unet-valid-tiny``'s spec."""
    from tilesegment.models import registry

    original = registry.get_entry("unet-valid-tiny")
    spec = original.spec(2, 2)
    net = CentreCrop(spec.tile_rule)
    alias = "test-valid-identity"
    registry.register_model(registry.ModelEntry(
        alias, "test", lambda c, k: dataclasses.replace(original.spec(c, k), name=alias),
        lambda c, k, **options: net, default_classes=2, trainable=False))
    tspec = TileSpec(tile=TILE, halo=spec.default_halo(TILE), shrink=spec.check_tile(TILE))
    try:
        yield alias, tspec, net
    finally:
        registry._REGISTRY.pop(alias, None)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50, (2, h, w)).astype(np.float32)


def _model(net: CentreCrop, image: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return net(torch.from_numpy(image[None]))[0].numpy()


def test_training_pairs_line_up_with_the_stitched_output():
    h, w = 150, 230
    image = _image(h, w)
    labels = image[0].astype(np.int64)  # a label raster equal to the input's first band
    with _valid_identity() as (alias, tspec, net):
        stitched = segment(image, model=alias, classes=2, tile=TILE, halo=tspec.halo,
                           returns="logits", normalization=[MEAN.tolist(), STD.tolist()])
        splitter = Splitter(image, tspec, MEAN, STD)
        tiles = splitter.tiles_for((0, h, 0, w))
        tiles += splitter.random_tiles(np.random.default_rng(1), 20)
        assert len(tiles) == 6 + 20
        for tile in tiles:
            x, y = splitter.training_pair(tile, labels, ignore_index=-1)
            assert x.dtype == np.float32 and x.shape == (2, TILE, TILE)
            assert y.dtype == np.int64 and y.shape == (tspec.out_side, tspec.out_side)
            out = _model(net, x)
            r0, c0 = tile.row + tspec.shrink, tile.col + tspec.shrink
            rows = np.arange(r0, r0 + tspec.out_side)
            cols = np.arange(c0, c0 + tspec.out_side)
            inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None]
            assert np.array_equal(y == -1, ~inside)  # ignored exactly outside the raster
            ya, xa = max(r0, 0), max(c0, 0)
            part = (slice(ya - r0, min(r0 + tspec.out_side, h) - r0),
                    slice(xa - c0, min(c0 + tspec.out_side, w) - c0))
            there = (slice(None), slice(ya, ya + part[0].stop - part[0].start),
                     slice(xa, xa + part[1].stop - part[1].start))
            # the label crop is the raw input where the model's output lies ...
            assert np.array_equal(y[part], image[0][there[1:]].astype(np.int64))
            # ... the model's output on the tile is that input, normalised ...
            normalised = (image - MEAN[:, None, None]) / STD[:, None, None]
            assert np.allclose(out[(slice(None), *part)], normalised[there], atol=1e-5)
            # ... and inference stitched the same values there.
            assert np.array_equal(out[(slice(None), *part)], stitched[there])


@pytest.mark.parametrize("mode", ["reflect", "symmetric", "edge", "constant"])
def test_edge_tiles_are_padded_as_numpy_pads(mode):
    h, w = 70, 90
    image = _image(h, w, seed=2)
    with _valid_identity() as (_, tspec, _net):
        tspec = dataclasses.replace(tspec, pad_mode=mode)
        splitter = Splitter(image, tspec, pad_value=7.0)
        pad = TILE
        kwargs = {"constant_values": 7.0} if mode == "constant" else {}
        ref = np.pad(image, ((0, 0), (pad, pad), (pad, pad)), mode=mode, **kwargs)
        for tile in splitter.tiles_for((0, h, 0, w)):
            assert tile.row < 0 and tile.col < 0  # a tile reaching past the raster edge
            x, y = splitter.training_pair(tile, image[0].astype(np.int64), ignore_index=255)
            window = ref[:, tile.row + pad:tile.row + pad + TILE,
                         tile.col + pad:tile.col + pad + TILE]
            assert np.array_equal(x, window)
            s = tspec.shrink
            rows = np.arange(tile.row + s, tile.row + TILE - s)
            cols = np.arange(tile.col + s, tile.col + TILE - s)
            outside = ~(((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None])
            assert (y[outside] == 255).all() and outside.any()
            assert np.array_equal(y[~outside], window[0, s:TILE - s, s:TILE - s][~outside])


def test_missing_input_is_zero_in_the_tile_and_ignored_in_the_labels():
    image = _image(120, 120, seed=3)
    image[:, 60, 61] = np.nan          # missing in every band: ignored
    image[0, 70, 71] = np.nan          # one band only: the pixel is still valid
    with _valid_identity() as (_, tspec, _net):
        splitter = Splitter(image, tspec, MEAN, STD)
        tile = splitter.random_tiles(np.random.default_rng(0), 1, region=(20, 120, 20, 120))[0]
        x, y = splitter.training_pair(tile, np.zeros((120, 120), np.int64), ignore_index=9)
        s = tspec.shrink
        assert (x[:, 60 - tile.row, 61 - tile.col] == 0).all()
        assert x[0, 70 - tile.row, 71 - tile.col] == 0
        assert y[60 - tile.row - s, 61 - tile.col - s] == 9
        assert y[70 - tile.row - s, 71 - tile.col - s] == 0
        assert (y == 9).sum() == 1


def test_random_tiles_keep_their_output_inside_the_region():
    h, w = 300, 400
    image = _image(h, w, seed=4)
    labels = np.ones((h, w), np.int64)
    with _valid_identity() as (_, tspec, _net):
        splitter = Splitter(image, tspec)
        o, s = tspec.out_side, tspec.shrink
        region = (10, 290, 0, 200)  # the left half, less a strip at top and bottom
        tiles = splitter.random_tiles(np.random.default_rng(5), 200, region=region)
        again = splitter.random_tiles(np.random.default_rng(5), 200, region=region)
        assert tiles == again  # seeded
        starts = np.array([(t.row + s, t.col + s) for t in tiles])
        assert starts[:, 0].min() >= 10 and starts[:, 0].max() + o <= 290
        assert starts[:, 1].min() >= 0 and starts[:, 1].max() + o <= 200
        assert len(set(map(tuple, starts))) > 150  # spread over the region, not one spot
        for tile in tiles[:5]:
            _, y = splitter.training_pair(tile, labels, ignore_index=0, region=region)
            assert (y == 1).all()  # wholly inside: every label used
        # a region narrower than the output: the output covers it, the rest is ignored
        narrow = (50, 250, 100, 130)
        for tile in splitter.random_tiles(np.random.default_rng(6), 10, region=narrow):
            _, y = splitter.training_pair(tile, labels, ignore_index=0, region=narrow)
            c0 = tile.col + s
            assert c0 <= 100 and c0 + o >= 130
            used = np.nonzero(y.any(axis=0))[0] + c0
            assert used.min() == 100 and used.max() == 129
            assert (y[:, (np.arange(o) + c0 < 100) | (np.arange(o) + c0 >= 130)] == 0).all()
        # on the grid: grid tiles whose output meets the region
        grid = splitter.random_tiles(np.random.default_rng(7), 30, region=region, on_grid=True)
        everything = splitter.tiles_for((0, h, 0, w))
        assert all(t in everything for t in grid)
        assert all(t.col + s < 200 for t in grid)
        with pytest.raises(ValueError, match="no pixel"):
            splitter.random_tiles(np.random.default_rng(0), 1, region=(0, 10, w, w + 5))
