"""Tuning the dense CRF's kernels on a validation region (``tilesegment tune-crf``).

DeepLab v1 (Chen et al. 2015, §4.1) chose its CRF parameters by cross-validation on held-out
images, "coarse-to-fine": a grid first, then finer steps around the grid's best. Here, on one
window of a raster whose class probabilities were written by a run (``--save-probabilities``):

1. **coarse grid** (:data:`COARSE_GRID`): appearance weight ``w1`` × ``θα`` × ``θβ`` × the
   smoothness weight ``w2`` (``θγ`` 3), 72 candidates;
2. **local refinement**: a compass search from the grid's best in all five kernel values
   (``w1``, ``θα``, ``θβ``, ``w2``, ``θγ``): each multiplied and divided by a step factor
   (2, then √2, 2^¼, 2^⅛ when a round finds nothing better; a weight divided below
   :data:`WEIGHT_OFF` switches its kernel off, one at 0 tries :data:`WEIGHT_ON`), clamped to
   :data:`BOUNDS`, until the step falls below 2^⅛ or the candidate budget is spent.

The mean-field iterations stay fixed. Each candidate refines the window *with context*, as
``run --crf`` refines a block: the window widened by the candidate's ``crf_halo`` (cut at the
raster edge), placed on the permutohedral lattice at its raster origin; only the window is
scored. The score is the mean IoU over classes, or the foreground IoU (the mean IoU of the
classes other than 0; for two classes, class 1's IoU), counted like ``evaluate`` (truth
nodata, ``ignore_index`` and non-finite probabilities left out). The best candidate is kept
only if it scores strictly above the probabilities' own argmax ("no CRF"); otherwise the
result is "no CRF". NumPy and pydensecrf only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tilesegment.errors import InputError, LimitError, SettingError
from tilesegment.evaluation.confusion import LabelRules, count_block
from tilesegment.evaluation.metrics import class_scores, fcn_measures
from tilesegment.refine.base import Window, inner, widen

SCORES = {"mean-iou": "mean IoU", "foreground-iou": "foreground IoU"}
"""``score`` name → how tables and cards say it."""

KERNEL_FIELDS = ("w1", "theta_alpha", "theta_beta", "w2", "theta_gamma")
COARSE_GRID: dict[str, tuple[float, ...]] = {
    "w1": (0.5, 1.0, 3.0, 10.0), "theta_alpha": (5.0, 20.0, 80.0),
    "theta_beta": (3.0, 8.0, 20.0), "w2": (0.0, 3.0), "theta_gamma": (3.0,)}
"""The first stage's grid (Krähenbühl's default θα 80, θβ 13-ish, w2 3 lie on or near it)."""
BOUNDS: dict[str, tuple[float, float]] = {
    "w1": (0.0, 50.0), "theta_alpha": (1.0, 160.0), "theta_beta": (0.5, 128.0),
    "w2": (0.0, 20.0), "theta_gamma": (0.5, 20.0)}
"""The search never leaves these (``θα`` ≤ 160 bounds the context read: 480 px a side)."""
WEIGHT_OFF = 0.1
"""A weight divided below this becomes 0 (that kernel off)."""
WEIGHT_ON = 0.5
"""A weight at 0 is tried at this value in the refinement."""
STEPS = (2.0, 2.0 ** 0.5, 2.0 ** 0.25, 2.0 ** 0.125)
"""The refinement's step factors, coarse to fine."""
DEFAULT_MAX_PIXELS = 4 * 1024 * 1024
"""Default cap on the pixels held at once: the window plus its widest context."""
DEFAULT_MAX_CANDIDATES = 200


@dataclass(frozen=True)
class Candidate:
    """One scored setting: ``params`` (``None``: no CRF, the probabilities' argmax), the
    ``stage`` (``no crf``, ``coarse``, ``refine``), and its measures in the window."""

    params: Any
    stage: str
    mean_iou: float
    foreground_iou: float
    pixel_accuracy: float
    score: float

    def as_dict(self, baseline: float) -> dict[str, Any]:
        return {"stage": self.stage,
                "params": None if self.params is None else {
                    k: getattr(self.params, k) for k in (*KERNEL_FIELDS, "iterations")},
                "mean_iou": self.mean_iou, "foreground_iou": self.foreground_iou,
                "pixel_accuracy": self.pixel_accuracy, "score": self.score,
                "gain": self.score - baseline}


