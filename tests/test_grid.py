"""Tile geometry against brute force and against real torch networks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tilesegment.errors import GeometryError
from tilesegment.grid import (
    TileRule,
    TileSpec,
    iter_blocks,
    nearest_phase_halos,
    phase_halo,
    tiles_for_window,
)


@pytest.mark.parametrize("shape", [(97, 131), (1, 40), (40, 1), (5, 5)])
@pytest.mark.parametrize("tile,halo", [(32, 6), (16, 0), (9, 4)])
def test_cores_partition_the_output(shape, tile, halo):
    spec = TileSpec(tile=tile, halo=halo)
    hits = np.zeros(shape, dtype=int)
    for t in tiles_for_window(shape, spec, (0, shape[0], 0, shape[1])):
        r, c = t.row + halo, t.col + halo
        hits[max(r, 0):r + spec.core, max(c, 0):c + spec.core] += 1
    assert (hits == 1).all()


@pytest.mark.parametrize("blend", ["crop", "gaussian"])
def test_tiles_for_window_matches_brute_force(blend):
    shape = (101, 77)
    spec = TileSpec(tile=40, halo=10, shrink=4, blend=blend)
    reach = 0 if blend == "crop" else spec.halo - spec.shrink
    c = spec.core
    every = [(i, j) for i in range(-(-shape[0] // c)) for j in range(-(-shape[1] // c))]
    for window in [(0, 101, 0, 77), (19, 23, 40, 41), (60, 101, 0, 5), (0, 1, 76, 77)]:
        r0, r1, c0, c1 = window
        expect = [
            (i, j) for i, j in every
            if i * c - reach < r1 and (i + 1) * c + reach > r0
            and j * c - reach < c1 and (j + 1) * c + reach > c0
        ]
        got = [(t.i, t.j) for t in tiles_for_window(shape, spec, window)]
        assert got == expect


def test_blocks_cover_the_raster_once():
    hits = np.zeros((50, 33), int)
    for r0, r1, c0, c1 in iter_blocks((50, 33), (16, 10)):
        hits[r0:r1, c0:c1] += 1
    assert (hits == 1).all()


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_valid_unet_rule_agrees_with_torch(depth):
    """The legal-size rule is computed, and agrees with what a real valid U-Net accepts."""
    torch = pytest.importorskip("torch")
    from tilesegment.models.unet import UNet

    net = UNet(1, 2, depth=depth, width=1, padding="valid").eval()
    rule = TileRule(valid_depth=depth)
    legal = [s for s in range(1, 200) if rule.is_legal(s)][:4]
    assert len(legal) >= 3
    for side in legal:
        with torch.inference_mode():
            out = net(torch.zeros(1, 1, side, side)).shape[-1]
        assert out == rule.output_size(side), side
    # sizes in between make some pooling see an odd size (torch silently floors it)
    for side in range(legal[0] + 1, legal[1]):
        assert not rule.is_legal(side)


def test_paper_geometry_572_to_388():
    rule = TileRule(valid_depth=4)
    assert rule.output_size(572) == 388
    assert rule.shrink(572) == 92
    assert not rule.is_legal(570)
    assert rule.nearest_legal(570) == 572
    legal = [s for s in range(500, 700) if rule.is_legal(s)]
    assert np.all(np.diff(legal) == 16)


def test_halo_and_core_checks():
    with pytest.raises(GeometryError, match="shrink"):
        TileSpec(tile=572, halo=80, shrink=92)
    with pytest.raises(GeometryError, match="no core"):
        TileSpec(tile=32, halo=16)
    with pytest.raises(GeometryError, match="pad mode"):
        TileSpec(tile=32, halo=4, pad_mode="wrap")


def test_phase_halos_put_tile_origins_on_the_pooling_grid():
    # same-padded: halos are multiples of the stride, so tile origins i·core - halo are too
    assert TileRule(multiple=8, minimum=8).halo_phase() == 0
    assert phase_halo(51, 8) == 56 and phase_halo(48, 8) == 48 and phase_halo(0, 32) == 0
    assert nearest_phase_halos(52, 8, 0) == [48, 56]
    for tile in (256, 512, 1024):
        halo = phase_halo(51, 8)
        core = tile - 2 * halo
        assert all((i * core - halo) % 8 == 0 for i in range(5))
    # valid U-Net: every legal tile ≡ 12 (mod 16), so a core on the 16-grid needs a halo
    # ≡ 6 (mod 8); the phase is the one the smallest such halo ≥ the shrink 92 has: 94
    rule = TileRule(valid_depth=4)
    assert rule.halo_phase() == 94 % 16
    for tile in (572, 588, 700):
        assert (tile - 2 * phase_halo(92, 16, rule.halo_phase())) % 16 == 0


def test_all_windows_combinations_are_consistent():
    """Any window's tile list is the subset of the whole raster's tiles that touch it."""
    shape = (45, 38)
    spec = TileSpec(tile=20, halo=5, blend="gaussian")
    whole = {(t.i, t.j) for t in tiles_for_window(shape, spec, (0, 45, 0, 38))}
    for r0, c0 in itertools.product(range(0, 45, 7), range(0, 38, 9)):
        part = {(t.i, t.j) for t in tiles_for_window(shape, spec, (r0, r0 + 1, c0, c0 + 1))}
        assert part <= whole and part
