"""``evaluate()``: an exact confusion matrix between a predicted mask and a truth mask,
counted block by block with Dask and summed; the FCN measures and per-class scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tilesegment.errors import InputError, portable_errors
from tilesegment.evaluation.align import TruthOnGrid, check_same_grid
from tilesegment.evaluation.confusion import LabelRules, count_block, merge
from tilesegment.evaluation.report import OverlapReport, Report, SeamReport
from tilesegment.evaluation.seams import seam_band
from tilesegment.execute import compute
from tilesegment.grid import iter_blocks
from tilesegment.read import open_raster
from tilesegment.workers import available_cores


def evaluate(
    prediction: Any,
    truth: Any,
    *,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    ignore_index: int | None = None,
    instances: bool = False,
    mapping: dict[int, int] | None = None,
    allow_crs_alias: bool = False,
    resample_truth: bool = False,
    seam_width: int | None = None,
    core: int | None = None,
    block: int = 2048,
    scheduler: Any = None,
    workers: int | None = None,
    figures_dir: str | Path | None = None,
    image: Any = None,
    class_field: str | None = None,
) -> Report:
    """Score ``prediction`` (class ids) against ``truth``; both paths, arrays or rasters.

    ``instances``: truth ids > 0 count as class 1 (instance-label masks). ``mapping``: truth
    value → class id. ``ignore_index`` and nodata pixels of either side are not counted.
    ``seam_width``: also score pixels within that many px of a tile-core boundary against
    the rest; the core side comes from the prediction's provenance or ``core``.
    ``figures_dir``: write ``confusion.png`` and ``preview.png`` there (the preview over
    ``image``, by default the input recorded in the prediction's provenance, if it exists).
    ``class_field``: ``truth`` is a vector file (GeoPackage, GeoJSON...) whose polygons
    carry their class (an id, or a class name of the prediction) in this field; they are
    rasterised onto the prediction's grid block by block, pixels outside every polygon
    not counted.
    """
    meta = _output_meta(prediction)  # refuses an incomplete or mixed output of ours
    pred = open_raster(prediction)
    gt = _open_truth(truth, pred, class_field,
                     class_names or (meta or {}).get("class_names"), allow_crs_alias)
    if class_field is not None:
        resample_truth = False  # rasterised on the prediction's grid already
    if pred.bands != 1 or gt.bands != 1:
        raise InputError(f"masks must have one band: prediction has {pred.bands}, "
                         f"truth {gt.bands}")
    if resample_truth:
        sampler = TruthOnGrid(pred, gt, allow_crs_alias)
    else:
        check_same_grid(pred, gt, allow_crs_alias)
        sampler = None
    if meta and num_classes is None:
        num_classes = meta.get("num_classes")
    if meta and class_names is None:
        class_names = meta.get("class_names")
    rules = LabelRules(num_classes=num_classes, ignore_index=ignore_index,
                       truth_nodata=gt.nodata, pred_nodata=pred.nodata, instances=instances,
                       mapping=tuple(sorted((mapping or {}).items())))
    if seam_width and core is None:
        prov = (meta or {}).get("provenance") or {}
        if "tile" in prov and "halo" in prov:
            core = int(prov["tile"]) - 2 * int(prov["halo"])
        else:
            raise InputError("seam diagnostics need the core size: the prediction has no "
                             "tilesegment provenance, so give the core side (--core)")
    import dask

    shape = (pred.height, pred.width)
    layer = ((meta or {}).get("layer_paths") or {}).get("disagreement")
    disagreement = open_raster(layer) if layer else None
    job = dask.delayed((pred, gt, sampler, rules, core, seam_width, disagreement), pure=True,
                       traverse=False)
    tasks = [dask.delayed(_count, pure=True)(job, w, shape)
             for w in iter_blocks(shape, (block, block))]
    parts = compute(tasks, scheduler, workers or available_cores())
    confusion = merge([p[0] for p in parts])
    seam = None
    if seam_width:
        seam = SeamReport(width=seam_width, core=core,
                          seam=merge([p[1] for p in parts]),
                          interior=merge([p[2] for p in parts]))
        k = max(confusion.shape[0], seam.seam.shape[0], seam.interior.shape[0])
        seam = SeamReport(seam_width, core, _pad(seam.seam, k), _pad(seam.interior, k))
    overlap = None
    if disagreement is not None:
        overlap = OverlapReport(agree=merge([p[3] for p in parts]),
                                disagree=merge([p[4] for p in parts]))
    figures = {}
    if figures_dir is not None:
        figures = _figures(Path(figures_dir), confusion, class_names, pred, gt, sampler,
                           rules, meta, image, disagreement)
    return Report.build(confusion, class_names, seam=seam, overlap=overlap, figures=figures,
                        sources={
        "prediction": pred.source, "truth": gt.source}, settings={
        "ignore_index": ignore_index, "instances": instances,
        "mapping": {str(a): b for a, b in (mapping or {}).items()},
        "resample_truth": resample_truth, "allow_crs_alias": allow_crs_alias,
        "pixels_counted": int(confusion.sum()), "shape": list(shape),
        "random_weights": _random_weights_model(meta)})


def _open_truth(truth: Any, pred, class_field: str | None, names: list[str] | None,
                allow_crs_alias: bool):
    """The truth as a raster: polygons rasterised on ``pred``'s grid with
    ``class_field``, else whatever ``open_raster`` opens."""
    from tilesegment.read.vector import VectorTruth, is_vector

    if class_field is not None:
        if not isinstance(truth, str | Path):
            raise InputError("--class-field needs a vector truth file")
        return VectorTruth(truth, pred, class_field, names, allow_crs_alias)
    if isinstance(truth, str | Path) and is_vector(truth):
        raise InputError(f"{truth} is a vector file: name the field holding each "
                         "polygon's class with --class-field")
    return open_raster(truth)


def _random_weights_model(meta: dict | None) -> str | None:
    """The model's name when the prediction was made with random weights (its provenance
    says so), else ``None``."""
    prov = (meta or {}).get("provenance") or {}
    return prov.get("model") or "?" if prov.get("random_weights") else None


def _pad(cm: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((k, k), np.int64)
    out[:cm.shape[0], :cm.shape[1]] = cm
    return out


@portable_errors
def _count(job, window, shape):
    """Confusion matrices of one block: all counted pixels, then (optionally) the seam
    band and the interior, then pixels where blended tiles agreed and disagreed."""
    pred, gt, sampler, rules, core, width, disagreement = job
    p = pred.read(window)[0]
    if sampler is None:
        t, outside = gt.read(window)[0], None
    else:
        t, outside = sampler.read(window)
    out = np.zeros(p.shape, bool) if outside is None else outside

    def split(region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (count_block(p, t, rules, out | region),    # outside the region
                count_block(p, t, rules, out | ~region))   # inside it

    whole = count_block(p, t, rules, outside)
    interior = seam = agree = disagree = None
    if width:
        interior, seam = split(seam_band(window, shape, core, width))
    if disagreement is not None:
        agree, disagree = split(disagreement.read(window)[0] == 1)
    return whole, seam, interior, agree, disagree


def _output_meta(source: Any) -> dict | None:
    """tilesegment's own metadata of a written mask, or None for anything else.

    Raises :class:`~tilesegment.errors.IncompleteOutputError` for an output of ours that is
    incomplete (a partial, blocks missing, no completion record) or mixed (layers of
    different runs): scoring it would report a result that looks right and is not.
    """
    if not isinstance(source, str | Path):
        return None
    from tilesegment.errors import IncompleteOutputError
    from tilesegment.write import read_output_meta
    from tilesegment.write.verify import output_problems

    try:
        meta = read_output_meta(source)
    except IncompleteOutputError:
        raise
    except Exception:  # not one of ours: plain GeoTIFF/TIFF/Zarr masks are fine too
        return None
    problems = output_problems(meta)
    if problems:
        raise IncompleteOutputError(f"refusing to score {source}: not a complete tilesegment "
                                    f"output: {'; '.join(problems)}")
    return meta


def _figures(folder: Path, confusion, class_names, pred, gt, sampler, rules, meta,
             image, disagreement) -> dict[str, str]:
    from tilesegment.evaluation.figures import (
        confusion_heatmap,
        disagreement_map,
        error_preview,
    )
    from tilesegment.models.spec import palette

    folder.mkdir(parents=True, exist_ok=True)
    report = Report.build(confusion, class_names)
    heat = confusion_heatmap(report, folder / "confusion.png")
    truth, counted = _thumbnail_truth(pred, gt, sampler, rules)
    colors = (meta or {}).get("class_colors") or list(palette(confusion.shape[0]))
    if image is None and meta:
        source = ((meta.get("provenance") or {}).get("input") or {}).get("path")
        if source and Path(source).exists():
            image = source
    picture = None
    if image is not None:
        level = ((meta or {}).get("provenance") or {}).get("input", {}).get("level")
        picture = open_raster(image, level=level or None)
        if picture.shape[1:] != pred.shape[1:]:
            picture = None  # a different grid (e.g. --mpp resampled run): no underlay
    preview = error_preview(pred, truth, folder / "preview.png", colors, picture,
                            pred_nodata=pred.nodata, counted=counted)
    figures = {"confusion matrix": heat.name, "prediction and errors": preview.name}
    if disagreement is not None:
        figures["where blended tiles disagree"] = disagreement_map(
            disagreement, folder / "disagreement.png").name
    return figures


def _thumbnail_truth(pred, gt, sampler, rules) -> tuple[np.ndarray, np.ndarray]:
    """The truth at the prediction thumbnail's pixels: class ids ``int64 (h, w)``, and
    ``bool (h, w)`` where it is counted (not nodata, not ``--ignore-index``)."""
    from tilesegment.evaluation.confusion import truth_counted
    from tilesegment.evaluation.figures import decimate

    if sampler is None:
        raw = decimate(gt)[0]
    else:
        step = max(1, -(-max(pred.height, pred.width) // 1024))
        rows = np.arange(0, pred.height, step)
        cols = np.arange(0, pred.width, step)
        raw = np.stack([sampler.read((int(r), int(r) + 1, 0, pred.width))[0][0, cols]
                        for r in rows])
    counted = truth_counted(raw, rules)
    t = np.where(counted, raw, 0).astype(np.int64)
    if rules.instances:
        t = (t > 0).astype(np.int64)
    for a, b in rules.mapping:
        t[t == a] = b
    return t, counted
