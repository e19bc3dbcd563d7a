"""The merger contract: tile outputs in, one block of logits out.

A merger is made for one block ``window`` ``(r0, r1, c0, c1)`` with ``K`` classes; the block
task hands it each batch of tile outputs as the predictor returns them (:meth:`Merger.add`)
and asks for the block at the end (:meth:`Merger.result`). Tiles arrive in global grid
order, so a pixel's floating-point sum is the same whatever the blocks are. NumPy only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from tilesegment.grid import Tile, TileSpec

Window = tuple[int, int, int, int]


class Merger(ABC):
    """Accumulates tile outputs ``float32 (K, o, o)`` (``o = tile - 2·shrink``; a tile's
    output starts at raster pixel ``(tile.row + shrink, tile.col + shrink)``) into the block
    ``window``."""

    name: str = ""

    def __init__(self, spec: TileSpec, window: Window, num_classes: int) -> None:
        self.spec = spec
        self.window = window
        r0, r1, c0, c1 = window
        self.logits = np.zeros((num_classes, r1 - r0, c1 - c0), dtype=np.float32)

    def add(self, tiles: Sequence[Tile], outputs: np.ndarray) -> None:
        """Add a batch: ``outputs`` ``float32 (N, K, o, o)`` of ``tiles`` (N of them)."""
        if len(tiles) != len(outputs):
            raise ValueError(f"{len(tiles)} tiles but {len(outputs)} outputs")
        for tile, output in zip(tiles, outputs, strict=True):
            self.add_one(tile, output)

    @abstractmethod
    def add_one(self, tile: Tile, output: np.ndarray) -> None:
        """Add one tile's output ``float32 (K, o, o)``."""

    @abstractmethod
    def result(self) -> np.ndarray:
        """The block's logits ``float32 (K, h, w)``."""

    def disagreement(self) -> np.ndarray | None:
        """``bool (h, w)``: pixels where overlapping tiles' own argmax classes differ;
        ``None`` where each pixel comes from one tile."""
        return None

    def overlap(self, y0: int, x0: int, h: int, w: int
                ) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
        """Where an ``(h, w)`` patch placed at raster ``(y0, x0)`` meets the block:
        ``(patch rows, patch cols)`` and ``(block rows, block cols)``, or ``None``."""
        r0, r1, c0, c1 = self.window
        ya, yb = max(y0, r0), min(y0 + h, r1)
        xa, xb = max(x0, c0), min(x0 + w, c1)
        if ya >= yb or xa >= xb:
            return None
        return ((slice(ya - y0, yb - y0), slice(xa - x0, xb - x0)),
                (slice(ya - r0, yb - r0), slice(xa - c0, xb - c0)))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 0 of ``float32 (K, h, w)``, computed stably in float32."""
    shifted = logits - logits.max(axis=0, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=0, keepdims=True)
    return shifted
