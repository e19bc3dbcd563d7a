"""The work of one block task: split → infer → merge → refine (→ write), for one block.

A :class:`BlockJob` is everything a task needs, small and picklable (the raster carries a
path, the model a recipe). :func:`segment_block` returns the block's logits;
:func:`write_block` also writes the block to the output and returns only counts.

The pieces, each with its own contract: the :class:`~tilesegment.split.Splitter` says which
tiles of the global grid the block needs and reads them padded and normalised; the
predictor (:mod:`tilesegment.infer`) runs the model on one batch of tiles at a time; a
merger (:mod:`tilesegment.merge`) puts the outputs back into the block; refiners
(:mod:`tilesegment.refine`, e.g. the dense CRF) see the merged block widened by their reach
and return the block.

Non-finite values never become a class. Input values that are ±inf (or beyond float32's
range) are missing, like NaN and nodata (see :func:`~tilesegment.normalize.missing_values`),
and counted. A pixel whose logits are not all finite although its input was valid (a model
fault) becomes nodata in the mask, NaN in probabilities and logits, and is counted: the run
reports both counts (``RunSummary`` and one warning each), it does not fail.

Tiles with nothing to segment are not run (:class:`Skipping`): a tile whose used output
(its core under ``crop``, core plus footprint under ``gaussian``) is all nodata, or lies
wholly outside the tissue mask. A pixel that no run tile covers is nodata where its input
is missing, else the background class (class 0: logits 0 for it and
:data:`BACKGROUND_GAP` below for every other class), written without calling the model; a
block with no tile to run never builds the model. The tiles that run read the same
context as before, so their pixels do not change (under ``gaussian`` the blend of a
non-tissue pixel next to a skipped tile is over the tiles that ran).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from tilesegment.errors import portable_errors
from tilesegment.grid import TileSpec
from tilesegment.merge import merger_for, softmax
from tilesegment.normalize import missing_values, nonfinite_values
from tilesegment.refine import Refiner, inner, refiner_for, widen
from tilesegment.split import Splitter
from tilesegment.workers import ModelRecipe, get_predictor

Window = tuple[int, int, int, int]

__all__ = ["BACKGROUND_GAP", "BlockJob", "BlockResult", "RunStopped", "Skipping",
           "agreeing_probabilities", "blank_faults", "block_array", "merge_block",
           "merge_window", "request_stop", "segment_block", "softmax", "to_mask",
           "write_block"]

BACKGROUND_GAP = 1.0e4
"""A pixel no run tile covers gets logit 0 for class 0 and ``-BACKGROUND_GAP`` for the
others: softmax 1 and 0 in float32 and float16."""


@dataclass(frozen=True)
class Skipping:
    """Which tiles a block leaves out: those whose used output is all nodata, and, with a
    ``tissue`` mask (:class:`~tilesegment.tissue.TissueMask`), those it holds no tissue in."""

    tissue: Any = None


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
    refiners: tuple[Refiner, ...] = ()  # further refiners, run before the CRF
    run_id: str | None = None  # names the run for request_stop (None: never stopped)
    skipping: Skipping | None = None  # leave out empty tiles (not with refiners: they see
    # every pixel's logits)

    def splitter(self) -> Splitter:
        """The splitter of this job's raster, tiling and normalisation."""
        return Splitter(self.raster, self.spec, self.mean, self.std, self.pad_value)

    def stages(self) -> tuple[Refiner, ...]:
        """The refiners in the order they run: :attr:`refiners`, then the CRF if asked."""
        if self.crf is None:
            return self.refiners
        return (*self.refiners, refiner_for("crf", params=self.crf, image_range=self.crf_range))


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
    skipped: int = 0
    """Tiles of the block left out (:class:`Skipping`); ``tiles`` counts those run."""

    def counts(self) -> dict[str, int]:
        """Pixels with non-finite input values and with non-finite logits."""
        return {"nonfinite": 0 if self.nonfinite is None else int(self.nonfinite.sum()),
                "faults": 0 if self.faults is None else int(self.faults.sum())}


