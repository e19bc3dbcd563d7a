"""``segment()``: read → tile → infer → stitch → write, composed over Dask block tasks.

Everything that can be checked is checked before a pixel is read: the settings, the
raster's metadata (a TIFF whose file cannot hold its declared size is refused at open), the
model name and its legal tile sizes, the halo, the number of classes and block tasks, the
memory a block task needs (:mod:`tilesegment.limits`), the output path. The settings, the
limits and the tile geometry of registered models and checkpoints are checked before any
model is built.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tilesegment import limits
from tilesegment.block import BlockJob, block_array, write_block
from tilesegment.errors import (
    GeometryError,
    ModelError,
    NonFiniteWarning,
    RandomWeightsWarning,
    SeamWarning,
    SettingError,
    TilesegmentError,
)
from tilesegment.execute import compute
from tilesegment.grid import (
    BLEND_MODES,
    PAD_MODES,
    TileSpec,
    default_block,
    grid_shape,
    iter_blocks,
    phase_halo,
)
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
    with_content_key,
)

RETURNS = ("mask", "probabilities", "logits", "disagreement")


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
    protect: tuple[str | Path, ...] = (),
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
    writes it and returns a :class:`RunSummary`. The output never replaces, contains or lies
    inside a file the run reads (the source, the weights, and ``protect``: e.g. a truth mask),
    whatever ``overwrite`` says.
    """
    started = time.perf_counter()
    _check_settings(returns=returns, classes=classes, tile=tile, halo=halo,
                    pad_mode=pad_mode, pad_value=pad_value, blend=blend,
                    batch_size=batch_size, block_size=block_size, device=device,
                    normalization=normalization, save_disagreement=save_disagreement,
                    workers=workers)
    if crf is not None and crf is not False:
        from tilesegment.models.crf import require_pydensecrf

        require_pydensecrf()  # an optional extra: said before anything is read or built
    raster = open_raster(source, level=level, mpp=mpp)
    shape = (raster.height, raster.width)
    inputs = _run_inputs(source, raster, model, weights, backbone_weights, protect)
    if output is not None:  # refused here, before any model is built or pixel read
        from tilesegment.write import check_output

        check_output(output, overwrite=overwrite, cog=cog, inputs=inputs,
                     layers=[name for name, wanted in (("probabilities", save_probabilities),
                                                       ("disagreement", save_disagreement))
                             if wanted])
    local = scheduler is None or scheduler in ("threads", "synchronous")
    n_workers = workers or available_cores()
    budget = _Budget(raster=raster, block_size=block_size, batch_size=batch_size,
                     device=device, local=local, threads=scheduler in (None, "threads"),
                     n_workers=n_workers, returns=None if output is not None else returns,
                     probabilities=save_probabilities, crf=crf)
    preview = _preview_spec(model, raster.bands, classes)
    if preview is not None:  # registered name or checkpoint: checked before any build
        pspec, card_halo = preview
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SeamWarning)  # warned once, below
            budget.check(pspec, _tile_spec(pspec, tile, halo, pad_mode, blend,
                                           check_seams=True,
                                           card_halo=card_halo if tile is None else None))
    elif tile is not None:  # a module is probed on one tile: that tile must fit
        budget.check_probe(tile, classes)
    from tilesegment.models.custom import resolve_model

    resolved = resolve_model(model, raster.bands, classes, tile=tile, weights=weights)
    mspec, module = resolved.spec, resolved.module
    card_halo = resolved.halo if tile is None else None  # meant for the card's default tile
    tspec = _tile_spec(mspec, tile, halo, pad_mode, blend, check_seams=not resolved.probed,
                       card_halo=card_halo)
    if preview is None:
        budget.check(mspec, tspec)
    block = (block_size, block_size) if block_size else default_block(tspec)
    block = (min(block[0], max(shape[0], 1)), min(block[1], max(shape[1], 1)))
    k = mspec.num_classes
    mask_dtype = np.dtype(np.uint8 if k <= 255 else np.uint16)
    # A module from a file or function travels to cluster workers as its source (a
    # TorchScript module cannot be pickled); a local run uses the one loaded here.
    ship = resolved.source is not None and not local
    recipe = with_content_key(ModelRecipe(
        in_channels=raster.bands, num_classes=k, out_side=tspec.out_side,
        name=None if module is not None else mspec.name,
        module=None if ship else module, source=resolved.source if ship else None,
        weights=str(weights) if weights else None, seed=seed, device=device,
        backbone_weights=str(backbone_weights) if backbone_weights else None,
        batch_size=batch_size, channels_last=channels_last, torch_threads=1))
    random_weights = module is None and weights is None and get_entry(mspec.name).trainable
    if random_weights:
        warnings.warn(random_weights_message(mspec.name, backbone_only=bool(backbone_weights)),
                      RandomWeightsWarning, stacklevel=2)

    target = None
    try:
        # The model, its weights and the device are checked before anything is written.
        validate_recipe(recipe, local)
        mean, std = _normalization(normalization, mspec, raster)
        crf_params, crf_range = _crf_settings(crf, raster)
        if output is not None:
            from tilesegment.write import OutputMeta, create_output

            meta = OutputMeta(
                shape=shape, num_classes=k, class_names=mspec.class_names,
                class_colors=mspec.class_colors, georef=raster.georef, block_shape=block,
                save_probabilities=save_probabilities, save_disagreement=save_disagreement,
                provenance=_provenance(raster, mspec, resolved, weights, tspec, block,
                                       normalization, seed, crf, backbone_weights,
                                       stats=(mean, std), mpp=mpp))
            target = create_output(output, meta, overwrite=overwrite, cog=cog,
                                   inputs=inputs)
        job = BlockJob(raster=raster, spec=tspec, recipe=recipe, mean=mean, std=std,
                       pad_value=pad_value, output=target,
                       mask_nodata=int(np.iinfo(mask_dtype).max), mask_dtype=mask_dtype.str,
                       crf=crf_params, crf_range=crf_range)
        windows = list(iter_blocks(shape, block))
        if target is None:
            array, counts = _to_array(job, windows, shape, k, returns, mask_dtype, scheduler,
                                      n_workers, progress)
            _warn_nonfinite(raster, counts)
            return array
        results = _run_writing(job, windows, (save_probabilities, save_disagreement),
                               scheduler, n_workers, progress)
        path = target.finalize()
    except BaseException:
        if target is not None:
            target.abort()
        raise
    finally:
        release(recipe.key, pinned=local)  # this process's copy; cluster workers keep theirs
    counts = np.sum([r["counts"] for r in results], axis=0)
    nonfinite = {name: sum(r[name] for r in results) for name in ("nonfinite", "faults")}
    _warn_nonfinite(raster, nonfinite)
    return RunSummary(
        output=Path(path), shape=shape, class_names=mspec.class_names, class_counts=counts,
        nodata_pixels=sum(r["nodata"] for r in results),
        tiles=sum(r["tiles"] for r in results), blocks=len(windows),
        seconds=time.perf_counter() - started,
        settings={"tile": tspec.tile, "halo": tspec.halo, "shrink": tspec.shrink,
                  "block": list(block), "random_weights": random_weights},
        nonfinite_input_pixels=nonfinite["nonfinite"],
        nonfinite_logit_pixels=nonfinite["faults"])


