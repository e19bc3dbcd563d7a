"""Evaluation against a truth mask: exact out-of-core confusion matrices, the FCN paper's
measures, per-class scores, seam diagnostics, and reports."""

from tilesegment.evaluate.evaluation import evaluate
from tilesegment.evaluate.metrics import class_scores, fcn_measures
from tilesegment.evaluate.report import Report

__all__ = ["Report", "class_scores", "evaluate", "fcn_measures"]