_stopped: set[str] = set()
"""Run ids whose block tasks must stop (in this process: the threaded scheduler's)."""


class RunStopped(Exception):
    """Raised in a block task of a run that was stopped (Ctrl-C, SIGTERM, a failed block)."""


def request_stop(run_id: str | None) -> None:
    """Make the block tasks of run ``run_id`` running in this process stop at their next
    batch of tiles (and those not started yet stop at once)."""
    if run_id is not None:
        _stopped.add(run_id)


def check_stop(job: BlockJob) -> None:
    """:class:`RunStopped` when ``job``'s run was asked to stop."""
    if job.run_id is not None and job.run_id in _stopped:
        raise RunStopped(job.run_id)


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
    """The block's result: merged tiles of the block widened by the refiners' reach, each
    refiner in turn, then the block itself. Without refiners, the merged block."""
    stages = job.stages()
    if not stages:
        return merge_block(job, window)
    shape = (job.raster.height, job.raster.width)
    reaches = [stage.reach for stage in stages]
    wide = widen(window, sum(reaches), shape)
    merged = merge_block(job, wide)  # model faults blanked: refiners never see them
    logits, have = merged.logits, wide
    for n, stage in enumerate(stages):
        want = widen(window, sum(reaches[n + 1:]), shape)
        image = job.raster.read(have) if stage.needs_image else None
        logits = stage.refine(logits, image, have, want)
        have = want
    keep = inner(wide, window)
    disagreement = None if merged.disagreement is None else merged.disagreement[keep]
    result = BlockResult(logits, merged.valid[keep], merged.tiles, disagreement,
                         nonfinite=merged.nonfinite[keep], faults=merged.faults[keep],
                         skipped=merged.skipped)
    return blank_faults(result)


def merge_block(job: BlockJob, window: Window) -> BlockResult:
    """Split → infer → merge with the job's pooled model (see :func:`merge_window`); the
    model is fetched only when a tile runs. Empty tiles are skipped unless refiners follow
    (they see every pixel's logits)."""
    check_stop(job)
    skipping = job.skipping if not job.stages() else None
    return merge_window(job.splitter(), _Deferred(lambda: get_predictor(job.recipe)), window,
                        job.recipe.num_classes, stop=lambda: check_stop(job),
                        skipping=skipping)


class _Deferred:
    """A predictor fetched on first use (a block with no tile to run never builds one)."""

    def __init__(self, make: Any) -> None:
        self.make = make

    def get(self) -> Any:
        return self.make()


def used_window(tile: Any, spec: TileSpec, shape: tuple[int, int]) -> Window:
    """Raster window of ``tile``'s used output (see :func:`tilesegment.tissue.used_window`)."""
    from tilesegment.tissue import used_window as window_of

    return window_of(tile.i, tile.j, spec, shape)


def _may_miss(raster: Any) -> bool:
    """Whether ``raster`` can hold missing values (a nodata value, or floats: NaN, ±inf)."""
    return raster.nodata is not None or np.dtype(raster.dtype).kind in "fc"


