"""With the identity model, tile → infer → stitch must hand back the input bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from tilesegment import segment

SHAPES = [(97, 131), (1, 77), (77, 1), (5, 9), (1, 1)]
MODES = ["reflect", "symmetric", "edge", "constant"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", MODES)
def test_crop_identity_is_bit_exact(shape, mode):
    rng = np.random.default_rng(sum(shape))
    image = rng.normal(size=(3, *shape)).astype(np.float32)
    out = segment(image, model="identity", tile=32, halo=7, pad_mode=mode, block_size=40,
                  returns="logits")
    assert out.dtype == np.float32 and out.shape == image.shape
    assert np.array_equal(out, image)


@pytest.mark.parametrize("shape", [(97, 131), (1, 77), (5, 9)])
def test_gaussian_identity_is_exact_up_to_rounding(shape):
    rng = np.random.default_rng(3)
    image = rng.normal(size=(2, *shape)).astype(np.float32)
    out = segment(image, model="identity", tile=32, halo=8, blend="gaussian", block_size=24,
                  returns="logits")
    np.testing.assert_allclose(out, image, rtol=1e-6, atol=1e-6)


def test_integer_input_through_identity():
    image = np.arange(3 * 50 * 61, dtype=np.uint16).reshape(3, 50, 61)
    out = segment(image, model="identity", tile=16, halo=3, returns="logits")
    assert np.array_equal(out, image.astype(np.float32))
    mask = segment(image, model="identity", tile=16, halo=3, returns="mask")
    assert np.array_equal(mask, np.argmax(image, axis=0).astype(np.uint8))
