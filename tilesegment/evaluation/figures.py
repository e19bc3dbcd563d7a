"""Pictures for a person: the confusion matrix as a heat map, and a downsampled preview that
overlays the mask and its errors on the image. PNG via matplotlib (Agg, no display)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tilesegment.evaluation.report import Report
from tilesegment.read.base import Raster


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    # tight_layout cannot move axes whose images fix their aspect: the bounding box of
    # everything drawn keeps the titles inside the picture.
    fig.savefig(path, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    return path


def decimate(raster: Raster, max_side: int = 1024, band_rows: int = 1024) -> np.ndarray:
    """Nearest-neighbour thumbnail ``(C, h, w)`` with ``max(h, w) ≤ max_side``, read in
    strips of ``band_rows`` rows so memory stays bounded by a strip."""
    step = max(1, -(-max(raster.height, raster.width) // max_side))
    rows = np.arange(0, raster.height, step)
    cols = np.arange(0, raster.width, step)
    out = np.empty((raster.bands, len(rows), len(cols)), dtype=raster.dtype)
    band_rows = max(step, band_rows // step * step)
    for start in range(0, raster.height, band_rows):
        stop = min(start + band_rows, raster.height)
        sel = rows[(rows >= start) & (rows < stop)]
        if not len(sel):
            continue
        strip = raster.read((start, stop, 0, raster.width))
        first = np.searchsorted(rows, sel[0])
        out[:, first:first + len(sel)] = strip[:, sel - start][:, :, cols]
    return out


def confusion_heatmap(report: Report, path: str | Path) -> Path:
    """Row-normalised confusion matrix (recall per true class) with counts, as a PNG."""
    plt = _pyplot()

    cm = report.confusion.astype(np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(report.class_names)
    size = max(4.0, 0.6 * k + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=120)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), report.class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), report.class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (rows normalised; counts in cells)")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(cm[i, j]):,}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    return _save(plt, fig, path)


def error_preview(prediction: Raster, truth: np.ndarray, path: str | Path,
                  colors: list[tuple[int, int, int]], image: Raster | None = None,
                  max_side: int = 1024, pred_nodata: float | None = None,
                  counted: np.ndarray | None = None) -> Path:
    """Three panels at thumbnail scale: the image (if given), the predicted mask over it,
    and the errors (red: wrong class; grey: not counted — nodata of either side, or truth
    left out by ``counted``, e.g. ``--ignore-index``). ``truth`` is the thumbnail of the
    truth already on the prediction's grid, ``(h, w)`` class ids."""
    plt = _pyplot()

    pred = decimate(prediction, max_side)[0]
    palette = np.array(list(colors) + [(0, 0, 0)] * 256, dtype=np.uint8)
    valid = np.ones(pred.shape, bool) if pred_nodata is None else pred != pred_nodata
    scored = valid if counted is None else valid & counted[:pred.shape[0], :pred.shape[1]]
    overlay = palette[np.where(valid, pred, 0).astype(np.int64) % len(palette)]
    base = None
    if image is not None:
        thumb = decimate(image, max_side).astype(np.float64)
        thumb = thumb[:3] if thumb.shape[0] >= 3 else np.repeat(thumb[:1], 3, axis=0)
        lo, hi = np.nanpercentile(thumb, [1, 99])
        base = np.clip((thumb - lo) / max(hi - lo, 1e-9), 0, 1).transpose(1, 2, 0)
        base = base[:pred.shape[0], :pred.shape[1]]
        overlay = (0.55 * base * 255 + 0.45 * overlay).astype(np.uint8)
    errors = np.full((*pred.shape, 3), 255, np.uint8)
    errors[scored & (pred == truth)] = (225, 240, 225)
    errors[scored & (pred != truth)] = (220, 30, 30)
    errors[~scored] = (160, 160, 160)
    panels = [("image", base)] if base is not None else []
    panels += [("prediction", overlay), ("errors (red)", errors)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), dpi=120)
    for ax, (title, img) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    return _save(plt, fig, path)


def disagreement_map(disagreement: Raster, path: str | Path, max_side: int = 1024) -> Path:
    """Where overlapping tiles disagreed (red), downsampled by nearest neighbour."""
    plt = _pyplot()

    d = decimate(disagreement, max_side)[0]
    rgb = np.full((*d.shape, 3), 255, np.uint8)
    rgb[d == 1] = (220, 30, 30)
    rgb[d == 255] = (160, 160, 160)
    fig, ax = plt.subplots(figsize=(6, 6 * d.shape[0] / max(d.shape[1], 1)), dpi=120)
    ax.imshow(rgb, interpolation="nearest")
    ax.set_title("pixels where overlapping tiles disagree (red)")
    ax.axis("off")
    return _save(plt, fig, path)
