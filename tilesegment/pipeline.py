"""``segment()``: read → tile → infer → stitch → write, composed over Dask block tasks.

Everything that can be checked is checked before a pixel is read: the raster's metadata,
the model name and its legal tile sizes, the halo, the output path.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tilesegment.block import BlockJob, block_array, write_block
from tilesegment.errors import GeometryError, ModelError, RandomWeightsWarning, SeamWarning
from tilesegment.execute import compute
from tilesegment.grid import TileSpec, default_block, iter_blocks
from tilesegment.models.registry import get_entry
from tilesegment.models.spec import ModelSpec, Normalization
from tilesegment.normalize import raster_statistics
from tilesegment.read import open_raster
from tilesegment.workers import (
    ModelRecipe,
    available_cores,
    random_weights_message,
    release,
    validate_recipe,
)

RETURNS = ("mask", "probabilities", "logits", "disagreement")


@dataclass
class RunSummary:
    """What a run wrote: the output path, pixel counts per class, tiles run, seconds."""

    output: Path
    shape: tuple[int, int]
    class_names: tuple[str, ...]
    class_counts: np.ndarray
    nodata_pixels: int
    tiles: int
    blocks: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)


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
    model: Any = "unet-tiny",
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
    ``crf``: a :class:`~tilesegment.models.crf.CRFParams` (or ``True`` for the defaults)
    to refine each block with a fully connected CRF over the block plus the CRF's halo.

    With ``output=None`` returns the stitched result as a numpy array: ``returns="mask"``
    gives class ids ``(H, W)`` uint8/uint16 (nodata = 255/65535), ``"probabilities"`` or
    ``"logits"`` give ``float32 (K, H, W)``. With an ``output`` path (``.zarr`` or ``.tif``)
    writes it and returns a :class:`RunSummary`.
    """
    started = time.perf_counter()
    if returns not in RETURNS:
        raise ValueError(f"returns must be one of {RETURNS}")
    raster = open_raster(source, level=level, mpp=mpp)
    shape = (raster.height, raster.width)
    from tilesegment.models.custom import resolve_model

    resolved = resolve_model(model, raster.bands, classes, tile=tile, weights=weights)
    mspec, module = resolved.spec, resolved.module
    if halo is None and tile is None and resolved.halo is not None:
        halo = resolved.halo  # a checkpoint card's default, meant for its default tile
    tspec = _tile_spec(mspec, tile, halo, pad_mode, blend, check_seams=not resolved.probed)
    if block_size is not None and block_size < 1:
        raise GeometryError(f"block size must be positive, got {block_size}")
    if save_disagreement and blend != "gaussian":
        raise GeometryError("the disagreement map needs --blend gaussian: under crop every "
                            "pixel comes from one tile")
    block = (block_size, block_size) if block_size else default_block(tspec)
    block = (min(block[0], max(shape[0], 1)), min(block[1], max(shape[1], 1)))
    k = mspec.num_classes
    mask_dtype = np.dtype(np.uint8 if k <= 255 else np.uint16)
    local = scheduler is None or scheduler in ("threads", "synchronous")
    n_workers = workers or available_cores()
    # A module from a file or function travels to cluster workers as its source (a
    # TorchScript module cannot be pickled); a local run uses the one loaded here.
    ship = resolved.source is not None and not local
    recipe = ModelRecipe(
        in_channels=raster.bands, num_classes=k, out_side=tspec.out_side,
        name=None if module is not None else mspec.name,
        module=None if ship else module, source=resolved.source if ship else None,
        weights=str(weights) if weights else None, seed=seed, device=device,
        backbone_weights=str(backbone_weights) if backbone_weights else None,
        batch_size=batch_size, channels_last=channels_last, torch_threads=1)
    if module is None and weights is None and get_entry(mspec.name).trainable:
        warnings.warn(random_weights_message(mspec.name, backbone_only=bool(backbone_weights)),
                      RandomWeightsWarning, stacklevel=2)

    target = None
    try:
        # The model, its weights and the device are checked before anything is written.
        validate_recipe(recipe, local)
        if output is not None:
            from tilesegment.write import OutputMeta, create_output

            meta = OutputMeta(
                shape=shape, num_classes=k, class_names=mspec.class_names,
                class_colors=mspec.class_colors, georef=raster.georef, block_shape=block,
                save_probabilities=save_probabilities, save_disagreement=save_disagreement,
                provenance=_provenance(raster, mspec, resolved, weights, tspec, block,
                                       normalization, seed, crf, backbone_weights))
            target = create_output(output, meta, overwrite=overwrite, cog=cog)
        mean, std = _normalization(normalization, mspec, raster)
        crf_params, crf_range = _crf_settings(crf, raster)
        job = BlockJob(raster=raster, spec=tspec, recipe=recipe, mean=mean, std=std,
                       pad_value=pad_value, output=target,
                       mask_nodata=int(np.iinfo(mask_dtype).max), mask_dtype=mask_dtype.str,
                       crf=crf_params, crf_range=crf_range)
        windows = list(iter_blocks(shape, block))
        if target is None:
            return _to_array(job, windows, shape, k, returns, mask_dtype, scheduler,
                             n_workers, progress)
        results = _run_writing(job, windows, (save_probabilities, save_disagreement),
                               scheduler, n_workers, progress)
        path = target.finalize()
    except BaseException:
        if target is not None:
            target.abort()
        raise
    finally:
        release(recipe.key)  # this process's copy; cluster workers keep theirs (LRU)
    counts = np.sum([r["counts"] for r in results], axis=0)
    return RunSummary(
        output=Path(path), shape=shape, class_names=mspec.class_names, class_counts=counts,
        nodata_pixels=sum(r["nodata"] for r in results),
        tiles=sum(r["tiles"] for r in results), blocks=len(windows),
        seconds=time.perf_counter() - started,
        settings={"tile": tspec.tile, "halo": tspec.halo, "shrink": tspec.shrink,
                  "block": list(block)})