def _run_inputs(source: Any, raster, model: Any, weights, backbone_weights,
                protect) -> list[str | Path]:
    """The files a run reads, which its output must never replace, hold or lie inside."""
    found = (source if isinstance(source, str | Path) else None, raster.source, weights,
             backbone_weights,
             model if isinstance(model, str | Path) and Path(model).is_file() else None,
             *protect)
    return [p for p in found if p and isinstance(p, str | Path)]


_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_settings(*, returns, classes, tile, halo, pad_mode, pad_value, blend, batch_size,
                    block_size, device, normalization, save_disagreement, workers) -> None:
    """Every setting that needs neither the raster nor the model, checked first."""
    if returns not in RETURNS:
        raise SettingError(f"returns must be one of {', '.join(RETURNS)}, not {returns!r}")
    if classes is not None:
        if not _is_int(classes) or classes < 1:
            raise SettingError(f"classes must be a positive integer, not {classes!r}")
        limits.check_classes(int(classes))
    if tile is not None and (not _is_int(tile) or tile < 1):
        raise GeometryError(f"tile must be a positive integer, not {tile!r}")
    if halo is not None and (not _is_int(halo) or halo < 0):
        raise GeometryError(f"halo must be a non-negative integer, not {halo!r}")
    if block_size is not None and (not _is_int(block_size) or block_size < 1):
        raise GeometryError(f"block size must be positive, got {block_size}")
    if pad_mode not in PAD_MODES:
        raise GeometryError(f"pad mode {pad_mode!r} unknown; use one of {PAD_MODES}")
    if blend not in BLEND_MODES:
        raise GeometryError(f"blend {blend!r} unknown; use one of {BLEND_MODES}")
    if save_disagreement and blend != "gaussian":
        raise GeometryError("the disagreement map needs --blend gaussian: under crop every "
                            "pixel comes from one tile")
    if not isinstance(pad_value, int | float | np.number) or not math.isfinite(pad_value):
        raise SettingError(f"pad value must be a finite number, not {pad_value!r}")
    if not _is_int(batch_size) or batch_size < 1:
        raise SettingError(f"batch size must be a positive integer, not {batch_size!r}")
    if workers is not None and (not _is_int(workers) or workers < 1):
        raise SettingError(f"workers must be a positive integer, not {workers!r}")
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ModelError(f"device {device!r} unknown; use auto, cpu, cuda or cuda:N")
    if isinstance(normalization, tuple | list):
        if len(normalization) != 2:
            raise SettingError("normalization (mean, std) needs exactly two values")
        for name, values in zip(("mean", "std"), normalization, strict=True):
            array = np.asarray(values, dtype=object).ravel()
            if array.size == 0 or not all(
                    isinstance(v, int | float | np.number) and math.isfinite(v) for v in array):
                raise SettingError(f"normalization {name} must be finite numbers, not "
                                   f"{values!r}")
        if np.any(np.asarray(normalization[1], np.float64) < 0):
            raise SettingError("normalization std must not be negative")
    elif normalization not in (None, "spec", "raster", "none"):
        raise SettingError(f"normalization must be spec, raster, none or (mean, std), "
                           f"not {normalization!r}")


