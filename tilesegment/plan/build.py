"""``build_plan``: every setting of a run checked and gathered into a :class:`RunPlan`.

Everything that can be checked is checked here, before a pixel is read: the settings, the
raster's metadata (a TIFF whose file cannot hold its declared size is refused at open), the
output path, the model name and its legal tile sizes, the halo, the number of classes and
block tasks, the memory a block task needs (:mod:`tilesegment.limits`). The settings, the
limits and the tile geometry of registered models and checkpoints are checked before any
model is built; a registered name needs no torch at all until the run builds it.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tilesegment import limits
from tilesegment.errors import (
    GeometryError,
    InputError,
    ModelError,
    RandomWeightsWarning,
    SeamWarning,
    SettingError,
    SlowPrecisionWarning,
    TilesegmentError,
)
from tilesegment.grid import (
    BLEND_MODES,
    PAD_MODES,
    TileSpec,
    default_block,
    grid_shape,
    parse_blend,
    phase_halo,
)
from tilesegment.models.registry import get_entry
from tilesegment.models.spec import ModelSpec, Normalization
from tilesegment.plan.fingerprint import fingerprint, source_identity
from tilesegment.plan.model import (
    CRFPlan,
    ExecutionPlan,
    GeometryPlan,
    ModelPlan,
    NormalizationPlan,
    OutputPlan,
    RunPlan,
    SourcePlan,
    TissuePlan,
)
from tilesegment.read import open_raster
from tilesegment.workers import (
    ModelRecipe,
    available_cores,
    content_key,
    file_digest,
    random_weights_message,
    shipped_sha256,
)

RETURNS = ("mask", "probabilities", "logits", "disagreement")


def build_plan(
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
    tissue: str = "auto",
    tissue_mask: str | Path | None = None,
    tta: str = "none",
    resolve: bool = True,
    ome_zarr_image: str = "none",
) -> RunPlan:
    """The :class:`RunPlan` of ``segment(source, output, **settings)`` (same arguments),
    with its fingerprint; every check ``segment()`` makes before it builds the model.

    ``resolve=False`` (``tilesegment plan``): a registered name or a checkpoint with its card
    is described from its spec alone (nothing built; torch not imported for a registered
    name); TorchScript files, functions and modules are still probed, as a run would.
    Normalisation statistics computed from the raster (``raster``) and the CRF's value
    range of a non-8-bit raster are left to fill at run time: no pixel is read here.
    """
    from tilesegment.tta import check_tta, passes

    blend, blend_preset = parse_blend(blend)  # "gaussian:monai" → ("gaussian", "monai")
    check_tta(tta)
    _check_settings(returns=returns, classes=classes, tile=tile, halo=halo,
                    pad_mode=pad_mode, pad_value=pad_value, blend=blend,
                    batch_size=batch_size, block_size=block_size, device=device,
                    normalization=normalization, save_disagreement=save_disagreement,
                    workers=workers)
    _check_precision(precision, device)
    crf = _card_crf(crf, model)
    if crf is not None and crf is not False:
        from tilesegment.models.crf import require_pydensecrf

        require_pydensecrf()  # an optional extra: said before anything is read or built
    raster = open_raster(source, level=level, mpp=mpp)
    shape = (raster.height, raster.width)
    tissue_plan = _tissue_plan(tissue, tissue_mask, raster, crf)
    inputs = _run_inputs(source, raster, model, weights, backbone_weights,
                         (*protect, *((tissue_mask,) if tissue_mask else ())))
    kind = "memory"
    if output is not None:  # refused here, before any model is built or pixel read
        from tilesegment.write import check_output

        kind = check_output(output, overwrite=overwrite, cog=cog, inputs=inputs,
                            layers=[name for name, wanted in (
                                ("probabilities", save_probabilities),
                                ("disagreement", save_disagreement)) if wanted])
    _check_ome_zarr_image(ome_zarr_image, kind)
    local = scheduler is None or scheduler in ("threads", "synchronous")
    n_workers = workers or available_cores()
    budget = _Budget(raster=raster, block_size=block_size, batch_size=batch_size,
                     device=device, local=local, threads=scheduler in (None, "threads"),
                     n_workers=n_workers, returns=None if output is not None else returns,
                     probabilities=save_probabilities, crf=crf, passes=passes(tta))
    preview = _preview_spec(model, raster.bands, classes)
    memory = None
    if preview is not None:  # registered name or checkpoint: checked before any build
        pspec, card_halo, card = preview
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SeamWarning)  # warned once, below
            memory = budget.check(pspec, _tile_spec(
                pspec, tile, halo, pad_mode, blend, check_seams=True,
                card_halo=card_halo if tile is None else None)[0])
    elif tile is not None:  # a module is probed on one tile: that tile must fit
        budget.check_probe(tile, classes)
    resolved = None
    if resolve or preview is None:
        from tilesegment.models.custom import resolve_model

        resolved = resolve_model(model, raster.bands, classes, tile=tile, weights=weights)
        mspec, module, probed = resolved.spec, resolved.module, resolved.probed
        mkind, msource, card, card_halo = (resolved.kind, resolved.source, resolved.card,
                                           resolved.halo)
    else:  # described from the spec alone: what resolve_model would also refuse
        if card is not None and weights:
            raise ModelError(f"{model}: a checkpoint carries its weights; drop --weights")
        mspec, module, probed = pspec, None, False
        mkind, msource = ("checkpoint", model) if card is not None else ("registered", None)
    card_halo = card_halo if tile is None else None  # meant for the card's default tile
    tspec, reason = _tile_spec(mspec, tile, halo, pad_mode, blend, check_seams=not probed,
                               card_halo=card_halo)
    if blend == "gaussian":
        tspec = replace(tspec, blend_preset=blend_preset)
    if preview is None:
        memory = budget.check(mspec, tspec)
    block = (block_size, block_size) if block_size else default_block(tspec)
    block = (min(block[0], max(shape[0], 1)), min(block[1], max(shape[1], 1)))
    k = mspec.num_classes
    entry = get_entry(mspec.name) if mkind == "registered" else None
    random_weights = (entry is not None and weights is None and entry.trainable
                      and not entry.pretrained)
    if random_weights:
        warnings.warn(random_weights_message(mspec.name, backbone_only=bool(backbone_weights)),
                      RandomWeightsWarning, stacklevel=3)
    rows, cols = grid_shape(shape, tspec)
    plan = RunPlan(
        source=SourcePlan(
            description=absolute_path(raster.source), kind=raster.kind,
            shape=tuple(int(n) for n in raster.shape), dtype=str(np.dtype(raster.dtype)),
            level=raster.level, mpp=mpp, nodata=raster.nodata,
            identity=source_identity(source, raster), raster=raster),
        model=_model_plan(model, mspec, mkind, msource, card, module, resolved, weights,
                          backbone_weights, seed, random_weights, raster.bands, tspec),
        geometry=GeometryPlan(
            tile=tspec.tile, halo=tspec.halo, halo_reason=reason, shrink=tspec.shrink,
            pad_mode=pad_mode, pad_value=float(pad_value), blend=blend,
            blend_margin=tspec.blend_margin, blend_preset=tspec.blend_preset),
        normalization=_normalization_plan(normalization, mspec, raster.bands),
        crf=_crf_plan(crf, raster),
        output=OutputPlan(
            path=None if output is None else str(Path(output).expanduser().absolute()),
            kind=kind, probabilities=bool(save_probabilities),
            disagreement=bool(save_disagreement), cog=bool(cog), overwrite=bool(overwrite),
            returns=returns, mask_dtype=np.dtype(np.uint8 if k <= 255 else np.uint16).str,
            inputs=tuple(str(p) for p in inputs), given=output, image=ome_zarr_image),
        execution=ExecutionPlan(
            block=block, blocks=math.ceil(shape[0] / block[0]) * math.ceil(shape[1] / block[1]),
            tiles=rows * cols, batch_size=batch_size, device=device,
            device_type=_device_type(device), channels_last=bool(channels_last),
            scheduler=scheduler, local=local, workers=n_workers, progress=bool(progress),
            task_memory=memory, precision=precision, compile=bool(compile), tta=tta),
        tissue=tissue_plan)
    return replace(plan, fingerprint=fingerprint(plan))


def _tissue_plan(tissue: Any, tissue_mask: Any, raster: Any, crf: Any) -> TissuePlan:
    """The tissue section: ``auto`` is Otsu for an RGB slide and none for anything else
    (GeoTIFF scenes, Zarr, arrays); a mask file replaces Otsu. Skipping by tissue is
    refused with the dense CRF (it sees every pixel's logits)."""
    from tilesegment.plan.fingerprint import file_identity
    from tilesegment.tissue import METHOD, TISSUE_MODES

    if tissue not in TISSUE_MODES:
        raise SettingError(f"tissue must be one of {', '.join(TISSUE_MODES)}, not {tissue!r}")
    with_crf = crf is not None and crf is not False
    if tissue_mask is not None:
        if tissue != "auto":
            raise SettingError(f"--tissue-mask gives the tissue: drop --tissue {tissue}")
        path = Path(tissue_mask).expanduser()
        if not path.exists():
            raise InputError(f"{tissue_mask}: tissue mask not found")
        if with_crf:
            raise SettingError("--tissue-mask with --crf: the CRF sees every pixel's "
                               "logits, no tile can be skipped")
        return TissuePlan("mask", "mask", method="mask-any-v1",
                          mask_file=str(path.resolve()), identity=file_identity(path))
    if tissue == "otsu" and with_crf:
        raise SettingError("--tissue otsu with --crf: the CRF sees every pixel's logits, "
                           "no tile can be skipped; use --tissue none")
    if tissue == "otsu" and raster.bands != 3:
        raise SettingError(f"{raster.source}: --tissue otsu needs an RGB slide (3 bands), "
                           f"not {raster.bands}; give your own mask with --tissue-mask")
    slide = raster.kind == "slide" and raster.bands == 3 and not with_crf
    mode = "otsu" if tissue == "otsu" or (tissue == "auto" and slide) else "none"
    return TissuePlan(tissue, mode, method=METHOD if mode == "otsu" else None)


def with_tissue_mask(plan: RunPlan) -> RunPlan:
    """``plan`` with its tissue mask computed (a low-resolution read of the slide, or the
    mask file read) and the tiles it rules out counted; unchanged without one."""
    from tilesegment import tissue as tissue_mod

    section, raster = plan.tissue, plan.source.raster
    if section.mode == "none" or section.mask is not None:
        return plan
    shape = (raster.height, raster.width)
    if section.mode == "otsu":
        mask = tissue_mod.compute_otsu(raster)
    else:
        mask = tissue_mod.from_mask_raster(open_raster(section.mask_file), shape)
    skipped, total = tissue_mod.planned_skips(mask, plan.geometry.spec, shape)
    return replace(plan, tissue=replace(section, mask=mask, skipped=skipped, tiles=total))


PRECISIONS = ("fp32", "bf16", "fp16")


def _check_precision(precision: Any, device: str) -> None:
    """fp16 on the CPU is refused (half-precision CPU kernels are missing or very slow);
    bf16 there is allowed with a warning."""
    if precision not in PRECISIONS:
        raise SettingError(f"precision must be one of {', '.join(PRECISIONS)}, "
                           f"not {precision!r}")
    if precision == "fp32" or _device_type(device) == "cuda":
        return
    if precision == "fp16":
        raise SettingError("--precision fp16 needs a CUDA device; on the CPU use fp32 "
                           "(or bf16, slower on most CPUs)")
    warnings.warn("--precision bf16 on the CPU: allowed, but usually slower than fp32 "
                  "there (only CPUs with AMX/AVX512-BF16 speed it up)", SlowPrecisionWarning,
                  stacklevel=4)


def _model_plan(model, mspec, kind, msource, card, module, resolved, weights,
                backbone_weights, seed, random_weights, bands, tspec) -> ModelPlan:
    """The model section; its content key names the model by content whatever the path
    spelling or scheduler (a file source by its real path, so that ``./m.pt`` and its
    absolute path agree)."""
    source = msource
    if source is not None and Path(source).is_file():
        source = str(Path(source).resolve())
    key = content_key(ModelRecipe(
        in_channels=bands, num_classes=mspec.num_classes, out_side=tspec.out_side,
        name=mspec.name if kind == "registered" else None,
        module=module if source is None and kind != "registered" else None,
        source=source, weights=str(weights) if weights else None,
        backbone_weights=str(backbone_weights) if backbone_weights else None, seed=seed))
    weights_sha = file_digest(weights) if weights else None
    if card is not None:
        weights_sha = card.sha256
    if kind == "registered" and not weights:
        weights_sha = shipped_sha256(mspec.name)
    reference = model if isinstance(model, str) else f"<module {type(model).__name__}>"
    return ModelPlan(
        reference=reference, kind=kind, name=mspec.name, classes=mspec.num_classes,
        channels=bands, class_names=tuple(mspec.class_names),
        weights=absolute_path(str(weights)) if weights else None, weights_sha256=weights_sha,
        backbone_weights=absolute_path(str(backbone_weights)) if backbone_weights else None,
        backbone_weights_sha256=file_digest(backbone_weights) if backbone_weights else None,
        seed=seed, random_weights=random_weights, content_key=key, spec=mspec,
        resolved=resolved, module=model if not isinstance(model, str) else None)


def _device_type(device: str) -> str:
    """``cpu`` or ``cuda``: where this run's floats are computed. ``auto`` without a GPU
    driver is the CPU without importing torch."""
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        return "cuda"
    if not limits.gpu_driver_present():
        return "cpu"
    from tilesegment.infer import resolve_device  # torch, but no model

    return resolve_device(device).type


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


def _check_ome_zarr_image(value: str, kind: str) -> None:
    """``ome_zarr_image`` is ``none`` or ``copy``, and ``copy`` only for an OME-Zarr output."""
    if value not in ("none", "copy"):
        raise SettingError(f"ome_zarr_image must be 'none' or 'copy', got {value!r}")
    if value == "copy" and kind != "ome-zarr":
        raise SettingError("--ome-zarr-image copy needs an OME-Zarr output (-o *.ome.zarr)")


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


def _preview_spec(model: Any, bands: int, classes: int | None):
    """``(spec, card halo, card)`` of a registered name (``None, None`` for the last two) or
    a checkpoint, read without building anything; ``None`` for modules, TorchScript files,
    functions, and whatever :func:`resolve_model` should report on itself."""
    if not isinstance(model, str):
        return None
    from tilesegment.models.registry import get_spec, list_models

    try:
        if model in list_models():
            return get_spec(model, bands, classes), get_entry(model).halo, None
        path = Path(model)
        if path.suffix in (".safetensors", ".json") and path.is_file():
            from tilesegment.models.checkpoint import card_spec, has_card, read_card

            if has_card(path):
                card = read_card(path)
                return card_spec(card), card.halo, card
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
    passes: int = 1  # model inputs per tile (test-time augmentation)

    def _on_gpu(self) -> bool:
        if self.device == "cpu":
            return False
        if not self.local:  # the workers' devices: no local check
            return True
        if self.device == "auto" and not limits.gpu_driver_present():
            return False  # torch could not find a GPU either: no need to import it
        from tilesegment.infer import resolve_device  # torch, but no model

        return resolve_device(self.device).type == "cuda"

    def check(self, mspec: ModelSpec, tspec: TileSpec) -> float:
        """:class:`~tilesegment.errors.LimitError` unless the run fits every limit; the
        bytes one block task needs."""
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
            result_bytes=result, passes=self.passes)
        limits.check_memory(estimate, f"tile {tspec.tile} (batch {self.batch_size}, block "
                            f"{block[0]} × {block[1]}, {k} classes)")
        return estimate.per_task

    def check_probe(self, tile: int, classes: int | None) -> None:
        """A module is probed on one ``tile`` before its spec is known: check that call."""
        k = classes or 1
        per_px = self.raster.bands * 4 + k * 4 + limits.DEFAULT_WORKING_BYTES
        estimate = limits.MemoryEstimate({"model probe": float(per_px) * tile * tile})
        limits.check_memory(estimate, f"probing the model on a tile of {tile}")


