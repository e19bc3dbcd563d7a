"""Prediction and truth must describe the same pixel grid; a mismatch is an error.

Checked before any pixel is counted: shape, transform (to 1e-9 of a pixel), CRS (two CRS
that differ only in name need ``allow_crs_alias``), pixel size for rasters without a CRS.
``TruthOnGrid`` instead samples the truth onto the prediction's grid by nearest neighbour.
"""

from __future__ import annotations

import numpy as np

from tilesegment.errors import InputError
from tilesegment.read.base import Raster

Window = tuple[int, int, int, int]


class GridMismatchError(InputError):
    """Prediction and truth lie on different pixel grids."""


def check_truth_for_run(source, truth, *, level: int | None = None, mpp: float | None = None,
                        allow_crs_alias: bool = False, resample_truth: bool = False) -> None:
    """Before a run with ``--truth``: the truth must lie on the grid the run's mask will have
    (the source's, at ``level``/``mpp``), unless it is to be resampled — so a mismatch is
    refused before hours of segmentation, not after."""
    from tilesegment.read import open_raster

    gt = open_raster(truth)
    if resample_truth:
        return
    check_same_grid(open_raster(source, level=level, mpp=mpp), gt, allow_crs_alias)


def check_same_grid(pred: Raster, truth: Raster, allow_crs_alias: bool = False) -> None:
    """Raise :class:`GridMismatchError` (one line, saying what differs) unless both rasters
    share shape, transform and CRS (or pixel size, for rasters without CRS)."""
    from tilesegment.read.crs import compare_crs, crs_name

    if pred.shape[1:] != truth.shape[1:]:
        raise GridMismatchError(
            f"prediction is {pred.height}×{pred.width} px but truth {truth.source} is "
            f"{truth.height}×{truth.width} px (use --resample-truth to sample it onto the "
            "prediction grid)")
    ga, gb = pred.georef, truth.georef
    relation = compare_crs(ga.crs_wkt, gb.crs_wkt)
    if relation == "different":
        raise GridMismatchError(
            f"CRS differ: prediction {crs_name(ga.crs_wkt)} vs truth {crs_name(gb.crs_wkt)}")
    if relation == "alias" and not allow_crs_alias:
        raise GridMismatchError(
            f"CRS are equivalent but named differently: prediction {crs_name(ga.crs_wkt)} vs "
            f"truth {crs_name(gb.crs_wkt)}; if they are the same grid on purpose, pass "
            "--allow-crs-alias (they may differ in datum realisation, which GDAL ignores)")
    if ga.transform is not None and gb.transform is not None:
        a, b = np.asarray(ga.transform, float), np.asarray(gb.transform, float)
        pixel = max(abs(a[0]), abs(a[4]), abs(a[1]), abs(a[3]), 1e-12)
        if np.abs(a - b).max() > 1e-9 * pixel:
            raise GridMismatchError(
                f"transforms differ: prediction {tuple(a)} vs truth {tuple(b)} "
                f"(a shift of {(b[2] - a[2]) / pixel:+.3g}, {(b[5] - a[5]) / pixel:+.3g} px)")
    elif (ga.transform is None) != (gb.transform is None) and relation != "none":
        raise GridMismatchError("only one of prediction and truth is georeferenced")
    if relation == "none" and ga.pixel_size and gb.pixel_size:
        pa, pb = np.asarray(ga.pixel_size), np.asarray(gb.pixel_size)
        if np.abs(pa - pb).max() > 1e-6 * pa.max():
            raise GridMismatchError(
                f"pixel sizes differ: prediction {tuple(pa)} vs truth {tuple(pb)} "
                f"{ga.unit or ''}".rstrip())


class TruthOnGrid:
    """The truth sampled by nearest neighbour at the centres of the prediction's pixels.

    Georeferenced rasters map through the two affine transforms (same CRS required, or
    an alias with ``allow_crs_alias``); others through the ratio of their pixel sizes.
    ``read(window)`` returns the truth ``(h, w)`` and a bool mask of pixels outside it.
    """

    def __init__(self, pred: Raster, truth: Raster, allow_crs_alias: bool = False):
        from tilesegment.read.crs import compare_crs

        self.truth = truth
        ga, gb = pred.georef, truth.georef
        relation = compare_crs(ga.crs_wkt, gb.crs_wkt)
        if relation in ("different", "missing") or (relation == "alias"
                                                    and not allow_crs_alias):
            check_same_grid(pred, truth, allow_crs_alias)  # raises the CRS message
            raise GridMismatchError("cannot resample: the CRS do not match")
        if ga.transform is not None and gb.transform is not None:
            a = np.array([*ga.transform, 0, 0, 1], float).reshape(3, 3)
            b = np.array([*gb.transform, 0, 0, 1], float).reshape(3, 3)
            self.matrix = np.linalg.inv(b) @ a  # prediction (col, row) → truth (col, row)
        elif ga.pixel_size and gb.pixel_size:
            sy = ga.pixel_size[0] / gb.pixel_size[0]
            sx = ga.pixel_size[1] / gb.pixel_size[1]
            self.matrix = np.array([[sx, 0, 0], [0, sy, 0], [0, 0, 1.0]])
        else:
            raise GridMismatchError(
                "cannot resample the truth: neither a transform nor a pixel size relates "
                "the two grids")

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        r0, r1, c0, c1 = window
        cols = np.arange(c0, c1) + 0.5
        rows = np.arange(r0, r1) + 0.5
        m = self.matrix
        if m[0, 1] or m[1, 0]:
            raise GridMismatchError("rotated transforms are not supported for resampling")
        tc = np.floor(m[0, 0] * cols + m[0, 2]).astype(np.int64)
        tr = np.floor(m[1, 1] * rows + m[1, 2]).astype(np.int64)
        h, w = self.truth.height, self.truth.width
        ok_c = (tc >= 0) & (tc < w)
        ok_r = (tr >= 0) & (tr < h)
        values = np.zeros((r1 - r0, c1 - c0), dtype=self.truth.dtype)
        outside = ~(ok_r[:, None] & ok_c[None, :])
        if ok_c.any() and ok_r.any():
            rr, cc = tr[ok_r], tc[ok_c]
            src = self.truth.read((int(rr.min()), int(rr.max()) + 1,
                                   int(cc.min()), int(cc.max()) + 1))[0]
            sub = src[rr - rr.min()][:, cc - cc.min()]
            values[np.ix_(ok_r, ok_c)] = sub
        return values, outside
