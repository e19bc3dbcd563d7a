"""Refiners: stages after merging (see :mod:`.base` for the contract).

A new refiner is a module with a :class:`~tilesegment.refine.base.Refiner` subclass plus one
line in :data:`REFINERS`.
"""

from __future__ import annotations

from typing import Any

from tilesegment.refine.base import Refiner, inner, widen
from tilesegment.refine.crf import CRFRefiner

REFINERS: dict[str, type[Refiner]] = {"crf": CRFRefiner}


def refiner_for(name: str, **settings: Any) -> Refiner:
    """The refiner ``name`` made with ``settings``."""
    try:
        kind = REFINERS[name]
    except KeyError:
        raise ValueError(f"refiner {name!r} unknown; use one of {tuple(REFINERS)}") from None
    return kind(**settings)


__all__ = ["REFINERS", "CRFRefiner", "Refiner", "inner", "refiner_for", "widen"]