def _preview_spec(model: Any, bands: int, classes: int | None) -> tuple[ModelSpec,
                                                                        int | None] | None:
    """The spec (and a checkpoint card's default halo) of a registered name or a checkpoint,
    read without building anything; ``None`` for modules, TorchScript files, functions, and
    whatever :func:`resolve_model` should report on itself."""
    if not isinstance(model, str):
        return None
    from tilesegment.models.registry import get_spec, list_models

    try:
        if model in list_models():
            return get_spec(model, bands, classes), None
        path = Path(model)
        if path.suffix in (".safetensors", ".json") and path.is_file():
            from tilesegment.models.checkpoint import card_spec, has_card, read_card

            if has_card(path):
                card = read_card(path)
                return card_spec(card), card.halo
    except TilesegmentError:
        return None
    return None


@dataclass
class _Budget:
    """The limits of one run: classes, block tasks, memory (see :mod:`tilesegment.limits`)."""

    raster: Any
    block_size: int | None
    batch_size: int
    device: str
    local: bool
    threads: bool
    n_workers: int
    returns: str | None  # what an in-memory run returns; None when writing an output
    probabilities: bool
    crf: Any

    def _on_gpu(self) -> bool:
        if self.device == "cpu":
            return False
        if not self.local:  # the workers' devices: no local check
            return True
        if self.device == "auto" and not limits.gpu_driver_present():
            return False  # torch could not find a GPU either: no need to import it
        from tilesegment.infer import resolve_device  # torch, but no model

        return resolve_device(self.device).type == "cuda"

    def check(self, mspec: ModelSpec, tspec: TileSpec) -> None:
        """:class:`~tilesegment.errors.LimitError` unless the run fits every limit."""
        raster = self.raster
        shape = (raster.height, raster.width)
        k = mspec.num_classes
        limits.check_classes(k)
        block = ((self.block_size, self.block_size) if self.block_size
                 else default_block(tspec))
        block = (min(block[0], max(shape[0], 1)), min(block[1], max(shape[1], 1)))
        n_blocks = limits.check_blocks(shape, block, tspec.core, self.block_size)
        crf_reach = 0
        if self.crf is not None and self.crf is not False:
            from tilesegment.models.crf import CRFParams, crf_halo

            crf_reach = crf_halo(CRFParams() if self.crf is True else self.crf)
        result = 0.0
        if self.returns is not None:
            per_px = {"mask": 2, "disagreement": 1}.get(self.returns, 4 * k)
            result = 2.0 * per_px * shape[0] * shape[1]  # the blocks, then the array
        estimate = limits.block_task_memory(
            bands=raster.bands, itemsize=np.dtype(raster.dtype).itemsize, classes=k,
            tile=tspec.tile, out_side=tspec.out_side, core=tspec.core,
            reach=tspec.footprint(), block=block, grid=grid_shape(shape, tspec),
            batch=self.batch_size, model_name=mspec.name, on_gpu=self._on_gpu(),
            probabilities=self.probabilities or self.returns == "probabilities",
            gaussian=tspec.blend == "gaussian", crf_reach=crf_reach,
            concurrent=min(self.n_workers, n_blocks) if self.threads else 1,
            result_bytes=result)
        limits.check_memory(estimate, f"tile {tspec.tile} (batch {self.batch_size}, block "
                            f"{block[0]} × {block[1]}, {k} classes)")

    def check_probe(self, tile: int, classes: int | None) -> None:
        """A module is probed on one ``tile`` before its spec is known: check that call."""
        k = classes or 1
        per_px = self.raster.bands * 4 + k * 4 + limits.DEFAULT_WORKING_BYTES
        estimate = limits.MemoryEstimate({"model probe": float(per_px) * tile * tile})
        limits.check_memory(estimate, f"probing the model on a tile of {tile}")