def _tile_spec(mspec: ModelSpec, tile: int | None, halo: int | None, pad_mode: str,
               blend: str, check_seams: bool) -> TileSpec:
    """The tile geometry, checked against the model before any pixel is read."""
    tile = tile or mspec.default_tile
    shrink = mspec.check_tile(tile)
    if mspec.global_context and check_seams:
        warnings.warn(f"model {mspec.name!r} pools over its whole input tile: tiled output "
                      "cannot equal whole-image output whatever the halo (seams stay possible)",
                      SeamWarning, stacklevel=3)
        check_seams = False
    if halo is None:
        halo = mspec.default_halo(tile)
    elif halo < shrink:
        raise GeometryError(f"halo {halo} is smaller than the model's shrink {shrink} "
                            f"({_seamless_advice(mspec, tile)})")
    elif check_seams:
        stride = mspec.tile_rule.output_stride
        need = shrink if mspec.valid else mspec.receptive_radius
        if halo < need or (tile - 2 * halo) % stride:
            why = (f"below the model's receptive radius {need}" if halo < need else
                   f"leaves a core of {tile - 2 * halo} px, not a multiple of the "
                   f"output stride {stride}")
            warnings.warn(f"halo {halo} {why}: tiles may show seams "
                          f"({_seamless_advice(mspec, tile)})", SeamWarning, stacklevel=3)
    return TileSpec(tile=tile, halo=halo, shrink=shrink, pad_mode=pad_mode, blend=blend)


def _seamless_advice(mspec: ModelSpec, tile: int) -> str:
    try:
        return f"seamless: --halo {mspec.default_halo(tile)}"
    except GeometryError:
        return f"no halo makes tile {tile} seamless for this model: use a larger --tile"