def _tile_spec(mspec: ModelSpec, tile: int | None, halo: int | None, pad_mode: str,
               blend: str, check_seams: bool,
               card_halo: int | None = None) -> tuple[TileSpec, str]:
    """The tile geometry, checked against the model before any pixel is read, and why the
    halo is what it is (one of :data:`~tilesegment.plan.model.HALO_REASONS`).

    A halo off the model's pooling grid is refused (no halo size repairs it); one below the
    receptive radius is allowed with a :class:`SeamWarning` (a speed/accuracy choice). A
    checkpoint card's halo (``card_halo``) off the grid is moved up onto it, with a note.
    """
    tile = tile or mspec.default_tile
    shrink = mspec.check_tile(tile)
    bounded = check_seams and not mspec.global_context
    reason = "given" if halo is not None else "seamless default"
    if mspec.global_context and check_seams:
        warnings.warn(f"model {mspec.name!r} pools over its whole input tile: tiled output "
                      "cannot equal whole-image output whatever the halo (seams stay possible)",
                      SeamWarning, stacklevel=4)
    if halo is None and card_halo is not None:
        halo, reason = card_halo, "checkpoint card"
        if check_seams and mspec.halo_problem(tile, halo):
            rule = mspec.tile_rule
            halo = phase_halo(card_halo, rule.output_stride, rule.halo_phase())
            reason = "checkpoint card, moved onto the pooling grid"
            warnings.warn(f"the checkpoint's halo {card_halo} is off the model's pooling grid; "
                          f"using {halo}", SeamWarning, stacklevel=4)
    if halo is None:
        halo = mspec.default_halo(tile)
    elif halo < shrink:
        raise GeometryError(f"halo {halo} is smaller than the model's shrink {shrink} "
                            f"({_seamless_advice(mspec, tile)})")
    elif check_seams and (problem := mspec.halo_problem(tile, halo)):
        raise GeometryError(problem)
    elif bounded and halo < mspec.context_needed:
        whose = " (the model card's choice)" if reason.startswith("checkpoint card") else ""
        warnings.warn(f"halo {halo}{whose} is below the model's receptive radius "
                      f"{mspec.context_needed}: tiles may show seams "
                      f"({_seamless_advice(mspec, tile)})", SeamWarning, stacklevel=4)
    # Gaussian blending is exact only where each tile has full context: blend just that part
    # of each tile's output when the halo allows it; otherwise blend whole outputs (an
    # approximation, for models that see the whole tile or halos below the radius).
    margin = 0
    if blend == "gaussian" and bounded and halo >= max(shrink, mspec.context_needed):
        margin = max(0, mspec.context_needed - shrink)
    return TileSpec(tile=tile, halo=halo, shrink=shrink, pad_mode=pad_mode, blend=blend,
                    blend_margin=margin), reason