def _warn_nonfinite(raster, counts: dict[str, int]) -> None:
    """One warning per kind of non-finite value the blocks met, with its pixel count."""
    if counts.get("nonfinite"):
        n = counts["nonfinite"]
        warnings.warn(f"{raster.source}: {n} pixel{'s hold' if n != 1 else ' holds'} ±inf or "
                      "values beyond float32's range: those band values were treated as "
                      "missing, like NaN (a pixel with every band missing is nodata in the "
                      "mask)",
                      NonFiniteWarning, stacklevel=3)
    if counts.get("faults"):
        n = counts["faults"]
        warnings.warn(f"the model gave NaN or infinite logits at {n} pixel"
                      f"{'s' if n != 1 else ''} of valid input: they are nodata in the mask "
                      "(NaN in probabilities), not a class", NonFiniteWarning, stacklevel=3)


def _tile_spec(mspec: ModelSpec, tile: int | None, halo: int | None, pad_mode: str,
               blend: str, check_seams: bool, card_halo: int | None = None) -> TileSpec:
    """The tile geometry, checked against the model before any pixel is read.

    A halo off the model's pooling grid is refused (no halo size repairs it); one below the
    receptive radius is allowed with a :class:`SeamWarning` (a speed/accuracy choice). A
    checkpoint card's halo (``card_halo``) off the grid is moved up onto it, with a note.
    """
    tile = tile or mspec.default_tile
    shrink = mspec.check_tile(tile)
    bounded = check_seams and not mspec.global_context
    if mspec.global_context and check_seams:
        warnings.warn(f"model {mspec.name!r} pools over its whole input tile: tiled output "
                      "cannot equal whole-image output whatever the halo (seams stay possible)",
                      SeamWarning, stacklevel=3)
    if halo is None and card_halo is not None:
        halo = card_halo
        if check_seams and mspec.halo_problem(tile, halo):
            rule = mspec.tile_rule
            halo = phase_halo(card_halo, rule.output_stride, rule.halo_phase())
            warnings.warn(f"the checkpoint's halo {card_halo} is off the model's pooling grid; "
                          f"using {halo}", SeamWarning, stacklevel=3)
    if halo is None:
        halo = mspec.default_halo(tile)
    elif halo < shrink:
        raise GeometryError(f"halo {halo} is smaller than the model's shrink {shrink} "
                            f"({_seamless_advice(mspec, tile)})")
    elif check_seams and (problem := mspec.halo_problem(tile, halo)):
        raise GeometryError(problem)
    elif bounded and halo < mspec.context_needed:
        warnings.warn(f"halo {halo} is below the model's receptive radius "
                      f"{mspec.context_needed}: tiles may show seams "
                      f"({_seamless_advice(mspec, tile)})", SeamWarning, stacklevel=3)
    # Gaussian blending is exact only where each tile has full context: blend just that part
    # of each tile's output when the halo allows it; otherwise blend whole outputs (an
    # approximation, for models that see the whole tile or halos below the radius).
    margin = 0
    if blend == "gaussian" and bounded and halo >= max(shrink, mspec.context_needed):
        margin = max(0, mspec.context_needed - shrink)
    return TileSpec(tile=tile, halo=halo, shrink=shrink, pad_mode=pad_mode, blend=blend,
                    blend_margin=margin)


