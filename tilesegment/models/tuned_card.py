"""A model card's tuned CRF setting: which card a run's ``--crf`` reads, and writing a copy of
a checkpoint whose card holds ``tune-crf``'s result.

The ``crf`` entry (:func:`~tilesegment.models.crf.crf_card_entry`) lives in the JSON card
beside the tensors; the tensors (and their sha256) do not change, so a card with a new
``crf`` entry still matches them. Shipped cards (``tilesegment/models/pretrained/``) are never
written here unless ``allow_package`` (the recipe that ships a setting,
``pipelines/tune_crf_nuclei.py --ship``). No torch at import.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tilesegment.errors import ModelError, OutputExistsError, SettingError


def _shipped(name: str) -> bool:
    from tilesegment.models.pretrained import SHIPPED

    return name in SHIPPED


def card_crf_entry(model: Any) -> dict[str, Any] | None:
    """The ``crf`` entry of ``model``'s card: a shipped model's name or a checkpoint path
    (``NAME.safetensors``/``NAME.json``); ``None`` for anything else or a card without one.
    Unreadable cards give ``None`` here (the run reports them when it loads the model)."""
    if not isinstance(model, str | os.PathLike):
        return None
    if isinstance(model, str) and _shipped(model):
        from tilesegment.models.pretrained import card_data

        return card_data(model).get("crf")
    path = Path(model)
    if path.suffix not in (".safetensors", ".json"):
        return None
    side = path.with_suffix(".json")
    try:
        if side.is_file():
            data = json.loads(side.read_text(encoding="utf-8"))
            return data.get("crf") if isinstance(data, dict) else None
        if path.is_file():
            from tilesegment.models.checkpoint import read_card

            return read_card(path).crf
    except (OSError, ValueError, ModelError):
        return None
    return None


def base_checkpoint(model: str) -> tuple[Path, dict[str, Any]]:
    """``(tensors file, card as JSON data)`` of a shipped model's name or a checkpoint path;
    :class:`ModelError` for anything without a card."""
    if _shipped(model):
        from tilesegment.models.pretrained import card_data, checkpoint_path

        return checkpoint_path(model), json.loads(json.dumps(card_data(model)))
    path = Path(model)
    if path.suffix in (".safetensors", ".json") and (path.is_file()
                                                     or path.with_suffix(".json").is_file()):
        from tilesegment.models.checkpoint import read_card, tensors_path

        return tensors_path(path), read_card(path).to_dict()
    raise ModelError(f"model {model!r} has no model card to hold a CRF setting: give a "
                     "shipped model's name or a checkpoint (NAME.safetensors with its "
                     "NAME.json card) with --model")


def package_folder() -> Path:
    """The folder of the shipped models' cards (installed package data)."""
    import tilesegment.models.pretrained as pretrained

    return Path(pretrained.__file__).resolve().parent


def write_tuned_card(model: str, out: str | Path, entry: dict[str, Any], *,
                     overwrite: bool = False, allow_package: bool = False) -> tuple[Path, Path]:
    """Write checkpoint ``out`` (``NAME.safetensors`` or ``NAME.json``): ``model``'s tensors
    (copied unless ``out`` already is that file) and its card with ``crf`` = ``entry``.
    Returns ``(tensors, card)`` paths. Refuses an existing card without ``overwrite`` and the
    shipped models' folder without ``allow_package``."""
    from tilesegment.models.checkpoint import ModelCard
    from tilesegment.models.weights import file_sha256

    out = Path(out)
    if out.suffix not in (".safetensors", ".json"):
        raise SettingError(f"{out}: a checkpoint is NAME.safetensors with its card "
                           "NAME.json: name one of the two")
    tensors, card = base_checkpoint(model)
    target, side = out.with_suffix(".safetensors"), out.with_suffix(".json")
    if not allow_package and side.parent.resolve() == package_folder():
        raise SettingError(f"{side}: refusing to change a shipped model's card in the "
                           "installed package; write a copy elsewhere (--card OUT)")
    if side.exists() and not overwrite:
        raise OutputExistsError(f"{side} exists (pass --overwrite to replace it)")
    card["crf"] = entry
    ModelCard.from_dict(card, f"{side} (new card)")  # the entry and the rest still valid
    same = target.exists() and target.resolve() == tensors.resolve()
    if not same:
        if target.exists() and not overwrite:
            raise OutputExistsError(f"{target} exists (pass --overwrite to replace it)")
        target.parent.mkdir(parents=True, exist_ok=True)
        _replace(target, lambda tmp: shutil.copyfile(tensors, tmp))
    if card.get("sha256") is not None and file_sha256(target) != card["sha256"]:
        raise ModelError(f"{target}: its sha256 does not match the card of {model!r}")
    text = json.dumps(card, indent=2, ensure_ascii=False) + "\n"
    _replace(side, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return target, side


def _replace(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` through a hidden temporary beside it, renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
