"""Saved probabilities and the saved mask always agree: argmax of the probabilities, read
back with rasterio and zarr themselves, is the mask on every valid pixel — also where two
classes are so close that float16 storage (or float32 rounding in the softmax) makes them
tie, which argmax would give to the lower class id."""

from __future__ import annotations

import numpy as np
import pytest

from tilesegment import segment
from tilesegment.block import agreeing_probabilities


def _near_ties(h: int = 96, w: int = 80) -> np.ndarray:
    """Two bands, used as logits by the ``identity`` model: band 1 leads band 0 by 3e-5 on
    a quarter of the pixels (a tie once the probabilities are stored as float16), by one
    float32 step on another (a tie after the float32 softmax), trails it by 3e-5 on a
    quarter, and differs clearly elsewhere."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(h, w)).astype(np.float32)
    ulp = np.spacing(base)  # one float32 step: a tie already after the float32 softmax
    lead = np.choose(rng.integers(0, 4, size=(h, w)), [3e-5, -3e-5, 2.0, ulp])
    image = np.stack([base, (base + lead).astype(np.float32)]).astype(np.float32)
    image[:, :5, :7] = np.nan  # nodata pixels stay out of the comparison
    return image


def _argmax(probs: np.ndarray) -> np.ndarray:
    return np.argmax(probs, axis=0)


def test_float16_rounding_would_flip_labels_without_the_rule():
    """The case is real: plain float16 rounding of these probabilities ties the classes."""
    image = _near_ties()
    logits = np.nan_to_num(image)
    probs = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
    mask = (logits[1] > logits[0]).astype(np.uint8)
    assert (_argmax(probs.astype(np.float16)) != mask).mean() > 0.2
    fixed = agreeing_probabilities(probs.astype(np.float32), mask, np.ones(mask.shape, bool))
    assert fixed.dtype == np.float16
    assert (_argmax(fixed) == mask).all()
    # one unit in the last place of float16 at most, and still probabilities
    assert np.abs(fixed.astype(np.float32) - probs).max() <= 2 * 2.0**-11
    assert fixed.min() >= 0 and fixed.max() <= 1


@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_saved_probabilities_argmax_is_the_saved_mask(tmp_path, suffix):
    image = _near_ties()
    out = tmp_path / f"out{suffix}"
    segment(image, out, model="identity", normalization="none", save_probabilities=True,
            tile=32, halo=0)
    if suffix == ".zarr":
        import zarr

        group = zarr.open_group(out, mode="r")
        mask = group["mask"][:]
        probs = group["probabilities"][:]
    else:
        import rasterio

        with rasterio.open(out) as src:
            mask = src.read(1)
        with rasterio.open(out.with_name("out.probabilities.tif")) as src:
            probs = src.read()
            # float32 bands holding float16 values, and saying so
            assert src.dtypes[0] == "float32" and src.tags()["VALUES_PRECISION"] == "float16"
        finite = np.isfinite(probs)
        assert (probs[finite].astype(np.float16).astype(np.float32) == probs[finite]).all()
    valid = ~np.isnan(image).any(axis=0)
    # the mask itself is right: the larger logit wins (independent of the code under test)
    assert (mask[valid] == (image[1] > image[0])[valid]).all()
    assert (_argmax(probs)[valid] == mask[valid]).all()
    assert np.isnan(probs[:, ~valid]).all()


def test_returned_probabilities_agree_with_the_returned_mask():
    image = _near_ties()
    # the float32 softmax alone ties some of these pixels
    logits = np.nan_to_num(image)
    shifted = np.exp(logits - logits.max(0))
    plain = shifted / shifted.sum(0)
    assert (_argmax(plain) != (logits[1] > logits[0])).sum() > 10
    mask = segment(image, model="identity", normalization="none", tile=32, halo=0)
    probs = segment(image, model="identity", normalization="none", tile=32, halo=0,
                    returns="probabilities")
    valid = ~np.isnan(image).any(axis=0)
    assert (_argmax(probs)[valid] == mask[valid]).all()