@dataclass(frozen=True)
class TuneResult:
    """The search: ``no_crf`` (the baseline), every ``candidates`` in the order tried, and
    ``best`` (``None`` when no candidate scored above ``no_crf``: "no CRF")."""

    score: str
    window: Window
    context: Window
    iterations: int
    no_crf: Candidate
    candidates: list[Candidate]
    best: Candidate | None
    pixels: int
    class_names: tuple[str, ...] = ()
    image_range: Any = None
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def score_label(self) -> str:
        return SCORES[self.score]

    def summary(self) -> str:
        """One line: the decision and the numbers behind it."""
        base = self.no_crf.score
        top = max(self.candidates, key=lambda c: c.score)
        if self.best is None:
            return (f"no CRF: no setting beat the network alone ({self.score_label} "
                    f"{base:.4f} without the CRF; the best of {len(self.candidates)} "
                    f"candidates scored {top.score:.4f})")
        return (f"best: {_describe(self.best.params)}: {self.score_label} "
                f"{self.best.score:.4f} vs {base:.4f} without the CRF "
                f"({self.best.score - base:+.4f}; {len(self.candidates)} candidates)")

    def table(self) -> str:
        """Every candidate, before (no CRF, first row) and after, the best marked ``*``."""
        r0, r1, c0, c1 = self.window
        head = (f"CRF tuning on rows {r0}–{r1}, columns {c0}–{c1} ({self.pixels} px scored; "
                f"context read: rows {self.context[0]}–{self.context[1]}, columns "
                f"{self.context[2]}–{self.context[3]}), {self.iterations} iterations, "
                f"score: {self.score_label}")
        cols = f"{'':1} {'stage':<7} {'w1':>6} {'θα':>6} {'θβ':>6} {'w2':>6} {'θγ':>6} " \
               f"{'mean IoU':>9} {'fg IoU':>8} {'gain':>8}"
        lines = [head, cols]
        base = self.no_crf.score
        for c in (self.no_crf, *self.candidates):
            values = ("–",) * 5 if c.params is None else tuple(
                f"{getattr(c.params, k):g}" for k in KERNEL_FIELDS)
            mark = "*" if c is self.best else " "
            lines.append(f"{mark} {c.stage:<7} " + " ".join(f"{v:>6}" for v in values)
                         + f" {c.mean_iou:9.4f} {c.foreground_iou:8.4f} "
                           f"{c.score - base:+8.4f}")
        lines.append(self.summary())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        base = self.no_crf.score
        return {"score": self.score, "score_label": self.score_label,
                "window": list(self.window), "context": list(self.context),
                "pixels": self.pixels, "iterations": self.iterations,
                "class_names": list(self.class_names),
                "image_range": None if self.image_range is None else [
                    list(v) for v in self.image_range],
                "sources": dict(self.sources),
                "no_crf": self.no_crf.as_dict(base),
                "candidates": [c.as_dict(base) for c in self.candidates],
                "best": None if self.best is None else self.best.as_dict(base),
                "decision": "no crf" if self.best is None else "crf",
                "summary": self.summary()}

    def card_entry(self) -> dict[str, Any]:
        """The model card's ``crf`` entry for this result (see
        :func:`~tilesegment.models.crf.crf_card_entry`)."""
        from tilesegment.models.crf import crf_card_entry

        top = max(self.candidates, key=lambda c: c.score)
        tuning = {
            "by": "tilesegment tune-crf", "score": self.score_label,
            "window": list(self.window), "pixels": self.pixels,
            "candidates": len(self.candidates), "no_crf": round(self.no_crf.score, 6),
            "best": round((self.best or top).score, 6),
            "sources": dict(self.sources)}
        return crf_card_entry(None if self.best is None else self.best.params, tuning)


def _describe(params: Any) -> str:
    return (f"w1 {params.w1:g}, θα {params.theta_alpha:g}, θβ {params.theta_beta:g}, "
            f"w2 {params.w2:g}, θγ {params.theta_gamma:g}")