def _seamless_advice(mspec: ModelSpec, tile: int) -> str:
    try:
        return f"seamless: --halo {mspec.default_halo(tile)}"
    except GeometryError as exc:
        return str(exc)


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
    results = compute(tasks, scheduler, n_workers, progress)
    parts = [part for part, _ in results]
    counts = {name: sum(c[name] for _, c in results) for name in ("nonfinite", "faults")}
    if returns in ("mask", "disagreement"):
        out = np.empty(shape, dtype=mask_dtype if returns == "mask" else np.uint8)
    else:
        out = np.empty((k, *shape), dtype=np.float32)
    for (r0, r1, c0, c1), part in zip(windows, parts, strict=True):
        out[..., r0:r1, c0:c1] = part
    return out, counts


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
                crf=None, backbone_weights=None, stats=(None, None), mpp=None) -> dict:
    """What made the output: versions, the model and the sha256 of every weights file
    (absolute paths), the geometry, the normalisation with the statistics actually used."""
    from importlib.metadata import PackageNotFoundError, version

    from tilesegment import __version__
    from tilesegment.workers import file_digest as file_sha256  # hashed once per run

    torch = sys.modules.get("torch")  # the build actually loaded (e.g. "2.14.1+cu130")
    try:
        torch_version = torch.__version__ if torch is not None else version("torch")
    except PackageNotFoundError:  # pragma: no cover - torch is a dependency
        torch_version = None
    mean, std = stats

    prov = {
        "tilesegment_version": __version__,
        "torch_version": torch_version,
        "model": mspec.name,
        "weights": _absolute(str(weights)) if weights else None,
        "weights_sha256": None,
        "backbone_weights": _absolute(str(backbone_weights)) if backbone_weights else None,
        "backbone_weights_sha256": file_sha256(backbone_weights) if backbone_weights else None,
        "random_weights": (weights is None and resolved.kind == "registered"
                           and get_entry(mspec.name).trainable),
        "model_kind": resolved.kind,
        "model_source": _absolute(resolved.source) if resolved.source else None,
        "seed": seed,
        "tile": tspec.tile, "halo": tspec.halo, "shrink": tspec.shrink,
        "pad_mode": tspec.pad_mode, "blend": tspec.blend, "blend_margin": tspec.blend_margin,
        "block": list(block),
        "normalization": normalization if isinstance(normalization, str | None)
        else [list(map(float, v)) for v in normalization],
        "normalization_used": None if mean is None else {
            "mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "crf": None if crf is None or crf is False else (
            {} if crf is True else dataclasses.asdict(crf)),
        "input": {"path": _absolute(raster.source), "shape": list(raster.shape),
                  "dtype": str(np.dtype(raster.dtype)), "level": raster.level, "mpp": mpp},
    }
    if weights:
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
