"""Evaluation against a truth mask: exact out-of-core confusion matrices, the FCN paper's
measures, per-class scores, seam diagnostics, and reports."""

from tilesegment.evaluation.metrics import class_scores, fcn_measures
from tilesegment.evaluation.report import Report
from tilesegment.evaluation.scoring import evaluate

__all__ = ["Report", "class_scores", "evaluate", "fcn_measures"]
