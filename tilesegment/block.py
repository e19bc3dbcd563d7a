"""The work of one block task: read → tile → infer → stitch, for one output block.

A :class:`BlockJob` is everything a task needs, small and picklable (the raster carries a
path, the model a recipe). :func:`segment_block` returns the block's logits;
:func:`write_block` also writes the block to the output and returns only counts.

Non-finite values never become a class. Input values that are ±inf (or beyond float32's
range) are missing, like NaN and nodata (see :func:`~tilesegment.normalize.missing_values`),
and counted. A pixel whose logits are not all finite although its input was valid (a model
fault) becomes nodata in the mask, NaN in probabilities and logits, and is counted: the run
reports both counts (``RunSummary`` and one warning each), it does not fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tilesegment.errors import portable_errors
from tilesegment.grid import TileSpec, tiles_for_window
from tilesegment.normalize import missing_values, nonfinite_values, normalize
from tilesegment.tile import cut_tiles, read_canvas
from tilesegment.workers import ModelRecipe, get_predictor

Window = tuple[int, int, int, int]


@dataclass(frozen=True)
class BlockJob:
    """Shared by every block task of one run (shipped once per worker)."""

    raster: Any
    spec: TileSpec
    recipe: ModelRecipe
    mean: np.ndarray | None
    std: np.ndarray | None
    pad_value: float = 0.0
    output: Any = None
    mask_nodata: int = 255
    mask_dtype: str = "uint8"
    crf: Any = None          # CRFParams: refine each block with a dense CRF
    crf_range: Any = None    # the raster's value range mapped to 8-bit for the CRF


@dataclass
class BlockResult:
    """A block's logits ``float32 (K, h, w)`` and its valid-pixel mask ``bool (h, w)``.

    ``nonfinite`` ``bool (h, w)``: pixels with a ±inf (or beyond-float32) input value.
    ``faults`` ``bool (h, w)``: valid input pixels whose logits were not all finite; they are
    no longer ``valid`` and their logits were set to 0 (see :func:`blank_faults`).
    """

    logits: np.ndarray
    valid: np.ndarray
    tiles: int
    disagreement: np.ndarray | None = None
    nonfinite: np.ndarray | None = None
    faults: np.ndarray | None = None

    def counts(self) -> dict[str, int]:
        """Pixels with non-finite input values and with non-finite logits."""
        return {"nonfinite": 0 if self.nonfinite is None else int(self.nonfinite.sum()),
                "faults": 0 if self.faults is None else int(self.faults.sum())}


def blank_faults(result: BlockResult) -> BlockResult:
    """Turn pixels with any non-finite logit into nodata: ``valid`` False, logits 0 (so the
    argmax and softmax see finite numbers), and record the valid ones in ``faults``."""
    finite = np.isfinite(result.logits[0])
    for k in range(1, len(result.logits)):  # class by class: no (K, h, w) temporary
        finite &= np.isfinite(result.logits[k])
    faults = ~finite & result.valid
    if not finite.all():
        result.logits[:, ~finite] = 0.0
        result.valid = result.valid & finite
    result.faults = faults if result.faults is None else result.faults | faults
    return result


def segment_block(job: BlockJob, window: Window) -> BlockResult:
    """The block's result: stitched tiles, refined by the dense CRF when the job asks."""
    if job.crf is None:
        return stitch_block(job, window)
    return crf_refined_block(job, window)


def crf_refined_block(job: BlockJob, window: Window) -> BlockResult:
    """Stitch the block plus the CRF's halo (real pixels only, cut at the raster edge), run
    the dense CRF there and keep the block. Logits become ``log q`` of the refined
    probabilities, so argmax and softmax downstream mean what they meant before."""
    from tilesegment.models.crf import crf_block, crf_halo

    h, w = job.raster.height, job.raster.width
    reach = crf_halo(job.crf)
    r0, r1, c0, c1 = window
    wide = (max(0, r0 - reach), min(h, r1 + reach), max(0, c0 - reach), min(w, c1 + reach))
    big = stitch_block(job, wide)  # model faults blanked: the CRF never refines them
    image = job.raster.read(wide)
    margins = (r0 - wide[0], wide[1] - r1, c0 - wide[2], wide[3] - c1)
    q = crf_block(softmax(big.logits), image, margins, job.crf, origin=(wide[0], wide[2]),
                  image_range=job.crf_range)
    keep = (slice(margins[0], margins[0] + r1 - r0), slice(margins[2], margins[2] + c1 - c0))
    disagreement = None if big.disagreement is None else big.disagreement[keep]
    result = BlockResult(np.log(np.maximum(q, 1e-30)), big.valid[keep], big.tiles, disagreement,
                         nonfinite=big.nonfinite[keep], faults=big.faults[keep])
    return blank_faults(result)


