"""Checkpoints: ``.safetensors`` tensors plus a JSON model card.

Format (version 1). A checkpoint ``NAME.safetensors`` has its card in ``NAME.json`` beside
it, the authoritative copy, holding the sha256 of ``NAME.safetensors`` (what ``sha256sum``
prints). A copy of the same card without ``sha256`` (a file cannot hold its own hash) is
embedded in the safetensors header's ``__metadata__`` under ``"tilesegment.card"``, so a
tensors file that lost its JSON still says what it is; loaded that way nothing checks its
integrity beyond safetensors' own header checks. The card::

    {
      "format": "tilesegment.model-card", "format_version": 1,
      "architecture": "unet-tiny",            # a registered model name (plugins included)
      "in_channels": 3, "num_classes": 2,
      "options": {},                          # the builder's architecture keywords
      "class_names": ["background", "tissue"], "class_colors": [[0, 0, 0], [230, 25, 75]],
      "normalization": {"mode": "fixed", "mean": [...], "std": [...]},  # or raster / none
      "tile": 512, "halo": 52,                # defaults for runs (null: the model's)
      "resolution": 0.5, "resolution_unit": "um",   # training pixel size (null: unknown)
      "training": {...},                      # free provenance: data, epochs, metrics, …
      "crf": {"enabled": true, "params": {...}, "tuning": {...}},  # optional: `tune-crf`'s
                                              # setting for `run --crf` (enabled false: no CRF)
      "tilesegment_version": "0.1.0",
      "sha256": "…"                           # of the .safetensors file
    }

Tensors are read with safetensors only (no pickle). Loading checks the sha256, then the
tensors against the architecture built on the ``meta`` device (no memory, no weights): the
error names missing, unexpected and wrongly shaped tensors, or the tensors a truncated
file has lost.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tilesegment.errors import GeometryError, ModelError, OutputExistsError
from tilesegment.models.registry import create_model, get_spec, list_models
from tilesegment.models.spec import ModelSpec, Normalization
from tilesegment.models.weights import (
    check_state_fits,
    file_sha256,
    read_state_dict,
    safetensors_damage,
    safetensors_header,
)

CARD_FORMAT = "tilesegment.model-card"
CARD_VERSION = 1
METADATA_KEY = "tilesegment.card"
_REQUIRED = ("architecture", "in_channels", "num_classes", "class_names", "class_colors",
             "normalization")
_OPTIONAL = ("format", "format_version", "options", "tile", "halo", "resolution",
             "resolution_unit", "training", "tilesegment_version", "sha256", "crf")


def _version() -> str:
    from tilesegment import __version__

    return __version__


@dataclass(frozen=True)
class ModelCard:
    """What a checkpoint is: its architecture and arguments, classes, normalisation, tile
    defaults, training resolution and provenance, and the sha256 of its tensors file.

    Empty ``class_names``/``class_colors`` and ``normalization=None`` are filled from the
    architecture's spec by :func:`save_checkpoint`.
    """

    architecture: str
    in_channels: int
    num_classes: int
    options: dict[str, Any] = field(default_factory=dict)
    class_names: tuple[str, ...] = ()
    class_colors: tuple[tuple[int, int, int], ...] = ()
    normalization: Normalization | None = None
    tile: int | None = None
    halo: int | None = None
    resolution: float | None = None
    resolution_unit: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    tilesegment_version: str = field(default_factory=_version)
    sha256: str | None = None
    crf: dict[str, Any] | None = None
    """The tuned dense-CRF setting (:func:`~tilesegment.models.crf.crf_card_entry`), written
    by ``tilesegment tune-crf``; ``None``: never tuned. Absent from the JSON when ``None``."""

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON-able data (the ``NAME.json`` content)."""
        norm = self.normalization
        return {
            "format": CARD_FORMAT, "format_version": CARD_VERSION,
            "architecture": self.architecture, "in_channels": self.in_channels,
            "num_classes": self.num_classes, "options": dict(self.options),
            "class_names": list(self.class_names),
            "class_colors": [list(c) for c in self.class_colors],
            "normalization": None if norm is None else {
                "mode": norm.mode,
                "mean": None if norm.mean is None else list(norm.mean),
                "std": None if norm.std is None else list(norm.std)},
            "tile": self.tile, "halo": self.halo, "resolution": self.resolution,
            "resolution_unit": self.resolution_unit, "training": dict(self.training),
            "tilesegment_version": self.tilesegment_version, "sha256": self.sha256,
            **({} if self.crf is None else {"crf": self.crf}),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "model card") -> ModelCard:
        """A validated card from JSON data; the ``ModelError`` names ``source`` and field."""
        if not isinstance(data, dict):
            raise ModelError(f"{source}: a model card is a JSON object, not "
                             f"{type(data).__name__}")
        if data.get("format", CARD_FORMAT) != CARD_FORMAT:
            raise ModelError(f"{source}: format {data.get('format')!r} is not {CARD_FORMAT!r}")
        version = data.get("format_version", CARD_VERSION)
        if version != CARD_VERSION:
            raise ModelError(f"{source}: card format version {version!r}; this tilesegment "
                             f"reads version {CARD_VERSION}")
        missing = [k for k in _REQUIRED if k not in data]
        unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
        if missing or unknown:
            parts = ([f"missing: {', '.join(missing)}"] if missing else []) + (
                [f"unknown: {', '.join(unknown)}"] if unknown else [])
            raise ModelError(f"{source}: bad model card fields ({'; '.join(parts)})")
        norm = data["normalization"]
        try:
            normalization = None if norm is None else _normalization(norm)
            names = data["class_names"]
            colors = data["class_colors"]
            if not isinstance(names, list) or not isinstance(colors, list):
                raise TypeError("class_names and class_colors must be lists")
            card = cls(
                architecture=data["architecture"], in_channels=data["in_channels"],
                num_classes=data["num_classes"], options=data.get("options") or {},
                class_names=tuple(names),
                class_colors=tuple(tuple(c) if isinstance(c, list) else c for c in colors),
                normalization=normalization, tile=data.get("tile"), halo=data.get("halo"),
                resolution=data.get("resolution"),
                resolution_unit=data.get("resolution_unit"),
                training=data.get("training") or {},
                tilesegment_version=data.get("tilesegment_version") or "unknown",
                sha256=data.get("sha256"), crf=data.get("crf"))
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{source}: {exc}") from None
        card.validate(source)
        return card

    def validate(self, source: str = "model card") -> None:
        """Check every field's type and range, and class lists against ``num_classes``."""
        problems = _problems(self)
        if problems:
            raise ModelError(f"{source}: invalid model card: " + "; ".join(problems))


