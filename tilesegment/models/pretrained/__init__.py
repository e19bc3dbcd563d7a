"""Models shipped inside the package, trained weights included: ``nuclei``,
``landcover-landsat7``.

Each is a checkpoint (``NAME.safetensors`` + its ``NAME.json`` card,
:mod:`tilesegment.models.checkpoint`) in this folder, installed as package data, registered
here under ``NAME``: its spec comes from the card (read as JSON, no torch), its builder
loads the checkpoint (sha256 and every tensor checked) from the installed file. Nothing is
downloaded. No torch at import.

``nuclei``: unet-tiny, 1 band (fluorescence), classes background / nucleus, trained on the
left half of the 2018 Data Science Bowl image that ``examples/nuclei/`` ships (CC0) by
``pipelines/train_nuclei.py``; its card states the held-out score (right half).

``landcover-landsat7``: a narrow DeepLab-LargeFOV, Landsat-7 ETM+ bands 1-5, 28.5 m, 7
land-cover classes, trained on the left part of the GRASS North Carolina scene by
``pipelines/landcover_landsat7.py``; its card states the scores on the right half and its
run geometry (tile 32, halo 8: below the receptive radius, chosen on validation, so runs
warn of seams).
"""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tilesegment.errors import ModelError
from tilesegment.models.registry import ModelEntry, get_spec, register_model
from tilesegment.models.spec import ModelSpec, Normalization

if TYPE_CHECKING:
    from torch import nn

SHIPPED = ("nuclei", "landcover-landsat7")
"""The shipped models: each has ``NAME.safetensors`` and ``NAME.json`` in this folder."""


def checkpoint_path(name: str) -> Path:
    """The installed ``NAME.safetensors`` of shipped model ``name`` (a local file)."""
    return Path(str(files(__name__).joinpath(f"{name}.safetensors")))


@cache
def card_data(name: str) -> dict[str, Any]:
    """The JSON card of shipped model ``name`` (read once per process)."""
    path = checkpoint_path(name).with_suffix(".json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"shipped model {name!r}: cannot read its card {path} ({exc}); "
                         "reinstall tilesegment") from None


def held_out_score(card: dict[str, Any]) -> float | None:
    """The held-out foreground IoU a card states (``training.held_out.foreground_iou``)."""
    held = (card.get("training") or {}).get("held_out") or {}
    return held.get("foreground_iou")


def _values(v: list[float] | None) -> tuple[float, ...] | None:
    return None if v is None else tuple(v)


def shipped_entry(name: str, summary: str) -> ModelEntry:
    """The registry entry of shipped model ``name``: spec from its card, weights from its
    checkpoint; any other band or class count is refused with one line."""
    card = card_data(name)
    bands, classes = card["in_channels"], card["num_classes"]

    def spec(c: int, k: int) -> ModelSpec:
        if c != bands:
            training = card.get("training") or {}
            named = ", ".join(b.split(",")[0] for b in training.get("bands", []))
            what = training.get("input") or named or "as trained"
            raise ModelError(f"model {name!r} takes {bands} band{'s' if bands != 1 else ''} "
                             f"({what}); the input has {c}")
        if k != classes:
            raise ModelError(f"model {name!r} gives {classes} classes, not {k} (drop --classes)")
        base = get_spec(card["architecture"], c, k)
        norm = card.get("normalization") or {}
        return dataclasses.replace(
            base, name=name, class_names=tuple(card["class_names"]),
            class_colors=tuple(tuple(v) for v in card["class_colors"]),
            normalization=Normalization(norm.get("mode", "raster"),
                                        _values(norm.get("mean")), _values(norm.get("std"))),
            default_tile=card.get("tile") or base.default_tile,
            resolution=card.get("resolution"), resolution_unit=card.get("resolution_unit"))

    def build(c: int, k: int) -> nn.Module:
        from tilesegment.models.checkpoint import build_from_checkpoint

        spec(c, k)  # the same one-line refusals as planning
        return build_from_checkpoint(checkpoint_path(name), c, k)[0]

    return ModelEntry(name, summary, spec, build, default_classes=classes, trainable=False,
                      pretrained=True, channels=bands, halo=card.get("halo"))


def _summary(name: str) -> str:
    card = card_data(name)
    if name == "landcover-landsat7":
        evaluation = (card.get("training") or {}).get("evaluation") or {}
        acc = evaluation.get("pixel_accuracy")
        forest = (evaluation.get("random_forest") or {}).get("pixel_accuracy")
        stated = (f"held-out pixel accuracy {acc:.3f} (a per-pixel random forest: "
                  f"{forest:.3f})" if acc is not None and forest is not None
                  else "scores not stated")
        return (f"shipped, trained: land cover (7 classes) from Landsat-7 ETM+ bands 1-5 at "
                f"28.5 m, narrow {card['architecture']} trained on the GRASS North Carolina "
                f"scene; {stated}")
    score = held_out_score(card)
    stated = f"{score:.3f}" if score is not None else "not stated"
    return (f"shipped, trained: fluorescence nuclei (1 band; background/nucleus), "
            f"{card['architecture']} trained on the 2018 Data Science Bowl image (CC0); "
            f"held-out foreground IoU {stated}")


for _name in SHIPPED:
    register_model(shipped_entry(_name, _summary(_name)))
