"""A run plan as plain JSON-able values and as the text ``tilesegment plan`` prints."""

from __future__ import annotations

import dataclasses
from typing import Any

from tilesegment.limits import format_bytes
from tilesegment.plan.model import RunPlan


def describe_plan(plan: RunPlan) -> dict[str, Any]:
    """``plan`` as a JSON-able dict: one key per section, plus ``fingerprint``."""
    src, mdl, geo, norm, out, exe = (plan.source, plan.model, plan.geometry,
                                     plan.normalization, plan.output, plan.execution)
    return {
        "source": {"path": src.description, "kind": src.kind, "shape": list(src.shape),
                   "dtype": src.dtype, "level": src.level, "mpp": src.mpp,
                   "nodata": src.nodata},
        "model": {"reference": mdl.reference, "kind": mdl.kind, "name": mdl.name,
                  "classes": mdl.classes, "channels": mdl.channels,
                  "class_names": list(mdl.class_names), "weights": mdl.weights,
                  "weights_sha256": mdl.weights_sha256,
                  "backbone_weights": mdl.backbone_weights,
                  "backbone_weights_sha256": mdl.backbone_weights_sha256,
                  "random_weights": mdl.random_weights,
                  "seed": mdl.seed if mdl.random_weights else None,
                  "content_key": mdl.content_key},
        "geometry": {"tile": geo.tile, "halo": geo.halo, "halo_reason": geo.halo_reason,
                     "shrink": geo.shrink, "core": geo.core, "pad_mode": geo.pad_mode,
                     "pad_value": geo.pad_value, "blend": geo.blend,
                     "blend_margin": geo.blend_margin,
                     "blend_preset": geo.blend_preset if geo.blend == "gaussian" else None},
        "normalization": {"asked": norm.asked, "mode": norm.mode,
                          "mean": None if norm.mean is None else list(norm.mean),
                          "std": None if norm.std is None else list(norm.std)},
        "crf": None if plan.crf is None else {
            **dataclasses.asdict(plan.crf.params),
            "value_range": None if plan.crf.value_range is None
            else [list(v) for v in plan.crf.value_range]},
        "output": {"path": out.path, "kind": out.kind, "layers": list(out.layers),
                   "cog": out.cog, "overwrite": out.overwrite, "ome_zarr_image": out.image,
                   "returns": out.returns if out.path is None else None,
                   "mask_dtype": out.mask_dtype},
        "execution": {"block": list(exe.block), "blocks": exe.blocks, "tiles": exe.tiles,
                      "batch_size": exe.batch_size, "device": exe.device,
                      "device_type": exe.device_type, "channels_last": exe.channels_last,
                      "scheduler": exe.scheduler if isinstance(exe.scheduler, str | None)
                      else type(exe.scheduler).__name__,
                      "workers": exe.workers, "progress": exe.progress,
                      "precision": exe.precision, "compile": exe.compile,
                      "task_memory_bytes": exe.task_memory, "tta": exe.tta},
        "tissue": {"asked": plan.tissue.asked, "mode": plan.tissue.mode,
                   "method": plan.tissue.method, "mask_file": plan.tissue.mask_file,
                   "tiles": plan.tissue.tiles, "tiles_skipped": plan.tissue.skipped},
        "fingerprint": plan.fingerprint,
    }


def _mpp_unit(src) -> str:
    """The unit of ``--mpp``: the raster's own (µm for slides, the CRS's for GeoTIFFs)."""
    georef = getattr(src.raster, "georef", None)
    unit = getattr(georef, "unit", None)
    return {"um": "µm", None: "units"}.get(unit, unit)


def format_plan(plan: RunPlan) -> list[str]:
    """The lines ``tilesegment plan`` prints."""
    src, mdl, geo, norm, out, exe = (plan.source, plan.model, plan.geometry,
                                     plan.normalization, plan.output, plan.execution)
    c, h, w = src.shape
    where = f"level {src.level}" + (f", at {src.mpp} {_mpp_unit(src)} per px" if src.mpp else "")
    weights = ("RANDOM weights" + (f" (seed {mdl.seed})" if mdl.random_weights else "")
               if mdl.random_weights else
               f"weights sha256 {mdl.weights_sha256}" if mdl.weights_sha256 else
               "weights in the module")
    if norm.mode == "raster":
        stats = "computed from the raster at run time" if norm.mean is None else (
            f"mean {_values(norm.mean)}, std {_values(norm.std)}")
        normalization = f"raster statistics ({stats})"
    elif norm.mode == "fixed":
        normalization = f"mean {_values(norm.mean)}, std {_values(norm.std)}"
    else:
        normalization = "none"
    pad = geo.pad_mode + (f" (value {geo.pad_value:g})" if geo.pad_mode == "constant" else "")
    blend = geo.blend_name + (f" (margin {geo.blend_margin})" if geo.blend_margin else "")
    memory = format_bytes(exe.task_memory) if exe.task_memory else "unknown"
    target = (f"{out.path} ({out.kind}{', COG' if out.cog else ''})" if out.path
              else f"in memory ({out.returns})")
    lines = [
        f"raster       {src.description}",
        f"             {c} × {h} × {w} (C×H×W), {src.dtype}, {where}",
        f"model        {mdl.name} ({mdl.kind}), {mdl.classes} classes, {mdl.channels} "
        f"channels",
        f"             {weights}",
        f"tile         {geo.tile}, halo {geo.halo} ({geo.halo_reason}), shrink {geo.shrink}, "
        f"core {geo.core}",
        f"pad / blend  {pad} / {blend}",
        f"normalise    {normalization}",
    ]
    if plan.crf is not None:
        p = plan.crf.params
        lines.append(f"dense CRF    w1 {p.w1:g}, θα {p.theta_alpha:g}, θβ {p.theta_beta:g}, "
                     f"w2 {p.w2:g}, θγ {p.theta_gamma:g}, {p.iterations} iterations")
    lines += [
        f"tiles        {exe.tiles} in {exe.blocks} block{'s' if exe.blocks != 1 else ''} "
        f"of {exe.block[0]} × {exe.block[1]} px",
        f"memory       {memory} per block task (batch {exe.batch_size}, {exe.device_type})",
        f"precision    {exe.precision}{', torch.compile' if exe.compile else ''}",
        *([f"TTA          {exe.tta} ({_tta_passes(exe.tta)} model passes per tile, "
           "probabilities averaged)"] if exe.tta != "none" else []),
        f"output       {target}",
        f"layers       {', '.join(out.layers)}",
        f"skip         {_skipping(plan)}",
        f"fingerprint  {plan.fingerprint}",
    ]
    return lines


def _skipping(plan: RunPlan) -> str:
    """What the run leaves out: tiles outside the tissue mask, and all-nodata tiles."""
    tissue = plan.tissue
    nodata = "tiles all nodata (found as blocks are read)"
    if tissue.mode == "none":
        return nodata + (" (no tissue mask: the CRF sees every tile)"
                         if plan.crf is not None else "")
    what = ("Otsu tissue mask (saturation, low-resolution level)" if tissue.mode == "otsu"
            else f"tissue mask {tissue.mask_file}")
    count = ("" if tissue.skipped is None
             else f": {tissue.skipped} of {tissue.tiles} tiles have no tissue")
    return f"{what}{count}; {nodata}"


def _tta_passes(tta: str) -> int:
    from tilesegment.tta import passes

    return passes(tta)


def _values(values: Any) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"