def _seamless_advice(mspec: ModelSpec, tile: int) -> str:
    try:
        return f"seamless: --halo {mspec.default_halo(tile)}"
    except GeometryError as exc:
        return str(exc)


def _normalization_plan(choice: Any, mspec: ModelSpec, bands: int) -> NormalizationPlan:
    """The normalisation section: per-band ``mean``/``std`` now for explicit or fixed
    values; for ``raster`` left for :func:`complete_plan`."""
    if isinstance(choice, tuple | list):
        mean, std = (np.broadcast_to(np.asarray(v, np.float64), (bands,)) for v in choice)
        return NormalizationPlan("explicit", "fixed", _floats(mean), _floats(std), choice)
    asked = "spec" if choice is None else choice
    norm = mspec.normalization if choice in (None, "spec") else Normalization(choice)
    if norm.mode == "none":
        return NormalizationPlan(asked, "none", given=choice)
    if norm.mode == "fixed":
        if len(norm.mean) not in (1, bands):
            raise ModelError(f"model {mspec.name!r} normalises {len(norm.mean)} bands; "
                             f"the raster has {bands}")
        return NormalizationPlan(
            asked, "fixed", _floats(np.broadcast_to(np.asarray(norm.mean, np.float64),
                                                    (bands,))),
            _floats(np.broadcast_to(np.asarray(norm.std, np.float64), (bands,))), choice)
    return NormalizationPlan(asked, "raster", given=choice)


