"""The evaluation report: numbers, and their renderings as text, JSON, CSV and Markdown."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tilesegment.evaluation.metrics import ABSENT_POLICY, class_scores, fcn_measures

MEASURE_NAMES = {
    "pixel_accuracy": "pixel accuracy",
    "mean_accuracy": "mean accuracy",
    "mean_iou": "mean IoU",
    "frequency_weighted_iou": "frequency-weighted IoU",
}


@dataclass(frozen=True)
class SeamReport:
    """Confusion matrices of the seam band (within ``width`` px of a core boundary) and of
    the interior, for cores of side ``core``."""

    width: int
    core: int
    seam: np.ndarray
    interior: np.ndarray

    def summary(self) -> dict[str, Any]:
        out = {"width": self.width, "core": self.core}
        for name, cm in (("seam", self.seam), ("interior", self.interior)):
            m = fcn_measures(cm)
            out[name] = {"pixels": int(cm.sum()), "pixel_accuracy": m["pixel_accuracy"],
                         "mean_iou": m["mean_iou"]}
        return out


@dataclass(frozen=True)
class OverlapReport:
    """For a Gaussian-blended run with its disagreement map: confusion matrices of the
    pixels where overlapping tiles agreed on the class and where they disagreed."""

    agree: np.ndarray
    disagree: np.ndarray

    def summary(self) -> dict[str, Any]:
        total = int(self.agree.sum() + self.disagree.sum())
        out: dict[str, Any] = {"disagreeing_fraction":
                               int(self.disagree.sum()) / total if total else None}
        for name, cm in (("agree", self.agree), ("disagree", self.disagree)):
            out[name] = {"pixels": int(cm.sum()),
                         "pixel_accuracy": fcn_measures(cm)["pixel_accuracy"]}
        return out


@dataclass(frozen=True)
class Report:
    """An evaluation: ``confusion`` ``int64 (K, K)`` (rows truth, columns prediction), the
    FCN measures, per-class scores, optional seam diagnostics."""

    confusion: np.ndarray
    class_names: tuple[str, ...]
    measures: dict[str, float]
    per_class: list[dict[str, Any]]
    seam: SeamReport | None = None
    overlap: OverlapReport | None = None
    sources: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)
    policy: str = ABSENT_POLICY

    @classmethod
    def build(cls, confusion: np.ndarray, class_names=None, **kwargs) -> Report:
        k = confusion.shape[0]
        names = list(class_names or [])[:k]
        names += [f"class_{i}" for i in range(len(names), k)]
        s = class_scores(confusion)
        rows = []
        for i, name in enumerate(names):
            rows.append({
                "class": i, "name": name, "absent": not bool(s.present[i]),
                "iou": _num(s.iou[i]), "dice": _num(s.dice[i]),
                "precision": _num(s.precision[i]), "recall": _num(s.recall[i]),
                "support": int(s.support[i]), "predicted": int(s.predicted[i]),
            })
        return cls(confusion=confusion, class_names=tuple(names),
                   measures=fcn_measures(confusion), per_class=rows, **kwargs)

    def iou(self, cls_id: int) -> float:
        """IoU of class ``cls_id`` (NaN if absent)."""
        value = self.per_class[cls_id]["iou"]
        return math.nan if value is None else value

    def to_dict(self) -> dict[str, Any]:
        return {
            "measures": self.measures, "per_class": self.per_class,
            "confusion": self.confusion.tolist(), "class_names": list(self.class_names),
            "absent_class_policy": self.policy, "sources": self.sources,
            "settings": self.settings,
            "seam": self.seam.summary() if self.seam else None,
            "overlap": self.overlap.summary() if self.overlap else None,
            "figures": self.figures,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False, default=_json_default)

    def to_csv(self) -> str:
        """Per-class rows, then the four measures as rows with class ``all``."""
        buf = io.StringIO()
        cols = ["class", "name", "absent", "iou", "dice", "precision", "recall", "support",
                "predicted"]
        writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        writer.writeheader()
        for row in self.per_class:
            writer.writerow({c: "" if row[c] is None else row[c] for c in cols})
        for key, value in self.measures.items():
            writer.writerow({"class": "all", "name": key, "iou": _fmt(value, raw=True)})
        return buf.getvalue()

    @property
    def random_weights_warning(self) -> str | None:
        """A warning line when the prediction came from a model with random weights."""
        model = self.settings.get("random_weights")
        if not model:
            return None
        return (f"WARNING: the prediction was made by {model!r} with RANDOM weights: these "
                "scores measure a test fixture, not a model")

    def table(self) -> str:
        """A plain-text table for the terminal."""
        lines = [self.random_weights_warning, ""] if self.random_weights_warning else []
        lines.append(f"{'class':<20}{'IoU':>8}{'Dice':>8}{'prec.':>8}{'recall':>8}"
                     f"{'support':>14}")
        for row in self.per_class:
            if row["absent"]:
                lines.append(f"{row['name']:<20}{'absent':>8}")
                continue
            lines.append(f"{row['name']:<20}{_fmt(row['iou']):>8}{_fmt(row['dice']):>8}"
                         f"{_fmt(row['precision']):>8}{_fmt(row['recall']):>8}"
                         f"{row['support']:>14,}")
        lines.append("")
        for key, label in MEASURE_NAMES.items():
            lines.append(f"{label:<24}{_fmt(self.measures[key])}")
        if self.seam:
            s = self.seam.summary()
            lines.append("")
            lines.append(f"seams (within {s['width']} px of a core boundary, core "
                         f"{s['core']} px):")
            for part in ("seam", "interior"):
                lines.append(f"  {part:<10}accuracy {_fmt(s[part]['pixel_accuracy'])}  "
                             f"mean IoU {_fmt(s[part]['mean_iou'])}  "
                             f"({s[part]['pixels']:,} px)")
        if self.overlap:
            o = self.overlap.summary()
            lines.append("")
            lines.append(f"overlapping tiles disagree on {_pct(o['disagreeing_fraction'])} of "
                         "pixels:")
            for part in ("agree", "disagree"):
                lines.append(f"  {part:<10}accuracy {_fmt(o[part]['pixel_accuracy'])}  "
                             f"({o[part]['pixels']:,} px)")
        lines.append("")
        lines.append(f"absent classes: {self.policy}")
        return "\n".join(lines)

    def to_markdown(self, figures: dict[str, str] | None = None) -> str:
        """A Markdown report; ``figures`` (default: the report's own) maps a caption to a
        PNG path relative to the report."""
        figures = self.figures if figures is None else figures
        out = ["# Segmentation evaluation", ""]
        if self.random_weights_warning:
            out += [f"**{self.random_weights_warning}**", ""]
        for key, value in self.sources.items():
            out.append(f"- {key}: `{value}`")
        out.append(f"- pixels counted: {self.settings.get('pixels_counted', 0):,}")
        out += ["", "| measure | value |", "|---|---|"]
        for key, label in MEASURE_NAMES.items():
            out.append(f"| {label} | {_fmt(self.measures[key])} |")
        out += ["", "| class | IoU | Dice | precision | recall | support |",
                "|---|---|---|---|---|---|"]
        for row in self.per_class:
            if row["absent"]:
                out.append(f"| {row['name']} | absent | | | | 0 |")
            else:
                out.append(f"| {row['name']} | {_fmt(row['iou'])} | {_fmt(row['dice'])} | "
                           f"{_fmt(row['precision'])} | {_fmt(row['recall'])} | "
                           f"{row['support']:,} |")
        if self.seam:
            s = self.seam.summary()
            out += ["", f"## Seams (within {s['width']} px of a core boundary; "
                        f"core {s['core']} px)", "",
                    "| region | pixels | pixel accuracy | mean IoU |", "|---|---|---|---|"]
            for part in ("seam", "interior"):
                out.append(f"| {part} | {s[part]['pixels']:,} | "
                           f"{_fmt(s[part]['pixel_accuracy'])} | {_fmt(s[part]['mean_iou'])} |")
        if self.overlap:
            o = self.overlap.summary()
            out += ["", "## Where blended tiles disagree", "",
                    f"Overlapping tiles' own classes differ on "
                    f"{_pct(o['disagreeing_fraction'])} of the counted pixels.", "",
                    "| pixels where tiles | pixels | pixel accuracy |", "|---|---|---|"]
            for part in ("agree", "disagree"):
                out.append(f"| {part} | {o[part]['pixels']:,} | "
                           f"{_fmt(o[part]['pixel_accuracy'])} |")
        for caption, path in (figures or {}).items():
            out += ["", f"![{caption}]({path})"]
        out += ["", f"Absent classes: {self.policy}.", ""]
        return "\n".join(out)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _fmt(x: float | None, raw: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a" if not raw else ""
    return repr(float(x)) if raw else f"{x:.4f}"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return _num(float(obj))
    raise TypeError(type(obj).__name__)
