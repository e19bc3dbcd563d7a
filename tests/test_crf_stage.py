"""The CRF as a pipeline stage: block by block with its halo ≈ one whole-image CRF."""

from __future__ import annotations

import numpy as np
import pytest

from tilesegment import segment
from tilesegment.models.crf import CRFParams, crf_halo, dense_crf

RNG = np.random.default_rng(8)


def _image() -> np.ndarray:
    """Blobs with noise, uint8 RGB: edges for the appearance kernel to follow."""
    y, x = np.mgrid[0:150, 0:170]
    blobs = (np.sin(x / 9.0) + np.cos(y / 7.0) > 0.3).astype(np.float64)
    rgb = np.stack([blobs * 160 + 40, 200 - blobs * 120, 90 + 0 * blobs])
    return np.clip(rgb + RNG.normal(0, 20, rgb.shape), 0, 255).astype(np.uint8)


def test_blockwise_crf_matches_whole_image_crf():
    image = _image()
    params = CRFParams(theta_alpha=20.0, iterations=5)  # halo 60: blocks of 50 need it
    common = dict(model="unet-tiny", classes=3, tile=128, halo=48, normalization="raster")
    plain = segment(image, returns="probabilities", **common)
    whole = dense_crf(plain, image, params)  # the independent reference: one CRF run
    blocks = segment(image, returns="probabilities", crf=params, block_size=50, **common)
    one = segment(image, returns="probabilities", crf=params, block_size=1000, **common)
    assert crf_halo(params) == 60
    np.testing.assert_allclose(one, whole, atol=1e-6)   # a single block is the whole CRF
    assert np.abs(blocks - whole).max() <= 0.05
    agree = (blocks.argmax(0) == whole.argmax(0)).mean()
    assert agree >= 0.999
    assert (whole.argmax(0) != plain.argmax(0)).mean() > 0.01  # the CRF did something


def test_crf_without_halo_would_show_seams():
    """Control: the same blocks refined without context disagree with the whole image."""
    from tilesegment.models.crf import crf_block

    image = _image()
    params = CRFParams(theta_alpha=20.0, iterations=5)
    probs = segment(image, model="unet-tiny", classes=3, tile=128, halo=48,
                    returns="probabilities")
    whole = dense_crf(probs, image, params)
    pieces = np.zeros_like(whole)
    for r in range(0, 150, 50):
        for c in range(0, 170, 50):
            win = (slice(None), slice(r, r + 50), slice(c, c + 50))
            pieces[win] = crf_block(probs[win], image[win], 0, params, origin=(r, c))
    assert np.abs(pieces - whole).max() > 0.1


def test_crf_without_pydensecrf_is_one_clear_error(monkeypatch, tmp_path):
    """pydensecrf2 is an optional extra (it compiles): without it, --crf fails at once,
    naming the extra, before the raster is read or the model built; runs without --crf
    do not need it."""
    import sys

    from tilesegment.errors import ModelError

    monkeypatch.setitem(sys.modules, "pydensecrf", None)  # what an install without it gives
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    image = _image()
    with pytest.raises(ModelError, match=r"pip install 'tilesegment\[crf\]'"):
        segment(image, tmp_path / "o.zarr", model="unet-tiny", classes=3, crf=True)
    assert not (tmp_path / "o.zarr").exists()
    segment(image, model="unet-tiny", classes=3, tile=128, halo=48)  # no CRF: fine