def _card_crf(crf: Any, model: Any) -> Any:
    """``crf=True`` (``--crf`` without kernel values) means the model card's tuned setting
    (``tilesegment tune-crf``) where the card has one, Krähenbühl's defaults otherwise; a
    card that records "no CRF" skips the CRF, with a :class:`CRFSkippedWarning`."""
    if crf is not True:
        return crf
    from tilesegment.models.tuned_card import card_crf_entry

    entry = card_crf_entry(model)
    if entry is None:
        return crf
    from tilesegment.models.crf import crf_from_card

    try:
        params = crf_from_card(entry)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model {model}: its card's crf setting is invalid ({exc})") from None
    if params is None:
        from tilesegment.errors import CRFSkippedWarning

        warnings.warn(f"model {model}: its card records no CRF (tune-crf found no setting "
                      "that beat the network alone): skipping --crf (give --crf-preset or "
                      "kernel values to force one)", CRFSkippedWarning, stacklevel=3)
        return None
    return params


def _crf_plan(crf: Any, raster) -> CRFPlan | None:
    if crf is None or crf is False:
        return None
    from tilesegment.models.crf import CRFParams

    params = CRFParams() if crf is True else crf
    return CRFPlan(params=params, computed=np.dtype(raster.dtype) == np.uint8, given=crf)


