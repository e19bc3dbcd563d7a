"""What an output holds besides pixels: :class:`OutputMeta` and its JSON form.

The same JSON dict (:func:`meta_to_attrs`) is stored as the ``tilesegment`` attribute of a
Zarr output's root group and as the ``TILESEGMENT`` tag of a GeoTIFF output, so
:func:`~tilesegment.write.read_output_meta` returns one shape for both kinds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tilesegment.read.base import Georef
from tilesegment.write.layout import (  # noqa: F401  (DISAGREEMENT_NODATA re-exported)
    COMPLETION_KEY,
    DISAGREEMENT,
    DISAGREEMENT_NODATA,
    FORMAT_NAME,
    MASK,
    PROBABILITIES,
)

FORMAT_VERSION = 2
"""2: every layer carries the ``run_id``; the completion record names the blocks written
and (GeoTIFF) each sibling layer's file and size."""

MAX_CLASSES_UINT8 = 255
"""Class ids ``0..254`` fit a uint8 mask with 255 left free as nodata."""

MAX_CLASSES_UINT16 = 65535
"""Class ids ``0..65534`` fit a uint16 mask with 65535 left free as nodata."""


def _pair(value: Any, name: str) -> tuple[int, int]:
    """``value`` as a ``(int, int)`` of positive sizes, else ValueError."""
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be two integers, got {value!r}") from exc
    if a <= 0 or b <= 0:
        raise ValueError(f"{name} must be positive, got {(a, b)}")
    return a, b


@dataclass(frozen=True)
class OutputMeta:
    """Everything a writer needs to know before the first block arrives.

    ``shape`` ``(H, W)`` of the mask; ``num_classes`` K with ``class_names`` and
    ``class_colors`` (RGB 0..255) of length K; ``georef`` copied into the output;
    ``block_shape`` ``(h, w)``: the output chunk, which is the block one task writes;
    ``save_probabilities``: also store ``(K, H, W)`` probabilities; ``provenance``: a
    JSON-able dict stored verbatim; ``save_disagreement``: also store the uint8 ``(H, W)``
    layer that is 1 where overlapping tiles of a Gaussian-blended run disagree on the class,
    0 where they agree, :data:`DISAGREEMENT_NODATA` where nothing was written.
    """

    shape: tuple[int, int]
    num_classes: int
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    georef: Georef
    block_shape: tuple[int, int]
    save_probabilities: bool = False
    provenance: dict = field(default_factory=dict)
    save_disagreement: bool = False

    def __post_init__(self) -> None:
        # Normalise lists (from JSON, from a model card) to tuples and check the sizes.
        set_ = object.__setattr__
        set_(self, "shape", _pair(self.shape, "shape"))
        set_(self, "block_shape", _pair(self.block_shape, "block_shape"))
        k = int(self.num_classes)
        if not 1 <= k <= MAX_CLASSES_UINT16:
            raise ValueError(f"num_classes must be 1..{MAX_CLASSES_UINT16}, got {k}")
        set_(self, "num_classes", k)
        names = tuple(str(n) for n in self.class_names)
        if len(names) != k:
            raise ValueError(f"{len(names)} class names for {k} classes")
        set_(self, "class_names", names)
        colors = tuple(tuple(int(c) for c in rgb) for rgb in self.class_colors)
        if len(colors) != k:
            raise ValueError(f"{len(colors)} class colours for {k} classes")
        for rgb in colors:
            if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
                raise ValueError(f"class colour {rgb} is not an RGB triple in 0..255")
        set_(self, "class_colors", colors)
        if not isinstance(self.georef, Georef):
            raise ValueError(f"georef must be a Georef, got {type(self.georef).__name__}")
        if not isinstance(self.provenance, dict):
            raise ValueError("provenance must be a dict")
        try:
            json.dumps(self.provenance, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"provenance is not JSON-able: {exc}") from exc

    @property
    def mask_dtype(self) -> np.dtype:
        """uint8 when K <= 255 (ids 0..254, 255 free for nodata), else uint16."""
        return np.dtype(np.uint8 if self.num_classes <= MAX_CLASSES_UINT8 else np.uint16)

    @property
    def nodata(self) -> int:
        """The mask value of pixels never written: 255 for uint8, 65535 for uint16."""
        return int(np.iinfo(self.mask_dtype).max)

    @property
    def layers(self) -> tuple[str, ...]:
        """The layers this output stores: ``"mask"``, then the optional ones it saves."""
        return (
            MASK,
            *((PROBABILITIES,) if self.save_probabilities else ()),
            *((DISAGREEMENT,) if self.save_disagreement else ()),
        )

    @property
    def block_grid(self) -> tuple[int, int]:
        """Number of blocks ``(rows, cols)``; edge blocks are smaller."""
        (h, w), (bh, bw) = self.shape, self.block_shape
        return math.ceil(h / bh), math.ceil(w / bw)

    def block_extent(self, row0: int, col0: int) -> tuple[int, int]:
        """``(h, w)`` of the block whose top-left is ``(row0, col0)``.

        Raises ValueError unless ``(row0, col0)`` is a block corner inside the raster.
        """
        (h, w), (bh, bw) = self.shape, self.block_shape
        if not (0 <= row0 < h and 0 <= col0 < w):
            raise ValueError(f"block corner ({row0}, {col0}) is outside the {h}x{w} mask")
        if row0 % bh or col0 % bw:
            raise ValueError(
                f"block corner ({row0}, {col0}) is not aligned with the block shape {bh}x{bw}"
            )
        return min(bh, h - row0), min(bw, w - col0)


def georef_to_json(georef: Georef) -> dict[str, Any]:
    """The :class:`Georef` as plain JSON values (tuples become lists)."""
    return {
        "crs_wkt": georef.crs_wkt,
        "transform": [float(v) for v in georef.transform] if georef.transform else None,
        "pixel_size": [float(v) for v in georef.pixel_size] if georef.pixel_size else None,
        "unit": georef.unit,
    }


def meta_to_attrs(meta: OutputMeta, *, kind: str) -> dict[str, Any]:
    """The JSON dict stored with an output of ``kind`` (``"zarr"`` or ``"geotiff"``).

    ``layers`` lists what the output holds (``"mask"``, then ``"probabilities"`` and
    ``"disagreement"`` when saved); outputs written before it existed lack the key (see
    :func:`output_layers`). ``completion.complete`` is False until the writer's ``finalize``
    sets it.
    """
    rows, cols = meta.block_grid
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "shape": list(meta.shape),
        "block_shape": list(meta.block_shape),
        "mask_dtype": meta.mask_dtype.name,
        "nodata": meta.nodata,
        "num_classes": meta.num_classes,
        "class_names": list(meta.class_names),
        "class_colors": [list(c) for c in meta.class_colors],
        **georef_to_json(meta.georef),
        "save_probabilities": bool(meta.save_probabilities),
        "save_disagreement": bool(meta.save_disagreement),
        "layers": list(meta.layers),
        "provenance": meta.provenance,
        COMPLETION_KEY: {
            "complete": False,
            "blocks_total": rows * cols,
            "blocks_written": None,
            "finalized_at": None,
        },
    }


def output_layers(attrs: dict[str, Any]) -> list[str]:
    """The layers of an output from its JSON dict; for outputs written before ``layers``
    was recorded, derived from ``save_probabilities``."""
    layers = attrs.get("layers")
    if isinstance(layers, list) and all(isinstance(name, str) for name in layers):
        return list(layers)
    return [MASK, *([PROBABILITIES] if attrs.get("save_probabilities") else [])]
