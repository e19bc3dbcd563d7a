"""``segment()``: a run plan, executed block by block over Dask, then published.

``segment()`` is three steps: :func:`tilesegment.plan.build_plan` checks every setting and
gathers them into a frozen :class:`~tilesegment.plan.RunPlan` (nothing read, nothing built);
then the model is built (once per process, from a content-keyed pool), what needs pixel reads
is filled in (normalisation statistics, the CRF's value range) and :func:`execute` runs the
block tasks (read → tile → infer → stitch → write); :func:`publish` sums up the run once its
output is finalised.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tilesegment.block import BlockJob, Skipping, block_array, write_block
from tilesegment.errors import NonFiniteWarning
from tilesegment.execute import compute
from tilesegment.grid import iter_blocks
from tilesegment.plan.build import RETURNS, absolute_path, build_plan, complete_plan
from tilesegment.plan.model import RunPlan
from tilesegment.workers import ModelRecipe, release, validate_recipe, with_content_key

__all__ = ["RETURNS", "RunSummary", "execute", "provenance", "publish", "segment"]


@dataclass
class RunSummary:
    """What a run wrote: the output path, pixel counts per class, tiles run, seconds.

    ``nodata_pixels`` counts every nodata pixel of the mask. Of those,
    ``nonfinite_logit_pixels`` had valid input but NaN/inf logits (a model fault). Apart,
    ``nonfinite_input_pixels`` counts pixels with a ±inf (or beyond-float32) input value,
    treated as missing like NaN.
    """

    output: Path
    shape: tuple[int, int]
    class_names: tuple[str, ...]
    class_counts: np.ndarray
    nodata_pixels: int
    tiles: int
    blocks: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    nonfinite_input_pixels: int = 0
    nonfinite_logit_pixels: int = 0
    tiles_skipped: int = 0
    """Tiles not run: all nodata, or outside the tissue (``tiles`` counts those run)."""


def _holding_output_lock(func):
    """Hold the output's lock (:mod:`tilesegment.write.lock`) for the whole call: a second
    run onto the same output is refused before it builds a model or reads a pixel."""

    @functools.wraps(func)
    def locked(source: Any, output: str | Path | None = None, **kwargs: Any):
        from tilesegment.write.lock import output_lock

        with output_lock(output):
            return func(source, output, **kwargs)

    return locked


@_holding_output_lock
def segment(
    source: Any,
    output: str | Path | None = None,
    *,
    model: Any = "nuclei",
    weights: str | Path | None = None,
    backbone_weights: str | Path | None = None,
    classes: int | None = None,
    tile: int | None = None,
    halo: int | None = None,
    pad_mode: str = "reflect",
    pad_value: float = 0.0,
    blend: str = "crop",
    batch_size: int = 8,
    block_size: int | None = None,
    device: str = "auto",
    level: int | None = None,
    mpp: float | None = None,
    normalization: str | tuple | None = None,
    save_probabilities: bool = False,
    save_disagreement: bool = False,
    crf: Any = None,
    returns: str = "mask",
    overwrite: bool = False,
    cog: bool = False,
    scheduler: Any = None,
    workers: int | None = None,
    channels_last: bool = True,
    progress: bool = False,
    seed: int = 0,
    protect: tuple[str | Path, ...] = (),
    precision: str = "fp32",
    compile: bool = False,
    resume: bool = False,
    tissue: str = "auto",
    tissue_mask: str | Path | None = None,
    tta: str = "none",
    ome_zarr_image: str = "none",
) -> np.ndarray | RunSummary:
    """Segment ``source`` tile by tile.

    ``source``: a path (GeoTIFF, slide TIFF/SVS/OME-TIFF, Zarr), a ``(C, H, W)`` or ``(H, W)``
    numpy or dask array, or an opened raster. ``model``: a registered name or any
    ``torch.nn.Module`` obeying the contract ``float32[N, C, T, T] → float32[N, K, T', T']``.
    ``normalization``: ``"spec"`` (the model's), ``"raster"``, ``"none"`` or ``(mean, std)``.
    ``backbone_weights``: a local torchvision VGG16 state-dict file that initialises the
    backbone of the VGG-based models (FCN, DeepLab) before any ``weights`` are loaded.
    ``save_disagreement`` (``blend="gaussian"`` only): also write where overlapping tiles'
    own classes disagree, a seam diagnostic that ``evaluate`` reports.
    ``crf``: a :class:`~tilesegment.models.crf.CRFParams` (or ``True``: the model card's
    tuned setting from ``tilesegment tune-crf`` if it has one, else the defaults; a card
    recording "no CRF" skips it, with a warning) to refine each block with a fully
    connected CRF over the block plus the CRF's halo.
    ``precision``: ``fp32`` (default), ``bf16`` or ``fp16`` (CUDA only) model calls under
    ``torch.autocast``; ``compile``: ``torch.compile`` the model once per process.
    ``blend``: ``crop``, ``gaussian`` or ``gaussian:<preset>`` (the weight map: ``monai``,
    ``nnunet``; ``gaussian`` alone is ``gaussian:tilesegment``, see
    :mod:`tilesegment.merge.gaussian`). ``tta``: test-time augmentation, ``none``,
    ``flips`` (4 passes per tile) or ``d4`` (8: flips and quarter turns), averaged in
    probability space per tile before merging (:mod:`tilesegment.tta`); ``logits`` are then
    the log of the averaged probabilities.
    ``tissue``: ``auto`` (Otsu for RGB slides, none otherwise), ``otsu`` or ``none``;
    ``tissue_mask``: a raster of the user's (non-zero = tissue) instead. Tiles outside the
    tissue, or all nodata, are not run: background (class 0) or nodata, see
    :mod:`tilesegment.block`.
    ``ome_zarr_image="copy"`` (an ``.ome.zarr`` output only): the container also holds the
    input's image (its levels from the one read), the labels under ``labels/mask``.

    With ``output=None`` returns the stitched result as a numpy array: ``returns="mask"``
    gives class ids ``(H, W)`` uint8/uint16 (nodata = 255/65535), ``"probabilities"`` or
    ``"logits"`` give ``float32 (K, H, W)``. With an ``output`` path (``.zarr`` or ``.tif``)
    writes it and returns a :class:`RunSummary`. The output never replaces, contains or lies
    inside a file the run reads (the source, the weights, and ``protect``: e.g. a truth mask),
    whatever ``overwrite`` says.

    An interrupted or failed run keeps the blocks it finished (in a hidden block store
    beside ``output``); ``resume=True`` finishes it, computing only the blocks not done
    (refused when its settings differ; without an unfinished run it just runs). A run onto
    an output with an unfinished run needs ``resume`` or ``overwrite`` (which discards it).
    """
    started = time.perf_counter()
    settings = dict(
        model=model, weights=weights, backbone_weights=backbone_weights,
        classes=classes, tile=tile, halo=halo, pad_mode=pad_mode, pad_value=pad_value,
        blend=blend, batch_size=batch_size, block_size=block_size, device=device,
        level=level, mpp=mpp, normalization=normalization,
        save_probabilities=save_probabilities, save_disagreement=save_disagreement, crf=crf,
        returns=returns, overwrite=overwrite, cog=cog, scheduler=scheduler, workers=workers,
        channels_last=channels_last, progress=progress, seed=seed, protect=protect,
        precision=precision, compile=compile, tissue=tissue, tissue_mask=tissue_mask,
        tta=tta,
        ome_zarr_image=ome_zarr_image)
    plan = build_plan(source, output, **settings)
    if resume and plan.output.path is not None:
        from tilesegment.resume import resume_plan

        plan = resume_plan(
            plan, lambda side: build_plan(source, output, **{**settings, "block_size": side}),
            block_size)
    with _model_held(plan) as recipe:
        plan = complete_plan(plan)  # the statistics it needs, read once the model is built
        if plan.output.path is None:
            return execute_in_memory(plan, recipe)
        with _output(plan, resume) as target:
            results = execute(plan, recipe, target)
            path = target.finalize()
    return publish(plan, path, results, started)


@contextlib.contextmanager
def _model_held(plan: RunPlan) -> Iterator[ModelRecipe]:
    """The recipe block tasks build the model from; the model itself is built (and, for
    a local run, kept) here, so a bad name, weights file or device fails before any output
    exists; this process lets it go afterwards (cluster workers keep theirs)."""
    recipe = model_recipe(plan)
    local = plan.execution.local
    try:
        validate_recipe(recipe, local)
        yield recipe
    finally:
        release(recipe.key, pinned=local)


def model_recipe(plan: RunPlan) -> ModelRecipe:
    """How block tasks build the model. A module from a file or function travels to
    cluster workers as its source (a TorchScript module cannot be pickled); a local run
    uses the one loaded while planning."""
    mdl, resolved = plan.model, plan.model.resolved
    if resolved is None:
        raise ValueError("plan built with resolve=False: build it again to execute it")
    module = resolved.module
    ship = resolved.source is not None and not plan.execution.local
    return with_content_key(ModelRecipe(
        in_channels=mdl.channels, num_classes=mdl.classes, out_side=plan.geometry.spec.out_side,
        name=None if module is not None else mdl.name,
        module=None if ship else module, source=resolved.source if ship else None,
        weights=mdl.weights, seed=mdl.seed, device=plan.execution.device,
        backbone_weights=mdl.backbone_weights,
        batch_size=plan.execution.batch_size, channels_last=plan.execution.channels_last,
        torch_threads=1, precision=plan.execution.precision,
        compile=plan.execution.compile, tta=plan.execution.tta))


@contextlib.contextmanager
def _output(plan: RunPlan, resume: bool = False) -> Iterator[Any]:
    """The output being written (or the unfinished one resumed). If anything below fails
    or is interrupted, its finished blocks are kept for a resume, or, with none finished,
    it is removed (:func:`~tilesegment.resume.keep_store`)."""
    from tilesegment.plan.fingerprint import flat_fields
    from tilesegment.resume import keep_store
    from tilesegment.write import OutputMeta, create_output

    mdl, out = plan.model, plan.output
    meta = OutputMeta(
        shape=(plan.source.height, plan.source.width), num_classes=mdl.classes,
        class_names=mdl.spec.class_names, class_colors=mdl.spec.class_colors,
        georef=plan.source.raster.georef, block_shape=plan.execution.block,
        save_probabilities=out.probabilities, save_disagreement=out.disagreement,
        provenance=provenance(plan))
    target = create_output(out.given, meta, overwrite=out.overwrite, cog=out.cog,
                           inputs=list(out.inputs), fingerprint=plan.fingerprint,
                           settings=flat_fields(plan), resume=resume)
    if out.image == "copy":
        target.image = plan.source.raster  # read again by finalize, into the container
    try:
        yield target
    except BaseException as exc:
        keep_store(target, exc, plan.execution.blocks)
        raise


def _block_job(plan: RunPlan, recipe: ModelRecipe, target: Any) -> BlockJob:
    norm, crf = plan.normalization, plan.crf
    dtype = np.dtype(plan.output.mask_dtype)
    return BlockJob(
        raster=plan.source.raster, spec=plan.geometry.spec, recipe=recipe,
        mean=None if norm.mean is None else np.asarray(norm.mean, np.float64),
        std=None if norm.std is None else np.asarray(norm.std, np.float64),
        pad_value=plan.geometry.pad_value, output=target,
        mask_nodata=int(np.iinfo(dtype).max), mask_dtype=dtype.str,
        crf=None if crf is None else crf.params,
        crf_range=None if crf is None else crf.value_range,
        run_id=None if target is None else target.run_id,
        skipping=None if crf is not None else Skipping(tissue=plan.tissue.mask))


def _windows(plan: RunPlan) -> list[tuple[int, int, int, int]]:
    return list(iter_blocks((plan.source.height, plan.source.width), plan.execution.block))


def execute(plan: RunPlan, recipe: ModelRecipe, target: Any) -> list[dict]:
    """Run every block task of ``plan`` into ``target`` but those its manifest already
    records (a resumed run); each block's counts, the recorded ones first."""
    import dask

    from tilesegment.resume import block_key

    exe, out = plan.execution, plan.output
    done = target.done_blocks()
    shared = dask.delayed(_block_job(plan, recipe, target), pure=True, traverse=False)
    token = shared.key.rsplit("-", 1)[-1][:12]
    tasks = [dask.delayed(write_block, pure=True)(shared, w, out.probabilities,
                                                    out.disagreement,
                                                    dask_key_name=block_key(w, token))
             for w in _windows(plan) if (w[0], w[2]) not in done]
    return [*done.values(), *compute(tasks, exe.scheduler, exe.workers, exe.progress)]


def execute_in_memory(plan: RunPlan, recipe: ModelRecipe) -> np.ndarray:
    """Run every block task of ``plan`` and stitch their results into one array: the class
    mask ``(H, W)``, the disagreement map ``(H, W)`` uint8, or float32 ``(K, H, W)``."""
    import dask

    exe, returns = plan.execution, plan.output.returns
    mask_dtype = np.dtype(plan.output.mask_dtype)
    windows = _windows(plan)
    shared = dask.delayed(_block_job(plan, recipe, None), pure=True, traverse=False)
    tasks = [dask.delayed(block_array, pure=True)(shared, w, returns, mask_dtype)
             for w in windows]
    results = compute(tasks, exe.scheduler, exe.workers, exe.progress)
    shape = (plan.source.height, plan.source.width)
    if returns in ("mask", "disagreement"):
        out = np.empty(shape, dtype=mask_dtype if returns == "mask" else np.uint8)
    else:
        out = np.empty((plan.model.classes, *shape), dtype=np.float32)
    for (r0, r1, c0, c1), (part, _) in zip(windows, results, strict=True):
        out[..., r0:r1, c0:c1] = part
    _warn_nonfinite(plan.source.raster, {
        name: sum(c[name] for _, c in results) for name in ("nonfinite", "faults")})
    return out


def publish(plan: RunPlan, path: str | Path, results: list[dict],
            started: float) -> RunSummary:
    """The summary of a written run (its output already finalised), with one warning per
    kind of non-finite value met."""
    counts = np.sum([r["counts"] for r in results], axis=0)
    nonfinite = {name: sum(r[name] for r in results) for name in ("nonfinite", "faults")}
    _warn_nonfinite(plan.source.raster, nonfinite)
    geo, exe = plan.geometry, plan.execution
    return RunSummary(
        output=Path(path), shape=(plan.source.height, plan.source.width),
        class_names=plan.model.spec.class_names, class_counts=counts,
        nodata_pixels=sum(r["nodata"] for r in results),
        tiles=sum(r["tiles"] for r in results), blocks=exe.blocks,
        seconds=time.perf_counter() - started,
        settings={"tile": geo.tile, "halo": geo.halo, "shrink": geo.shrink,
                  "block": list(exe.block), "random_weights": plan.model.random_weights,
                  "fingerprint": plan.fingerprint},
        nonfinite_input_pixels=nonfinite["nonfinite"],
        nonfinite_logit_pixels=nonfinite["faults"],
        tiles_skipped=sum(r.get("skipped", 0) for r in results))


def _warn_nonfinite(raster, counts: dict[str, int]) -> None:
    """One warning per kind of non-finite value the blocks met, with its pixel count."""
    if counts.get("nonfinite"):
        n = counts["nonfinite"]
        warnings.warn(f"{raster.source}: {n} pixel{'s hold' if n != 1 else ' holds'} ±inf or "
                      "values beyond float32's range: those band values were treated as "
                      "missing, like NaN (a pixel with every band missing is nodata in the "
                      "mask)",
                      NonFiniteWarning, stacklevel=4)
    if counts.get("faults"):
        n = counts["faults"]
        warnings.warn(f"the model gave NaN or infinite logits at {n} pixel"
                      f"{'s' if n != 1 else ''} of valid input: they are nodata in the mask "
                      "(NaN in probabilities), not a class", NonFiniteWarning, stacklevel=4)


def provenance(plan: RunPlan) -> dict:
    """What made the output: versions, the model and the sha256 of every weights file
    (absolute paths), the geometry, the normalisation with the statistics actually used,
    the plan's fingerprint."""
    from importlib.metadata import PackageNotFoundError, version

    from tilesegment import __version__

    torch = sys.modules.get("torch")  # the build actually loaded (e.g. "2.14.1+cu130")
    try:
        torch_version = torch.__version__ if torch is not None else version("torch")
    except PackageNotFoundError:  # pragma: no cover - torch is a dependency
        torch_version = None
    src, mdl, geo, norm = plan.source, plan.model, plan.geometry, plan.normalization
    resolved = mdl.resolved
    given = norm.given
    crf = None if plan.crf is None else plan.crf.given
    prov = {
        "tilesegment_version": __version__,
        "torch_version": torch_version,
        "model": mdl.name,
        "weights": mdl.weights,
        "weights_sha256": mdl.weights_sha256,
        "backbone_weights": mdl.backbone_weights,
        "backbone_weights_sha256": mdl.backbone_weights_sha256,
        "random_weights": mdl.random_weights,
        "model_kind": mdl.kind,
        "model_source": absolute_path(resolved.source) if resolved.source else None,
        "seed": mdl.seed,
        "tile": geo.tile, "halo": geo.halo, "shrink": geo.shrink,
        "pad_mode": geo.pad_mode, "blend": geo.blend, "blend_margin": geo.blend_margin,
        "blend_preset": geo.blend_preset if geo.blend == "gaussian" else None,
        "tta": plan.execution.tta,
        "block": list(plan.execution.block),
        "normalization": given if isinstance(given, str | None)
        else [list(map(float, np.ravel(v))) for v in given],
        "normalization_used": None if norm.mean is None else {
            "mean": list(norm.mean), "std": list(norm.std)},
        "crf": None if crf is None else ({} if crf is True else dataclasses.asdict(crf)),
        "input": {"path": src.description, "shape": list(src.shape), "dtype": src.dtype,
                  "level": src.level, "mpp": src.mpp},
        "fingerprint": plan.fingerprint,
        "tissue": {"asked": plan.tissue.asked, "mode": plan.tissue.mode,
                   "method": plan.tissue.method, "mask_file": plan.tissue.mask_file,
                   "tiles": plan.tissue.tiles, "tiles_skipped": plan.tissue.skipped},
    }
    if resolved.card is not None:  # a checkpoint: its training record
        prov["training"] = resolved.card.training
    return prov