def complete_plan(plan: RunPlan) -> RunPlan:
    """``plan`` with what needs pixel reads filled in: the raster's normalisation
    statistics (``raster``) and the CRF's value range (non-8-bit rasters: mean ± 3σ per
    band of the whole raster, never per block, so neighbouring blocks see the same
    colours). The fingerprint does not change (both follow from the input)."""
    from tilesegment.normalize import raster_statistics

    norm, crf, raster = plan.normalization, plan.crf, plan.source.raster
    stats = None
    if not norm.complete or (crf is not None and not crf.computed):
        stats = raster_statistics(raster)
    if not norm.complete:
        norm = replace(norm, mean=_floats(stats.mean), std=_floats(stats.std))
    if crf is not None and not crf.computed:
        lo = stats.mean - 3 * stats.std
        hi = np.maximum(stats.mean + 3 * stats.std, lo + 1e-9)
        crf = replace(crf, value_range=(tuple(map(float, lo)), tuple(map(float, hi))),
                      computed=True)
    return with_tissue_mask(replace(plan, normalization=norm, crf=crf))


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(values, np.float64).ravel())


def absolute_path(source: str) -> str:
    """An input path made absolute (so a record means the same file anywhere);
    descriptions of in-memory arrays are kept as they are."""
    path = Path(source)
    return str(path.resolve()) if path.exists() else source