def stitch_block(job: BlockJob, window: Window) -> BlockResult:
    """Run every tile whose used output touches ``window`` and stitch them into it."""
    from tilesegment.stitch import BlockStitcher

    raster, spec = job.raster, job.spec
    shape = (raster.height, raster.width)
    tiles = tiles_for_window(shape, spec, window)
    top = min(t.row for t in tiles)
    left = min(t.col for t in tiles)
    bottom = max(t.row for t in tiles) + spec.tile
    right = max(t.col for t in tiles) + spec.tile
    raw = read_canvas(raster.read, shape, (top, bottom, left, right), spec.pad_mode,
                      job.pad_value)
    missing = missing_values(raw, raster.nodata)
    ok = ~missing.all(axis=0)
    r0, r1, c0, c1 = window
    inside = (slice(None), slice(r0 - top, r1 - top), slice(c0 - left, c1 - left))
    nonfinite = nonfinite_values(raw[inside], raster.nodata).any(axis=0)
    canvas = normalize(raw, job.mean, job.std)
    canvas[missing] = 0.0  # a missing value becomes its band's mean, not a wild raw value
    del raw, missing

    predictor = get_predictor(job.recipe)
    stitcher = BlockStitcher(spec, window, job.recipe.num_classes)
    batch = predictor.batch_size
    for start in range(0, len(tiles), batch):
        group = tiles[start:start + batch]
        stack = cut_tiles(canvas, (top, left), [(t.row, t.col) for t in group], spec.tile)
        for tile, out in zip(group, predictor(stack), strict=True):
            stitcher.add(tile, out)
    result = BlockResult(stitcher.result(), ok[inside[1:]], len(tiles), stitcher.disagreement(),
                         nonfinite=nonfinite)
    return blank_faults(result)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 0 of ``float32 (K, h, w)``, computed stably in float32."""
    shifted = logits - logits.max(axis=0, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=0, keepdims=True)
    return shifted


def _argmax(values: np.ndarray, dtype: np.dtype | type) -> tuple[np.ndarray, np.ndarray]:
    """Class ids ``(h, w)`` of ``dtype`` by argmax over axis 0 of ``(K, h, w)`` (ties → the
    lower id, as numpy), and the best value per pixel (NaN where any value is NaN)."""
    # A loop over classes is ~2× faster than argmax over axis 0; strict ">" keeps numpy's
    # rule that ties go to the lower id.
    best = values[0].copy()
    ids = np.zeros(values.shape[1:], dtype=dtype)
    for k in range(1, len(values)):
        ids[values[k] > best] = k
        np.maximum(best, values[k], out=best)  # propagates NaN
    return ids, best


def to_mask(result: BlockResult, dtype: np.dtype, nodata: int) -> np.ndarray:
    """Class ids ``(h, w)`` by argmax (ties → the lower id); nodata where input was nodata
    and wherever the best logit is NaN or infinite (never a class by default)."""
    mask, best = _argmax(result.logits, dtype)
    mask[~result.valid] = nodata
    mask[~np.isfinite(best)] = nodata
    return mask


def agreeing_probabilities(probs: np.ndarray, mask: np.ndarray, valid: np.ndarray,
                           dtype: np.dtype | type = np.float16) -> np.ndarray:
    """``probs`` ``(K, h, w)`` cast to ``dtype`` so that their argmax equals ``mask`` on
    every ``valid`` pixel.

    Rounding (to float16 for storage, or float32's own in the softmax) can turn a class's
    narrow lead into a tie, which argmax then gives to the lower id. Where that happens the
    tied rivals are lowered to the next representable value below the mask class's
    probability: one unit in the last place, well inside the storage precision.
    """
    out = probs.astype(dtype, copy=True)
    if out.shape[0] < 2:
        return out
    k = out.shape[0]
    stored_best, _ = _argmax(out, np.int64)
    fix = valid & (stored_best != mask)
    if not fix.any():
        return out
    rows, cols = np.nonzero(fix)
    want = mask[rows, cols].astype(np.int64)
    top = out[want, rows, cols]
    below = np.nextafter(top, np.array(-np.inf, dtype=out.dtype))
    for c in range(k):
        rival = (want != c) & (out[c, rows, cols] >= top)
        out[c, rows[rival], cols[rival]] = below[rival]
    return out


@portable_errors
def block_array(job: BlockJob, window: Window, returns: str,
                dtype: np.dtype) -> tuple[np.ndarray, dict[str, int]]:
    """The block as ``returns`` asks: ``mask`` ``(h, w)``, ``probabilities``/``logits``
    ``float32 (K, h, w)`` (NaN at nodata pixels), ``disagreement`` ``uint8 (h, w)`` (1 where
    overlapping tiles disagree; all 0 under ``crop``); with :meth:`BlockResult.counts`."""
    result = segment_block(job, window)
    counts = result.counts()
    if returns == "mask":
        return to_mask(result, dtype, job.mask_nodata), counts
    if returns == "disagreement":
        d = result.disagreement
        array = np.zeros(result.valid.shape, np.uint8) if d is None else d.astype(np.uint8)
        return array, counts
    if returns == "probabilities":
        mask = to_mask(result, dtype, job.mask_nodata)
        values = agreeing_probabilities(softmax(result.logits), mask, result.valid, np.float32)
    else:
        values = result.logits
    values[:, ~result.valid] = np.nan
    return values, counts


@portable_errors
def write_block(job: BlockJob, window: Window, with_probabilities: bool,
                with_disagreement: bool = False) -> dict[str, Any]:
    """Segment ``window``, write it to ``job.output``; return class counts and tile count."""
    result = segment_block(job, window)
    output = job.output
    mask = to_mask(result, np.dtype(job.mask_dtype), job.mask_nodata)
    probs = None
    if with_probabilities:  # stored as float16, rounded so that its argmax is the mask
        probs = agreeing_probabilities(softmax(result.logits), mask, result.valid)
        probs[:, ~result.valid] = np.nan
    disagreement = None
    if with_disagreement:
        disagreement = result.disagreement.astype(np.uint8)
        disagreement[~result.valid] = 255
    output.write_block(window[0], window[2], mask, probs, disagreement=disagreement)
    k = job.recipe.num_classes
    counts = np.bincount(mask[result.valid].ravel(), minlength=k)[:k]
    return {"counts": counts.astype(np.int64), "nodata": int((~result.valid).sum()),
            "tiles": result.tiles, **result.counts()}
