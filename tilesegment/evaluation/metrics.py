"""The FCN paper's four measures and per-class scores, from an int64 confusion matrix.

``confusion[i, j]`` counts pixels of true class ``i`` predicted as ``j`` (Long et al. 2015,
§5: n_ij). With t_i = Σ_j n_ij:

- pixel accuracy           Σ_i n_ii / Σ_i t_i
- mean accuracy            (1/n_cl) Σ_i n_ii / t_i
- mean IoU                 (1/n_cl) Σ_i n_ii / (t_i + Σ_j n_ji − n_ii)
- frequency-weighted IoU   (Σ_k t_k)⁻¹ Σ_i t_i n_ii / (t_i + Σ_j n_ji − n_ii)

Absent-class policy: a class with no pixel in the truth and none in the prediction is
*absent*: reported as such and left out of every mean. A class predicted but not in the
truth has IoU 0 and counts in mean IoU; its accuracy (recall) is undefined, so it is left out
of mean accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ABSENT_POLICY = (
    "a class absent from both truth and prediction is reported as absent and left out of "
    "all means; a class predicted but absent from the truth has IoU 0 (counted in mean IoU) "
    "and undefined accuracy (left out of mean accuracy)"
)


@dataclass(frozen=True)
class ClassScores:
    """Per-class scores, float64 arrays of shape ``(K,)`` (NaN where undefined)."""

    iou: np.ndarray
    dice: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    support: np.ndarray      # true pixels per class, int64
    predicted: np.ndarray    # predicted pixels per class, int64
    present: np.ndarray      # bool: in truth or prediction


def class_scores(confusion: np.ndarray) -> ClassScores:
    """Per-class IoU, Dice/F1, precision, recall and support from ``confusion`` ``(K, K)``."""
    cm = np.asarray(confusion, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    union = support + predicted - np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        dice = np.where(support + predicted > 0, 2 * tp / (support + predicted), np.nan)
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
    return ClassScores(iou, dice, precision, recall, support, predicted, union > 0)


def fcn_measures(confusion: np.ndarray) -> dict[str, float]:
    """The four measures of the FCN paper, with the absent-class policy above."""
    cm = np.asarray(confusion, dtype=np.int64)
    s = class_scores(cm)
    total = int(cm.sum())
    correct = int(np.trace(cm))
    in_truth = s.support > 0
    with np.errstate(invalid="ignore"):
        pixel_accuracy = correct / total if total else float("nan")
        mean_accuracy = float(np.mean(s.recall[in_truth])) if in_truth.any() else float("nan")
        mean_iou = float(np.mean(s.iou[s.present])) if s.present.any() else float("nan")
        fw_iou = (float(np.sum(s.support[s.present] * s.iou[s.present]) / total)
                  if total else float("nan"))
    return {"pixel_accuracy": float(pixel_accuracy), "mean_accuracy": mean_accuracy,
            "mean_iou": mean_iou, "frequency_weighted_iou": fw_iou}
