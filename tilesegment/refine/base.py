"""The refiner contract: a stage after merging that may look past the block's edge.

A refiner declares its :attr:`Refiner.reach`: the pixels of context it needs on each side
of the block. The block task merges the block widened by that reach (cut at the raster
edge: real pixels only, never padding), and the refiner maps the merged logits of that
window (with the raw image there when :attr:`Refiner.needs_image`) to the block's refined
logits. NumPy only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

Window = tuple[int, int, int, int]


def widen(window: Window, reach: int, shape: tuple[int, int]) -> Window:
    """``window`` grown by ``reach`` pixels on each side, cut at the raster ``shape``."""
    r0, r1, c0, c1 = window
    h, w = shape
    return max(0, r0 - reach), min(h, r1 + reach), max(0, c0 - reach), min(w, c1 + reach)


def inner(have: Window, want: Window) -> tuple[slice, slice]:
    """The rows and columns of ``want`` inside an array that covers ``have``."""
    return (slice(want[0] - have[0], want[1] - have[0]),
            slice(want[2] - have[2], want[3] - have[2]))


class Refiner(ABC):
    """Refines merged logits; must be picklable (it travels in the block job)."""

    name: str = ""
    needs_image: bool = True
    """Whether :meth:`refine` is given the raw image of the widened window."""

    @property
    @abstractmethod
    def reach(self) -> int:
        """Pixels of context needed on each side of the block."""

    @abstractmethod
    def refine(self, logits: np.ndarray, image: np.ndarray | None, have: Window,
               want: Window) -> np.ndarray:
        """Refined logits ``float32 (K, h, w)`` of block ``want`` from the merged logits
        ``float32 (K, H', W')`` of window ``have`` (``want`` widened by :attr:`reach`, cut
        at the raster edge; pixels whose logits were not finite are 0 there) and the raw
        image ``(C, H', W')`` of ``have`` (``None`` unless :attr:`needs_image`)."""
