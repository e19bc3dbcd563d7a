"""Test-time augmentation: the transforms ``--tta`` averages a model over.

Each transform is ``(k, flip)``: flip the tile left–right when ``flip``, then turn it ``k``
quarter turns (``rot90`` in the (row, column) plane). ``flips`` is the identity and the
horizontal, vertical and both-way flips (4 model passes per tile); ``d4`` adds the quarter
turns and the two transposes: the 8 symmetries of the square. The model's output is mapped
back by the inverse transform, and the outputs of one tile are averaged in probability
space (softmax, mean) before the tile is merged (:class:`tilesegment.infer.Predictor`).

A model that loses ``shrink`` pixels per side returns the centred ``tile - 2·shrink``
square, which every symmetry of the square maps onto itself: the inverse transform puts
each output pixel back where it belongs. Rotations need square tiles (all tiles here are).

No torch import: the transforms use tensor methods (``flip``, ``rot90``) and run on
whatever tensors the predictor holds.
"""

from __future__ import annotations

from typing import Any

from tilesegment.errors import SettingError

TTA_MODES = ("none", "flips", "d4")
"""``--tta`` choices."""

TRANSFORMS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    # identity, left–right (h), up–down (v = flip then a half turn), both (hv = a half turn)
    "flips": ((0, False), (0, True), (2, True), (2, False)),
    "d4": ((0, False), (0, True), (2, True), (2, False),
           (1, False), (3, False), (1, True), (3, True)),
}
"""Mode → its transforms ``(quarter turns, flip left–right first)``."""


def check_tta(tta: Any) -> str:
    """``tta`` if it names a mode, else a one-line :class:`SettingError`."""
    if tta not in TTA_MODES:
        raise SettingError(f"tta must be one of {', '.join(TTA_MODES)}, not {tta!r}")
    return tta


def passes(tta: str) -> int:
    """Model passes per tile under ``tta`` (1, 4 or 8)."""
    return len(TRANSFORMS[check_tta(tta)])


def forward(x: Any, transform: tuple[int, bool]) -> Any:
    """``x`` ``(..., H, W)`` transformed: flipped left–right if asked, then turned."""
    k, flip = transform
    if flip:
        x = x.flip(-1)
    return x.rot90(k, (-2, -1)) if k else x


def inverse(y: Any, transform: tuple[int, bool]) -> Any:
    """Undo :func:`forward` on a model output ``y`` ``(..., H', W')``."""
    k, flip = transform
    if k:
        y = y.rot90(-k, (-2, -1))
    return y.flip(-1) if flip else y


def check_square(shape: tuple[int, ...], tta: str) -> None:
    """Quarter turns need square tiles: a one-line :class:`SettingError` otherwise."""
    h, w = shape[-2:]
    if tta == "d4" and h != w:
        raise SettingError(f"--tta d4 turns tiles by 90° and needs square tiles, not "
                           f"{h} × {w}; use --tta flips")
