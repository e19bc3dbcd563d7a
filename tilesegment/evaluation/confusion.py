"""Confusion matrices counted block by block (int64, exact at any size) and summed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tilesegment.errors import InputError


@dataclass(frozen=True)
class LabelRules:
    """How truth and prediction values become class ids, and which pixels are not counted.

    ``mapping``: truth value → class id (values not in it are kept as they are, unless
    ``strict_mapping``); ``instances``: every non-zero truth id is foreground (1);
    ``ignore_index``: truth value left out of the counts; nodata of either side likewise.
    """

    num_classes: int | None = None
    ignore_index: int | None = None
    truth_nodata: float | None = None
    pred_nodata: float | None = None
    instances: bool = False
    mapping: tuple[tuple[int, int], ...] = ()


def _as_labels(values: np.ndarray, what: str) -> np.ndarray:
    if np.issubdtype(values.dtype, np.floating):
        if values.size and not np.array_equal(values, np.round(values)):
            raise InputError(f"{what} holds non-integer values: expected class ids")
        values = values.astype(np.int64)
    return values.astype(np.int64, copy=False)


def truth_counted(truth: np.ndarray, rules: LabelRules) -> np.ndarray:
    """``bool (h, w)``: the truth pixels the counts use — not truth nodata, not NaN, not
    ``ignore_index`` (the prediction's nodata is the caller's to add)."""
    keep = np.ones(truth.shape, dtype=bool)
    if rules.truth_nodata is not None:
        keep &= ~(np.isnan(truth) if np.isnan(rules.truth_nodata) else
                  truth == rules.truth_nodata)
    if np.issubdtype(truth.dtype, np.floating):
        keep &= ~np.isnan(truth)
    if rules.ignore_index is not None:
        keep &= truth != rules.ignore_index
    return keep


def count_block(pred: np.ndarray, truth: np.ndarray, rules: LabelRules,
                extra_ignore: np.ndarray | None = None) -> np.ndarray:
    """Confusion ``int64 (M, M)`` of one block: ``pred`` and ``truth`` are ``(h, w)``.

    ``M`` is the largest class id seen plus one (at least ``rules.num_classes``); counts
    come from ``numpy.bincount``, exact in int64. ``extra_ignore`` ``bool (h, w)`` drops
    more pixels (e.g. outside the truth after resampling).
    """
    keep = np.ones(pred.shape, dtype=bool)
    if rules.pred_nodata is not None:
        keep &= pred != rules.pred_nodata
    if rules.truth_nodata is not None:
        keep &= ~(np.isnan(truth) if np.isnan(rules.truth_nodata) else
                  truth == rules.truth_nodata)
    if np.issubdtype(truth.dtype, np.floating):
        keep &= ~np.isnan(truth)
    if extra_ignore is not None:
        keep &= ~extra_ignore
    t = truth[keep]
    if rules.ignore_index is not None:
        sel = t != rules.ignore_index
        t = t[sel]
        p = pred[keep][sel]
    else:
        p = pred[keep]
    t = _as_labels(t, "the truth")
    p = _as_labels(p, "the prediction")
    if rules.instances:
        t = (t > 0).astype(np.int64)
    if rules.mapping:
        lut_from = np.array([a for a, _ in rules.mapping])
        lut_to = np.array([b for _, b in rules.mapping])
        order = np.argsort(lut_from)
        pos = np.searchsorted(lut_from[order], t)
        pos = np.clip(pos, 0, len(order) - 1)
        hit = lut_from[order][pos] == t
        t = np.where(hit, lut_to[order][pos], t)
    if (t.size and t.min() < 0) or (p.size and p.min() < 0):
        raise InputError("negative class ids: use --ignore-index or a mapping")
    k = rules.num_classes or 0
    m = max(k, int(t.max()) + 1 if t.size else 0, int(p.max()) + 1 if p.size else 0, 1)
    if rules.num_classes and m > rules.num_classes:
        side = "truth" if t.size and t.max() >= k else "prediction"
        bad = int(t.max() if side == "truth" else p.max())
        raise InputError(f"the {side} has class id {bad} but there are only {k} classes "
                         "(use --classes, --map, --ignore-index or --instances)")
    return np.bincount(t * m + p, minlength=m * m).astype(np.int64).reshape(m, m)


def merge(parts: list[np.ndarray]) -> np.ndarray:
    """Sum confusion matrices of different sizes (padded with zeros), exactly in int64."""
    m = max((p.shape[0] for p in parts), default=1)
    total = np.zeros((m, m), dtype=np.int64)
    for p in parts:
        total[:p.shape[0], :p.shape[1]] += p
    return total


BlockCounter = Callable[[tuple[int, int, int, int]], np.ndarray]
