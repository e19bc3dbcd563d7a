"""The refiner contract: a refiner with reach R sees the block widened by R (cut at the
raster edge) with the raw image there, and what it returns is the block."""

from __future__ import annotations

import numpy as np
import pytest

from tilesegment.block import BlockJob, block_array
from tilesegment.grid import TileSpec
from tilesegment.read.array import ArrayRaster
from tilesegment.refine import REFINERS, CRFRefiner, Refiner, inner, refiner_for, widen
from tilesegment.workers import ModelRecipe, with_content_key

SHAPE = (50, 60)


class Recording(Refiner):
    """Adds ``offset`` to the logits of the block and remembers what it was given."""

    def __init__(self, reach: int, offset: float) -> None:
        self._reach = reach
        self.offset = offset
        self.seen: list[tuple] = []

    @property
    def reach(self) -> int:
        return self._reach

    def refine(self, logits, image, have, want):
        self.seen.append((have, want, logits.copy(), None if image is None else image.copy()))
        return logits[(slice(None), *inner(have, want))] + np.float32(self.offset)


def _job(image: np.ndarray, refiners) -> BlockJob:
    recipe = with_content_key(ModelRecipe(in_channels=2, num_classes=2, out_side=16,
                                          name="identity", device="cpu"))
    return BlockJob(raster=ArrayRaster(image), spec=TileSpec(tile=16, halo=4), recipe=recipe,
                    mean=None, std=None, refiners=tuple(refiners))


def test_widen_cuts_at_the_raster_edge():
    assert widen((10, 20, 30, 40), 5, SHAPE) == (5, 25, 25, 45)
    assert widen((0, 20, 45, 60), 8, SHAPE) == (0, 28, 37, 60)
    assert widen((0, 50, 0, 60), 100, SHAPE) == (0, 50, 0, 60)
    assert inner((5, 25, 25, 45), (10, 20, 30, 40)) == (slice(5, 15), slice(5, 15))


@pytest.mark.parametrize("window", [(0, 20, 0, 24), (20, 40, 24, 48), (40, 50, 48, 60)])
def test_a_refiner_sees_its_reach_and_returns_the_block(window):
    image = np.random.default_rng(0).normal(size=(2, *SHAPE)).astype(np.float32)
    first, second = Recording(3, 10.0), Recording(5, 100.0)
    logits, _ = block_array(_job(image, [first, second]), window, "logits", np.dtype(np.uint8))
    r0, r1, c0, c1 = window
    # The identity model's logits are the image: refined, the block is the image + 110.
    assert np.allclose(logits, image[:, r0:r1, c0:c1] + 110.0, atol=1e-4)
    (have1, want1, logits1, image1), = first.seen
    (have2, want2, logits2, image2), = second.seen
    h, w = SHAPE
    expect1 = (max(0, r0 - 8), min(h, r1 + 8), max(0, c0 - 8), min(w, c1 + 8))
    expect2 = (max(0, r0 - 5), min(h, r1 + 5), max(0, c0 - 5), min(w, c1 + 5))
    assert (have1, want1, have2, want2) == (expect1, expect2, expect2, window)
    for have, seen_logits, seen_image, offset in ((have1, logits1, image1, 0.0),
                                                  (have2, logits2, image2, 10.0)):
        a0, a1, b0, b1 = have
        assert np.array_equal(seen_image, image[:, a0:a1, b0:b1])  # the raw image there
        assert np.allclose(seen_logits, image[:, a0:a1, b0:b1] + offset, atol=1e-5)


def test_without_refiners_nothing_is_widened():
    image = np.random.default_rng(1).normal(size=(2, *SHAPE)).astype(np.float32)
    logits, _ = block_array(_job(image, []), (10, 30, 10, 30), "logits", np.dtype(np.uint8))
    assert np.array_equal(logits, image[:, 10:30, 10:30])


def test_the_crf_refiner_is_registered_with_its_halo():
    from tilesegment.models.crf import CRFParams, crf_halo

    params = CRFParams.deeplab()
    refiner = refiner_for("crf", params=params, image_range=(0, 255))
    assert isinstance(refiner, CRFRefiner) and REFINERS["crf"] is CRFRefiner
    assert refiner.reach == crf_halo(params) and refiner.needs_image
    with pytest.raises(ValueError, match="unknown"):
        refiner_for("bilateral")