def _normalization(data: Any) -> Normalization:
    if not isinstance(data, dict) or set(data) - {"mode", "mean", "std"}:
        raise ValueError("normalization must be {\"mode\", \"mean\", \"std\"}")
    mean, std = data.get("mean"), data.get("std")
    return Normalization(data.get("mode", "raster"),
                         None if mean is None else tuple(mean),
                         None if std is None else tuple(std))


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _json_able(x: Any) -> bool:
    try:
        json.dumps(x, allow_nan=False)
        return True
    except (TypeError, ValueError):
        return False


def _problems(card: ModelCard) -> list[str]:
    """Everything wrong with ``card``, each a short phrase naming the field."""
    out: list[str] = []
    if not isinstance(card.architecture, str) or not card.architecture:
        out.append("architecture must be a registered model name")
    for name in ("in_channels", "num_classes"):
        value = getattr(card, name)
        if not _is_int(value) or value < 1:
            out.append(f"{name} must be a positive integer, not {value!r}")
    k = card.num_classes if _is_int(card.num_classes) else None
    if not isinstance(card.options, dict) or not _json_able(card.options):
        out.append("options must be a JSON object")
    else:
        files = sorted(o for o in card.options if str(o).endswith("weights"))
        if files:
            out.append(f"options {', '.join(files)}: weight files are not architecture "
                       "arguments (the checkpoint holds the weights)")
    names = card.class_names
    if names and (not all(isinstance(n, str) and n for n in names)):
        out.append("class_names must be non-empty strings")
    elif names and len(set(names)) != len(names):
        out.append("class_names must be unique")
    if names and k is not None and len(names) != k:
        out.append(f"class_names has {len(names)} names for {k} classes")
    colors = card.class_colors
    if colors and not all(isinstance(c, tuple) and len(c) == 3 and all(
            _is_int(v) and 0 <= v <= 255 for v in c) for c in colors):
        out.append("class_colors must be [r, g, b] triples of integers 0–255")
    if colors and k is not None and len(colors) != k:
        out.append(f"class_colors has {len(colors)} colours for {k} classes")
    norm = card.normalization
    if norm is not None and norm.mode == "fixed":
        c = card.in_channels if _is_int(card.in_channels) else None
        for label, values in (("mean", norm.mean), ("std", norm.std)):
            if not all(_is_number(v) for v in values or ()):
                out.append(f"normalization {label} must be finite numbers")
            elif c is not None and len(values) not in (1, c):
                out.append(f"normalization {label} has {len(values)} values for {c} bands")
        if norm.std and any(_is_number(v) and v <= 0 for v in norm.std):
            out.append("normalization std must be positive")
    if card.tile is not None and (not _is_int(card.tile) or card.tile < 1):
        out.append(f"tile must be a positive integer or null, not {card.tile!r}")
    if card.halo is not None and (not _is_int(card.halo) or card.halo < 0):
        out.append(f"halo must be a non-negative integer or null, not {card.halo!r}")
    elif card.halo is not None and _is_int(card.tile) and 2 * card.halo >= card.tile:
        out.append(f"halo {card.halo} leaves no core in tile {card.tile}")
    if card.resolution is not None and (not _is_number(card.resolution)
                                        or card.resolution <= 0):
        out.append(f"resolution must be a positive number or null, not {card.resolution!r}")
    if (card.resolution is None) != (card.resolution_unit is None):
        out.append("resolution and resolution_unit go together")
    if card.resolution_unit is not None and (not isinstance(card.resolution_unit, str)
                                             or not card.resolution_unit.strip()):
        out.append("resolution_unit must be a unit name such as 'um' or 'm'")
    if not isinstance(card.training, dict) or not _json_able(card.training):
        out.append("training must be a JSON object")
    if not isinstance(card.tilesegment_version, str):
        out.append("tilesegment_version must be a string")
    if card.crf is not None:
        from tilesegment.models.crf import crf_card_problems

        out.extend(crf_card_problems(card.crf))
    if card.sha256 is not None and not (isinstance(card.sha256, str)
                                        and re.fullmatch(r"[0-9a-f]{64}", card.sha256)):
        out.append("sha256 must be 64 lowercase hex digits")
    return out