def merge_window(splitter: Splitter, predictor: Any, window: Window,
                 num_classes: int, stop: Any = None,
                 skipping: Skipping | None = None) -> BlockResult:
    """Split → infer → merge: every tile whose used output touches ``window``, run through
    ``predictor`` (``(N, C, T, T) → (N, K, o, o)``, with a ``batch_size``) one batch at a
    time and merged into the block; model faults blanked (:func:`blank_faults`). ``stop``
    (a callable) is called before each batch: it raises to end the task early.
    ``skipping``: leave out empty tiles (:class:`Skipping`); the pixels no run tile covers
    become background (class 0) or nodata."""
    spec, shape = splitter.spec, splitter.shape
    tiles = splitter.tiles_for(window)
    wanted = tiles
    tissue = None if skipping is None else skipping.tissue
    if tissue is not None:
        wanted = [t for t in tiles
                  if tissue.window_has_tissue(used_window(t, spec, shape), shape)]
    merger = merger_for(spec.blend)(spec, window, num_classes)
    r0, r1, c0, c1 = window
    if not wanted:  # nothing to run: read only what says which pixels are nodata
        valid = np.ones((r1 - r0, c1 - c0), bool)
        nonfinite = np.zeros((r1 - r0, c1 - c0), bool)
        if _may_miss(splitter.raster):
            raw = splitter.raster.read(window)
            valid = ~missing_values(raw, splitter.raster.nodata).all(axis=0)
            nonfinite = nonfinite_values(raw, splitter.raster.nodata).any(axis=0)
        return _fill_background(merger, [], spec, shape, window, valid, nonfinite,
                                len(tiles), num_classes)
    stack = splitter.read(window, tiles)  # every tile's context, as without skipping
    run = wanted
    if skipping is not None:  # a tile whose used output is all nodata is not run
        top, left = stack.origin
        run = []
        for t in wanted:
            y0, y1, x0, x1 = used_window(t, spec, shape)
            if stack.present[y0 - top:y1 - top, x0 - left:x1 - left].any():
                run.append(t)
    if not run:
        return _fill_background(merger, [], spec, shape, window, stack.valid,
                                stack.nonfinite, len(tiles), num_classes)
    if isinstance(predictor, _Deferred):
        predictor = predictor.get()
    stack = dataclasses.replace(stack, tiles=run) if len(run) < len(tiles) else stack
    # crop blend: only each tile's core comes back from the model's device
    crop = getattr(merger, "core_crop", None)
    crop = crop(spec) if crop is not None and getattr(predictor, "crops", False) else None
    for group, batch in stack.batches(predictor.batch_size):
        if stop is not None:
            stop()
        merger.add(group, predictor(batch) if crop is None else predictor(batch, crop=crop))
    if skipping is None:
        result = BlockResult(merger.result(), stack.valid, len(stack), merger.disagreement(),
                             nonfinite=stack.nonfinite)
        return blank_faults(result)
    return _fill_background(merger, run, spec, shape, window, stack.valid, stack.nonfinite,
                            len(tiles), num_classes)


def _fill_background(merger: Any, run: list, spec: TileSpec, shape: tuple[int, int],
                     window: Window, valid: np.ndarray, nonfinite: np.ndarray, total: int,
                     num_classes: int) -> BlockResult:
    """The merged block with every pixel that no tile of ``run`` covers set to the
    background class's logits (:data:`BACKGROUND_GAP`); model faults blanked."""
    r0, r1, c0, c1 = window
    covered = np.zeros((r1 - r0, c1 - c0), bool)
    for t in run:
        y0, y1, x0, x1 = used_window(t, spec, shape)
        covered[max(y0, r0) - r0:max(min(y1, r1) - r0, 0),
                max(x0, c0) - c0:max(min(x1, c1) - c0, 0)] = True
    with np.errstate(invalid="ignore", divide="ignore"):  # gaussian: 0/0 where uncovered
        logits = merger.result()
    if not covered.all():
        empty = ~covered
        logits[0][empty] = 0.0
        for k in range(1, num_classes):
            logits[k][empty] = -BACKGROUND_GAP
    disagreement = merger.disagreement()
    if disagreement is not None:
        disagreement = disagreement & covered
    result = BlockResult(logits, valid, len(run), disagreement, nonfinite=nonfinite,
                         skipped=total - len(run))
    return blank_faults(result)


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
    k = job.recipe.num_classes
    counts = np.bincount(mask[result.valid].ravel(), minlength=k)[:k]
    done = {"counts": counts.astype(np.int64), "nodata": int((~result.valid).sum()),
            "tiles": result.tiles, "skipped": result.skipped, **result.counts()}
    check_stop(job)
    # recorded with the block in the store's manifest: a resumed run sums these counts
    output.write_block(window[0], window[2], mask, probs, disagreement=disagreement,
                       result=done)
    return done
