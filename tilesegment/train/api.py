"""``train()``: fit a zoo architecture to labelled rasters and save the best checkpoint."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tilesegment.errors import InputError, ModelError, OutputExistsError, SettingError
from tilesegment.grid import TileSpec
from tilesegment.train import data as d
from tilesegment.train.loop import PRECISIONS, Fit, run
from tilesegment.train.sampler import TileSampler, parse_augment
from tilesegment.train.state import load_state, state_path
from tilesegment.train.validate import predict_window, score

NORMALIZATIONS = ("raster", "spec", "none")


@dataclass
class TrainSummary:
    """What a training run produced: the checkpoint and its card, the epochs and steps
    run, the best epoch and its validation score (``None`` without validation), the
    per-epoch history (loss and validation measures) and the seconds spent training."""

    output: Path
    card_path: Path
    card: Any
    epochs: int
    steps: int
    best_epoch: int
    best_score: float | None
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    validation: list[tuple[str, tuple[int, int, int, int], np.ndarray]] = field(
        default_factory=list)
    """Per validation window: ``(image, (r0, r1, c0, c1), uint8 (h, w) mask)`` of the best
    weights, from the trainer's own validation inference (nodata 255)."""


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, str | os.PathLike | np.ndarray) or hasattr(value, "read"):
        return [value]
    return list(value)