def card_path(path: str | Path) -> Path:
    """The JSON card beside checkpoint ``path`` (``NAME.safetensors`` → ``NAME.json``)."""
    return Path(path).with_suffix(".json")


def tensors_path(path: str | Path) -> Path:
    """The tensors file of a checkpoint named by its ``.safetensors`` or ``.json`` path."""
    path = Path(path)
    return path.with_suffix(".safetensors") if path.suffix == ".json" else path


def has_card(path: str | Path) -> bool:
    """True if ``path`` (``.safetensors`` or ``.json``) names a checkpoint with a card."""
    tensors = tensors_path(path)
    if card_path(tensors).is_file():
        return True
    if tensors.suffix != ".safetensors" or not tensors.is_file():
        return False
    try:
        return METADATA_KEY in safetensors_header(tensors)[0]
    except ModelError:
        return False


def read_card(path: str | Path) -> ModelCard:
    """The validated card of checkpoint ``path`` (``NAME.safetensors`` or ``NAME.json``):
    ``NAME.json`` if it exists, else the copy embedded in the tensors file."""
    tensors = tensors_path(path)
    side = card_path(tensors)
    if side.is_file():
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelError(f"{side}: cannot read the model card ({exc})") from None
        except json.JSONDecodeError as exc:
            raise ModelError(f"{side}: not JSON ({exc})") from None
        return ModelCard.from_dict(data, str(side))
    if not tensors.is_file():
        raise ModelError(f"{tensors}: checkpoint not found")
    if tensors.suffix != ".safetensors":
        raise ModelError(f"{tensors}: a checkpoint is a .safetensors file with its card "
                         f"{side.name}")
    meta, _ = safetensors_header(tensors)
    if METADATA_KEY not in meta:
        raise ModelError(f"{tensors}: no model card ({side.name} is absent and none is "
                         "embedded): a bare weights file goes with a registered model "
                         "(--model NAME --weights FILE)")
    try:
        data = json.loads(meta[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ModelError(f"{tensors}: its embedded card is not JSON ({exc})") from None
    return ModelCard.from_dict(data, f"{tensors} (embedded card)")


def complete_card(card: ModelCard) -> ModelCard:
    """``card`` with class names, colours and normalisation filled from its architecture's
    spec where empty, checked against that spec (registered name, legal tile, halo ≥ the
    shrink)."""
    spec = _spec(card)
    card = dataclasses.replace(
        card, class_names=card.class_names or spec.class_names,
        class_colors=card.class_colors or spec.class_colors,
        normalization=card.normalization or spec.normalization)
    card.validate()
    if card.tile is not None:
        try:
            shrink = spec.check_tile(card.tile)
        except GeometryError as exc:
            raise ModelError(f"model card: {exc}") from None
        if card.halo is not None and card.halo < shrink:
            raise ModelError(f"model card: halo {card.halo} is smaller than the shrink "
                             f"{shrink} of {card.architecture!r} at tile {card.tile}")
    return card


def card_spec(card: ModelCard) -> ModelSpec:
    """The architecture's spec with the card's classes, normalisation, default tile and
    training resolution."""
    spec = _spec(card)
    return dataclasses.replace(
        spec, class_names=card.class_names or spec.class_names,
        class_colors=card.class_colors or spec.class_colors,
        normalization=card.normalization or spec.normalization,
        default_tile=card.tile or spec.default_tile, resolution=card.resolution,
        resolution_unit=card.resolution_unit)


def save_checkpoint(module: nn.Module, path: str | Path, card: ModelCard | Mapping[str, Any],
                    *, overwrite: bool = False) -> ModelCard:
    """Write ``module``'s tensors to ``path`` (``.safetensors``) and its card beside it.

    The module must have exactly the tensors of ``card``'s architecture; the card is
    completed from the architecture's spec, stamped with the file's sha256, and returned.
    Both files are written to temporary names and renamed into place.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelError(f"{path}: a checkpoint is written as .safetensors")
    if not isinstance(card, ModelCard):
        card = ModelCard.from_dict({"class_names": [], "class_colors": [],
                                    "normalization": None, **card, "sha256": None})
    card = complete_card(dataclasses.replace(card, sha256=None))
    side = card_path(path)
    for target in (path, side):
        if target.exists() and not overwrite:
            raise OutputExistsError(f"{target} exists (pass overwrite=True to replace it)")
    state = module.state_dict()
    check_state_fits(expected_shapes(card), state,
                     f"the module (saving as {card.architecture!r})")
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
    embedded = {k: v for k, v in card.to_dict().items() if k != "sha256"}
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={
            "format": "pt", METADATA_KEY: json.dumps(embedded, ensure_ascii=False)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    card = dataclasses.replace(card, sha256=file_sha256(path))
    tmp = side.with_name(f".{side.name}.tmp")
    try:
        tmp.write_text(json.dumps(card.to_dict(), indent=2, ensure_ascii=False) + "\n",
                       encoding="utf-8")
        os.replace(tmp, side)
    finally:
        tmp.unlink(missing_ok=True)
    return card


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """``(state_dict, card)`` of checkpoint ``path``, after checking the sha256 (when the
    card has one) and every tensor name and shape against the card's architecture."""
    tensors = tensors_path(path)
    card = read_card(tensors)
    if not tensors.is_file():
        raise ModelError(f"{tensors}: checkpoint tensors not found (its card is "
                         f"{card_path(tensors).name})")
    if card.sha256 is not None:
        digest = file_sha256(tensors)
        if digest != card.sha256:
            damage = safetensors_damage(tensors)
            why = damage or ("the file changed since its card was written, or the card "
                             "belongs to another file")
            raise ModelError(f"{tensors}: sha256 {digest[:12]}… does not match its card's "
                             f"{card.sha256[:12]}… ({why})")
    state = read_state_dict(tensors)
    check_state_fits(expected_shapes(card), state, str(tensors))
    return state, card


def build_from_checkpoint(path: str | Path, in_channels: int | None = None,
                          num_classes: int | None = None) -> tuple[nn.Module, ModelCard]:
    """The card's architecture with the checkpoint's weights, in eval mode, and the card;
    ``in_channels``/``num_classes``, when given, must be the card's."""
    state, card = load_checkpoint(path)
    name = tensors_path(path)
    if in_channels is not None and in_channels != card.in_channels:
        raise ModelError(f"{name}: the model takes {card.in_channels} bands; the input has "
                         f"{in_channels}")
    if num_classes is not None and num_classes != card.num_classes:
        raise ModelError(f"{name}: the model gives {card.num_classes} classes, not "
                         f"{num_classes} (drop --classes)")
    module = create_model(card.architecture, card.in_channels, card.num_classes,
                          **card.options)
    module.load_state_dict(state, strict=True)
    return module.eval(), card


def expected_shapes(card: ModelCard) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of ``card``'s architecture, built on the ``meta`` device (no
    memory, no initialisation cost); on a real CPU build if the builder refuses ``meta``."""
    _require(card.architecture)
    try:
        with torch.device("meta"):
            module = create_model(card.architecture, card.in_channels, card.num_classes,
                                  **card.options)
    except ModelError:
        raise
    except Exception:
        try:
            module = create_model(card.architecture, card.in_channels, card.num_classes,
                                  **card.options)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"cannot build {card.architecture!r} with options "
                             f"{card.options}: {exc}") from None
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _spec(card: ModelCard) -> ModelSpec:
    _require(card.architecture)
    return get_spec(card.architecture, card.in_channels, card.num_classes)


def _require(name: str) -> None:
    from tilesegment.models.plugins import ensure_model

    if not ensure_model(name):
        raise ModelError(f"model card names architecture {name!r}, which is not registered "
                         f"(known: {', '.join(list_models())})")