def crf_value_range(raster: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The value range ``run --crf`` maps to 8 bits for ``raster`` (``None`` for uint8):
    per band, the whole raster's mean ± 3σ (as :func:`tilesegment.plan.build.complete_plan`)."""
    if np.dtype(raster.dtype) == np.uint8:
        return None
    from tilesegment.normalize import raster_statistics

    stats = raster_statistics(raster)
    lo = stats.mean - 3 * stats.std
    hi = np.maximum(stats.mean + 3 * stats.std, lo + 1e-9)
    return tuple(map(float, lo)), tuple(map(float, hi))


def parse_window(text: str) -> Window:
    """``"ROW0:ROW1,COL0:COL1"`` → ``(row0, row1, col0, col1)`` (half-open, px)."""
    try:
        rows, cols = text.split(",")
        r0, r1 = (int(v) for v in rows.split(":"))
        c0, c1 = (int(v) for v in cols.split(":"))
    except ValueError:
        raise SettingError(f"window {text!r}: write ROW0:ROW1,COL0:COL1 (e.g. "
                           "0:512,205:256)") from None
    return r0, r1, c0, c1


def check_window(window: Window | None, shape: tuple[int, int]) -> Window:
    """``window`` (or the whole raster) checked against the raster ``shape``."""
    h, w = shape
    if window is None:
        return 0, h, 0, w
    r0, r1, c0, c1 = (int(v) for v in window)
    if not (0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w):
        raise SettingError(f"window rows {r0}:{r1}, columns {c0}:{c1} is not a non-empty "
                           f"region of the {h}×{w} px raster")
    return r0, r1, c0, c1


def _reach(bounds: dict[str, tuple[float, float]]) -> int:
    from tilesegment.models.crf import CRFParams, crf_halo

    return crf_halo(CRFParams(theta_alpha=bounds["theta_alpha"][1],
                              theta_gamma=bounds["theta_gamma"][1]))


def tune_crf(probabilities: Any, image: Any, truth: Any, *, window: Window | None = None,
             score: str = "mean-iou", iterations: int = 10, rules: LabelRules | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS,
             max_candidates: int = DEFAULT_MAX_CANDIDATES,
             grid: dict[str, tuple[float, ...]] | None = None,
             image_range: Any = "auto", class_names: tuple[str, ...] = (),
             progress: Callable[[int, Candidate], None] | None = None) -> TuneResult:
    """Search the CRF's kernel values on ``window`` of these rasters (paths, arrays or
    :class:`~tilesegment.read.Raster`): ``probabilities`` ``(K, H, W)`` float (a run's
    probabilities layer), the run's input ``image`` ``(C, H, W)`` and a ``truth`` mask
    ``(1, H, W)`` on the same grid. ``rules``: how truth values count (as ``evaluate``);
    ``image_range``: ``"auto"`` (what ``run --crf`` uses, :func:`crf_value_range`), ``None``
    (uint8) or ``(lo, hi)``. ``max_pixels`` caps the window plus its widest context
    (:class:`~tilesegment.errors.LimitError` beyond). See the module's docstring."""
    from tilesegment.models.crf import CRFParams, crf_halo, dense_crf, require_pydensecrf
    from tilesegment.read import open_raster

    if score not in SCORES:
        raise SettingError(f"score {score!r} unknown; use {' or '.join(SCORES)}")
    require_pydensecrf()
    probs_r, image_r, truth_r = (open_raster(x) for x in (probabilities, image, truth))
    shape = (probs_r.height, probs_r.width)
    for what, r in (("image", image_r), ("truth", truth_r)):
        if (r.height, r.width) != shape:
            raise InputError(f"the {what} is {r.height}×{r.width} px but the probabilities "
                             f"{shape[0]}×{shape[1]} px: they must share one grid")
    from tilesegment.evaluation.align import check_same_grid

    check_same_grid(probs_r, truth_r)  # CRS and transform too, where they have them
    k = probs_r.bands
    if k < 2 or not np.issubdtype(np.dtype(probs_r.dtype), np.floating):
        raise InputError(f"{probs_r.source}: not class probabilities ({k} band(s) of "
                         f"{np.dtype(probs_r.dtype)}; want K ≥ 2 float bands)")
    if truth_r.bands != 1:
        raise InputError(f"the truth must have one band, not {truth_r.bands}")
    window = check_window(window, shape)
    context = widen(window, _reach(BOUNDS), shape)
    held = (context[1] - context[0]) * (context[3] - context[2])
    if held > max_pixels:
        h, w = window[1] - window[0], window[3] - window[2]
        raise LimitError(f"the tuning region {h}×{w} px with its CRF context "
                         f"({context[1] - context[0]}×{context[3] - context[2]} px, "
                         f"{held} px) exceeds the cap of {max_pixels} px: choose a smaller "
                         "validation region (--window ROW0:ROW1,COL0:COL1) or raise "
                         "--max-pixels")
    if image_range == "auto":
        image_range = crf_value_range(image_r)
    probs = probs_r.read(context).astype(np.float32)
    img = image_r.read(context)
    have_in = inner(context, window)
    t = truth_r.read(window)[0]
    missing = ~np.all(np.isfinite(probs[(slice(None), *have_in)]), axis=0)
    rules = replace(rules or LabelRules(), num_classes=k)
    if rules.truth_nodata is None:
        rules = replace(rules, truth_nodata=truth_r.nodata)

    def measure(labels: np.ndarray, params: Any, stage: str) -> Candidate:
        cm = count_block(labels, t, rules, missing)
        measures = fcn_measures(cm)
        iou = class_scores(cm).iou
        fg = iou[1:][~np.isnan(iou[1:])]
        foreground = float(fg.mean()) if fg.size else float("nan")
        value = measures["mean_iou"] if score == "mean-iou" else foreground
        if not math.isfinite(value):
            raise InputError(f"the {SCORES[score]} is undefined in the window (no truth "
                             "pixel counted, or no foreground class in truth or prediction): "
                             "choose another window, or --score mean-iou")
        return Candidate(params, stage, float(measures["mean_iou"]), foreground,
                         float(measures["pixel_accuracy"]), float(value))

    plain = np.where(np.isfinite(probs), probs, -np.inf).argmax(axis=0)
    no_crf = measure(plain[have_in], None, "no crf")
    tried: dict[tuple[float, ...], Candidate] = {}
    order: list[Candidate] = []

    def evaluate(params: Any, stage: str) -> Candidate | None:
        key = tuple(getattr(params, f) for f in KERNEL_FIELDS)
        if key in tried or len(order) >= max_candidates:
            return tried.get(key)
        have = widen(window, crf_halo(params), shape)
        sub = inner(context, have)
        q = dense_crf(probs[(slice(None), *sub)], img[(slice(None), *sub)], params,
                      image_range=image_range, origin=(have[0], have[2]))
        cand = measure(q.argmax(axis=0)[inner(have, window)], params, stage)
        tried[key] = cand
        order.append(cand)
        if progress is not None:
            progress(len(order), cand)
        return cand

    grid = grid or COARSE_GRID
    for values in itertools.product(*(grid[f] for f in KERNEL_FIELDS)):
        evaluate(CRFParams(iterations=iterations, **dict(zip(KERNEL_FIELDS, values,
                                                             strict=True))), "coarse")
    best = max(order, key=lambda c: c.score) if order else None  # first of equals
    for step in STEPS:
        while best is not None and len(order) < max_candidates:
            found = [c for p in _neighbours(best.params, step)
                     if (c := evaluate(p, "refine")) is not None]
            top = max(found, key=lambda c: c.score, default=None)
            if top is None or top.score <= best.score:
                break
            best = top
    if best is not None and best.score <= no_crf.score:
        best = None
    return TuneResult(score=score, window=window, context=context, iterations=iterations,
                      no_crf=no_crf, candidates=order, best=best,
                      pixels=int((~missing).sum()), class_names=tuple(class_names),
                      image_range=image_range, sources={
                          "probabilities": str(probs_r.source), "image": str(image_r.source),
                          "truth": str(truth_r.source)})


def _neighbours(params: Any, step: float) -> list[Any]:
    """``params`` with one kernel value multiplied or divided by ``step`` (see the module's
    docstring), in a fixed order; values rounded to 4 significant digits."""
    out = []
    for name in KERNEL_FIELDS:
        value = getattr(params, name)
        lo, hi = BOUNDS[name]
        weight = name in ("w1", "w2")
        if weight and value == 0:
            tries = [WEIGHT_ON]
        else:
            tries = [value * step, value / step]
            if weight:
                tries = [0.0 if v < WEIGHT_OFF else v for v in tries]
        for v in tries:
            v = float(f"{min(max(v, lo), hi):.4g}")
            if v != value and (v > 0 or weight):
                out.append(replace(params, **{name: v}))
    return out