def _check_model(name: str) -> None:
    from tilesegment.models.plugins import ensure_model
    from tilesegment.models.registry import list_models

    if not ensure_model(name):
        close = difflib.get_close_matches(name, list_models(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ModelError(f"unknown model {name!r}{hint}; known: {', '.join(list_models())}")


def _training_tile(spec: Any, tile: int | None) -> int:
    """``tile`` checked against the model, or the largest valid tile ≤ 256 (≤ the model's
    default) with a non-empty output."""
    if tile is not None:
        shrink = spec.check_tile(tile)
        if tile - 2 * shrink <= 0:
            raise SettingError(f"--tile {tile} leaves no output for {spec.name!r}")
        return tile
    start = min(256, spec.default_tile)
    for t in range(start, 0, -1):
        try:
            shrink = spec.check_tile(t)
        except Exception:
            continue
        if t - 2 * shrink >= 16:
            return t
    return spec.default_tile


def _norm_of(mode: str, spec: Any, image: Any) -> tuple[Any, Any, Any]:
    """``(mean, std, Normalization for the card)`` of ``image`` under ``mode``."""
    from tilesegment.models.spec import Normalization
    from tilesegment.normalize import raster_statistics

    if mode not in NORMALIZATIONS:
        raise SettingError(f"--normalization {mode!r} unknown; use one of "
                           f"{', '.join(NORMALIZATIONS)}")
    norm = spec.normalization if mode == "spec" else Normalization(mode)
    if norm.mode == "none":
        return None, None, norm
    if norm.mode == "fixed":
        c = image.bands
        mean = np.broadcast_to(np.asarray(norm.mean, np.float64), (c,)).copy()
        std = np.broadcast_to(np.asarray(norm.std, np.float64), (c,)).copy()
        return mean, std, norm
    stats = raster_statistics(image, scheduler="synchronous")
    return stats.mean, stats.std, norm


def train(images: Any, truths: Any, *, model: str | None = None, output: str | Path,
          classes: int | None = None, class_names: tuple[str, ...] | str | None = None,
          ignore_index: int | None = None, instances: bool = False,
          mapping: dict[int, int] | None = None, tile: int | None = None,
          halo: int | None = None, card_tile: int | None = None,
          batch_size: int = 8, epochs: int = 10,
          steps_per_epoch: int = 100, lr: float = 1e-3, weight_decay: float = 1e-4,
          val_fraction: float = 0.2, val_images: Any = None, val_truths: Any = None,
          augment: str | tuple[str, ...] | None = "flip,rot90",
          class_weights: str | tuple[float, ...] | None = "none",
          foreground_bias: float = 0.0, normalization: str = "raster",
          backbone_weights: str | Path | None = None, init: str | Path | None = None,
          device: str = "auto", precision: str = "fp32", seed: int = 0,
          resume: bool = False, progress: bool = False,
          overwrite: bool = False, command: str | None = None,
          record_tiles: bool = False) -> TrainSummary:
    """Train ``model`` on ``images`` (paths, arrays or rasters, ``(C, H, W)``) against
    ``truths`` (class ids on the same grids) and write the best checkpoint to ``output``
    (``.safetensors`` + ``.json`` card).

    Tiles come from the inference splitter (same padding, normalisation and label
    alignment); validation runs the inference path on ``val_fraction`` of each image's
    columns at the right (never touched by a training tile's input), or on
    ``val_images``/``val_truths``. See ``docs/training.md`` for every option.
    ``card_tile``/``halo``: the runs' default tile and halo written in the card (and used
    by validation); default the model's inference tile and its seamless halo.
    ``record_tiles``: keep the sampled windows in ``summary.tiles`` (tests use it).
    """
    from tilesegment.infer import resolve_device
    from tilesegment.models.checkpoint import (
        ModelCard,
        build_from_checkpoint,
        read_card,
        save_checkpoint,
    )
    from tilesegment.models.registry import create_model, get_spec
    from tilesegment.plan.build import _tile_spec
    from tilesegment.read import open_raster

    images, truths = _as_list(images), _as_list(truths)
    val_images, val_truths = _as_list(val_images), _as_list(val_truths)
    if not images:
        raise SettingError("give at least one training image")
    if len(images) != len(truths):
        raise SettingError(f"{len(images)} images but {len(truths)} truths: give one --truth "
                           "per image, in the same order")
    if len(val_images) != len(val_truths):
        raise SettingError(f"{len(val_images)} --val-image but {len(val_truths)} --val-truth")
    if precision not in PRECISIONS:
        raise SettingError(f"--precision {precision!r} unknown; use fp32, bf16 or fp16")
    if not 0 <= foreground_bias <= 1:
        raise SettingError(f"--foreground-bias {foreground_bias} must lie in [0, 1]")
    for name, value in (("batch-size", batch_size), ("epochs", epochs),
                        ("steps-per-epoch", steps_per_epoch)):
        if value < 1:
            raise SettingError(f"--{name} must be at least 1, not {value}")
    augment = parse_augment(augment)
    output = Path(output)
    if output.suffix != ".safetensors":
        raise SettingError(f"{output}: the output is a checkpoint, named *.safetensors")
    from tilesegment.models.checkpoint import card_path

    if not resume and not overwrite:
        for target in (output, card_path(output)):
            if target.exists():
                raise OutputExistsError(f"{target} exists (pass --overwrite to replace it, "
                                        "or --resume to continue its training)")
    if isinstance(class_names, str):
        class_names = tuple(n.strip() for n in class_names.split(","))

    # the model and its starting weights
    init_card = read_card(init) if init is not None else None
    if init_card is not None:
        if model is not None and model != init_card.architecture:
            raise ModelError(f"--init {init} is a {init_card.architecture!r} checkpoint, "
                             f"not {model!r}")
        model = init_card.architecture
        classes = classes or init_card.num_classes
    if model is None:
        raise SettingError("give --model NAME (or --init CHECKPOINT)")
    _check_model(model)
    if classes is None:
        classes = len(class_names) if class_names else 2

    opened = [open_raster(p) for p in images]
    opened_truths = [open_raster(p) for p in truths]
    opened_val = [open_raster(p) for p in val_images]
    opened_val_truths = [open_raster(p) for p in val_truths]
    bands = {r.bands for r in opened + opened_val}
    if len(bands) != 1:
        raise InputError(f"the images have different band counts {sorted(bands)}; a model "
                         "takes one")
    (in_channels,) = bands
    spec = get_spec(model, in_channels, classes)
    inherited = init_card if init_card is not None and init_card.num_classes == classes else None
    names = (tuple(class_names) if class_names else
             inherited.class_names if inherited is not None and inherited.class_names else
             tuple(spec.class_names))
    if len(names) != classes:
        raise SettingError(f"{len(names)} class names for {classes} classes")
    colors = (inherited.class_colors if inherited is not None and inherited.class_colors else
              tuple(spec.class_colors) if len(spec.class_colors) == classes else ())

    # data: pairs, their regions, label rules
    pairs: list[d.Pair] = []
    rules_of = []
    for img, gt, given, given_truth in zip(opened + opened_val,
                                           opened_truths + opened_val_truths,
                                           images + val_images, truths + val_truths,
                                           strict=True):
        d.check_pair(img, gt)
        rules = d.label_rules(classes, ignore_index, instances, mapping, gt.nodata)
        rules_of.append(rules)
        is_val = len(pairs) >= len(opened)
        if is_val:
            train_w, val_w = None, (0, img.height, 0, img.width)
        elif opened_val:
            train_w, val_w = (0, img.height, 0, img.width), None
        else:
            train_w, val_w = d.split_regions(img.height, img.width, val_fraction)
        name = given if isinstance(given, str | os.PathLike) else getattr(img, "source", "")
        truth_name = (given_truth if isinstance(given_truth, str | os.PathLike)
                      else getattr(gt, "source", ""))
        pairs.append(d.Pair(img, gt, d.Labels(gt, rules), train_w, val_w, name=str(name),
                            truth_name=str(truth_name)))

    # geometry: the training tile, and the card's inference tile and halo
    t_train = _training_tile(spec, tile)
    shrink = spec.check_tile(t_train)
    train_spec = TileSpec(tile=t_train, halo=max(shrink, 0), shrink=shrink)
    # the runs' tile (validation uses it too): inference's default unless given
    card_tile = card_tile or spec.default_tile
    val_spec, _ = _tile_spec(spec, card_tile, halo, "reflect", "crop", check_seams=True)

    settings = {
        "images": [p.name for p in pairs], "model": model, "classes": classes,
        "class_names": list(names), "ignore_index": ignore_index, "instances": instances,
        "mapping": sorted((mapping or {}).items()), "tile": t_train, "halo": val_spec.halo,
        "card_tile": card_tile, "batch_size": batch_size, "epochs": epochs,
        "steps_per_epoch": steps_per_epoch, "lr": lr, "weight_decay": weight_decay,
        "val_fraction": val_fraction, "augment": list(augment),
        "class_weights": class_weights, "foreground_bias": foreground_bias,
        "normalization": normalization,
        "backbone_weights": None if backbone_weights is None else str(backbone_weights),
        "init": None if init is None else str(init), "precision": precision, "seed": seed}
    resume_state = load_state(output, settings) if resume else None

    dev = resolve_device(device)
    # CPU kernels are deterministic for a fixed thread count; CUDA needs the switch (whose
    # first use also imports torch's compiler stack: seconds, so not on the CPU)
    deterministic = torch.are_deterministic_algorithms_enabled()
    if dev.type == "cuda":
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    try:
        norms, card_norm = [], None
        for p in pairs:
            mean, std, card_norm = _norm_of(normalization, spec, p.image)
            norms.append((mean, std))
        scan_rng = np.random.default_rng([seed, 1])
        counts = np.zeros(classes, np.int64)
        foreground = []
        for p in pairs:
            if p.train is None:
                foreground.append(np.zeros((0, 2), np.int64))
                continue
            c, fg = d.scan_labels(p.labels, p.train, classes, scan_rng)
            counts += c
            foreground.append(fg)
        if counts.sum() == 0:
            raise InputError("the training regions hold no labelled pixel")
        weights = d.class_weights(class_weights, counts)

        if init is not None:
            module, _ = build_from_checkpoint(init, in_channels, classes)
        else:
            options = {"backbone_weights": str(backbone_weights)} if backbone_weights else {}
            module = create_model(model, in_channels, classes, seed, **options)
        sampler = TileSampler(pairs, train_spec, norms, augment=augment,
                              foreground_bias=foreground_bias, foreground=foreground)
        sampler.record = record_tiles
        val_pairs = [i for i, p in enumerate(pairs) if p.val is not None]

        def masks_of(module: torch.nn.Module) -> list[np.ndarray]:
            return [predict_window(module, pairs[i].image, val_spec, *norms[i], pairs[i].val,
                                   classes, dev, batch_size) for i in val_pairs]

        def validate(module: torch.nn.Module) -> dict[str, Any] | None:
            if not val_pairs:
                return None
            truths_ = [np.asarray(pairs[i].truth.read(pairs[i].val))[0] for i in val_pairs]
            return score(masks_of(module), truths_, [rules_of[i] for i in val_pairs], names)

        fit = run(Fit(module=module, sampler=sampler, device=dev, output=output,
                      epochs=epochs, steps_per_epoch=steps_per_epoch,
                      batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      precision=precision, class_weights=weights, rng=rng,
                      validate=validate, settings=settings, progress=progress,
                      resume_state=resume_state))
    finally:
        if dev.type == "cuda":
            torch.use_deterministic_algorithms(deterministic)

    module.load_state_dict(fit.best["model"])
    validation = [(pairs[i].name, pairs[i].val, m) for i, m in
                  zip(val_pairs, masks_of(module.eval()), strict=True)]
    first = pairs[0].image.georef
    resolution = unit = None
    if first.pixel_size:
        resolution, unit = float(abs(first.pixel_size[1])), first.unit
    history = fit.history
    training = {
        "data": d.fingerprint(pairs),
        "epochs": len(history), "steps": fit.step, "seconds": round(fit.seconds, 1),
        "tile": t_train, "batch_size": batch_size,
        "optimiser": f"AdamW lr {lr} weight decay {weight_decay}",
        "loss": "cross-entropy" + ("" if weights is None else
                                   f", class weights {[round(float(w), 4) for w in weights]}"),
        "augment": list(augment), "foreground_bias": foreground_bias, "seed": seed,
        "precision": precision, "device": str(dev),
        "start": ("init " + str(init)) if init else (
            "backbone weights " + Path(backbone_weights).name if backbone_weights else "random"),
        "validation": {"region": ("val images" if opened_val else
                                  f"right {val_fraction:g} of each image's columns"),
                       "per_epoch": history,
                       "best_epoch": fit.best["epoch"], "best": fit.best.get("score"),
                       "selected_by": ("foreground IoU" if classes == 2 else "mean IoU")},
        "command": command, "arguments": settings,
    }
    card = ModelCard(
        architecture=model, in_channels=in_channels, num_classes=classes,
        options=dict(init_card.options) if init_card is not None else {},
        class_names=names, class_colors=colors, normalization=card_norm,
        tile=card_tile, halo=val_spec.halo, resolution=resolution, resolution_unit=unit,
        training=training)
    card = save_checkpoint(module.cpu(), output, card, overwrite=True)
    summary = TrainSummary(output=output, card_path=card_path(output), card=card,
                           epochs=len(history), steps=fit.step, best_epoch=fit.best["epoch"],
                           best_score=fit.best.get("score"), history=history,
                           seconds=fit.seconds, validation=validation)
    if record_tiles:
        summary.tiles = list(sampler.drawn)  # type: ignore[attr-defined]
    return summary


__all__ = ["TrainSummary", "state_path", "train"]