def _normalization(choice: Any, mspec: ModelSpec, raster) -> tuple[Any, Any]:
    """Per-band ``(mean, std)`` float64 arrays, or ``(None, None)`` for no normalisation."""
    if isinstance(choice, tuple | list):
        mean, std = (np.broadcast_to(np.asarray(v, np.float64), (raster.bands,))
                     for v in choice)
        return mean, std
    norm = mspec.normalization if choice in (None, "spec") else Normalization(choice)
    if norm.mode == "none":
        return None, None
    if norm.mode == "fixed":
        if len(norm.mean) not in (1, raster.bands):
            raise ModelError(f"model {mspec.name!r} normalises {len(norm.mean)} bands; "
                             f"the raster has {raster.bands}")
        return (np.broadcast_to(np.asarray(norm.mean, np.float64), (raster.bands,)),
                np.broadcast_to(np.asarray(norm.std, np.float64), (raster.bands,)))
    stats = raster_statistics(raster)
    return stats.mean, stats.std


def _run_writing(job, windows, layers, scheduler, n_workers, progress) -> list[dict]:
    import dask

    shared = dask.delayed(job, pure=True, traverse=False)
    tasks = [dask.delayed(write_block, pure=True)(shared, w, *layers) for w in windows]
    return compute(tasks, scheduler, n_workers, progress)


def _to_array(job, windows, shape, k, returns, mask_dtype, scheduler, n_workers, progress):
    import dask

    shared = dask.delayed(job, pure=True, traverse=False)
    tasks = [dask.delayed(block_array, pure=True)(shared, w, returns, mask_dtype)
             for w in windows]
    parts = compute(tasks, scheduler, n_workers, progress)
    if returns in ("mask", "disagreement"):
        out = np.empty(shape, dtype=mask_dtype if returns == "mask" else np.uint8)
    else:
        out = np.empty((k, *shape), dtype=np.float32)
    for (r0, r1, c0, c1), part in zip(windows, parts, strict=True):
        out[..., r0:r1, c0:c1] = part
    return out


def _crf_settings(crf: Any, raster) -> tuple[Any, Any]:
    """CRF parameters and the raster's value range for its appearance kernel: the dtype's
    range for 8-bit rasters, else mean ± 3σ per band of the whole raster (never per block,
    so neighbouring blocks see the same colours)."""
    if crf is None or crf is False:
        return None, None
    from tilesegment.models.crf import CRFParams

    params = CRFParams() if crf is True else crf
    if np.dtype(raster.dtype) == np.uint8:
        return params, None
    stats = raster_statistics(raster)
    lo = stats.mean - 3 * stats.std
    hi = np.maximum(stats.mean + 3 * stats.std, lo + 1e-9)
    return params, (tuple(map(float, lo)), tuple(map(float, hi)))


def _provenance(raster, mspec, resolved, weights, tspec, block, normalization, seed,
                crf=None, backbone_weights=None) -> dict:
    from tilesegment import __version__

    prov = {
        "tilesegment_version": __version__,
        "model": mspec.name,
        "weights": str(weights) if weights else None,
        "weights_sha256": None,
        "backbone_weights": str(backbone_weights) if backbone_weights else None,
        "random_weights": weights is None and resolved.kind == "registered",
        "model_kind": resolved.kind,
        "model_source": resolved.source,
        "seed": seed,
        "tile": tspec.tile, "halo": tspec.halo, "shrink": tspec.shrink,
        "pad_mode": tspec.pad_mode, "blend": tspec.blend, "block": list(block),
        "normalization": normalization if isinstance(normalization, str | None)
        else [list(map(float, v)) for v in normalization],
        "crf": None if crf is None or crf is False else (
            {} if crf is True else dataclasses.asdict(crf)),
        "input": {"path": _absolute(raster.source), "shape": list(raster.shape),
                  "dtype": str(np.dtype(raster.dtype)), "level": raster.level},
    }
    if weights:
        from tilesegment.models.weights import file_sha256

        prov["weights_sha256"] = file_sha256(weights)
    if resolved.card is not None:  # a checkpoint: its tensors' hash and training record
        prov["weights_sha256"] = resolved.card.sha256
        prov["training"] = resolved.card.training
    return prov


def _absolute(source: str) -> str:
    """An input path made absolute (so a provenance record means the same file anywhere);
    descriptions of in-memory arrays are kept as they are."""
    path = Path(source)
    return str(path.resolve()) if path.exists() else source
