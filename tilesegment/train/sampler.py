"""Training tiles through the inference splitter, and their augmentation.

Every tile comes from :meth:`Splitter.random_tiles` / :meth:`Splitter.training_pair`: the
pixels, padding and normalisation inference feeds the model, and the label crop aligned with
the model's output (``shrink`` px inside the tile for a valid-convolution net). A tile's
whole *input* lies in its pair's training window, so no pixel of a validation window ever
reaches the model during training. ``scale`` reads a source window of ``round(T / s)`` px
(``s`` in [0.7, 1.5]) and resamples it to ``T`` (image: area when shrinking, bilinear when
enlarging; labels: nearest), then cuts the output's labels from the resampled labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tilesegment.grid import Tile, TileSpec
from tilesegment.split import Splitter
from tilesegment.train.data import IGNORE, Pair, Window

AUGMENTATIONS = ("flip", "rot90", "scale", "intensity")
SCALE_RANGE = (0.7, 1.5)


@dataclass(frozen=True)
class Drawn:
    """One sampled tile: its pair, the window its input was read from ``(r0, r1, c0, c1)``
    and the scale it was resampled by."""

    pair: int
    window: Window
    scale: float


def parse_augment(value: str | tuple[str, ...] | None) -> tuple[str, ...]:
    """``"flip,rot90"`` → ``("flip", "rot90")``; unknown names are a :class:`SettingError`."""
    from tilesegment.errors import SettingError

    if not value:
        return ()
    names = tuple(v.strip() for v in (value.split(",") if isinstance(value, str) else value)
                  if v.strip())
    bad = [n for n in names if n not in AUGMENTATIONS]
    if bad:
        raise SettingError(f"--augment {', '.join(bad)} unknown; choose from "
                           f"{', '.join(AUGMENTATIONS)}")
    return names


class TileSampler:
    """Draws batches ``(x float32 (N, C, T, T), y int64 (N, o, o))`` from ``pairs``.

    ``spec``: the model's training geometry (tile ``T``, ``shrink``); ``norms``: per pair
    ``(mean, std)`` or ``(None, None)``; ``foreground``: per pair the (row, col) positions of
    non-background pixels in its training window (for ``foreground_bias``).
    """

    def __init__(self, pairs: list[Pair], spec: TileSpec, norms: list[tuple], *,
                 augment: tuple[str, ...] = (), foreground_bias: float = 0.0,
                 foreground: list[np.ndarray] | None = None) -> None:
        self.pairs = pairs
        self.spec = spec
        self.norms = norms
        self.augment = augment
        self.foreground_bias = foreground_bias
        self.foreground = foreground or [np.zeros((0, 2), np.int64) for _ in pairs]
        self.drawn: list[Drawn] = []
        self.record = False
        self._splitters: dict[tuple[int, int], Splitter] = {}
        usable = [i for i, p in enumerate(pairs) if p.train is not None]
        self.usable = usable
        areas = np.array([_area(pairs[i].train) for i in usable], np.float64)
        self.weights = areas / areas.sum()

    def splitter(self, index: int, side: int) -> Splitter:
        """The splitter of pair ``index``: the model's geometry for side ``T``; for another
        side (a scaled read) one whose output is the whole tile."""
        key = (index, side)
        if key not in self._splitters:
            spec = self.spec if side == self.spec.tile else TileSpec(
                tile=side, halo=0, shrink=0, pad_mode=self.spec.pad_mode)
            mean, std = self.norms[index]
            self._splitters[key] = Splitter(self.pairs[index].image, spec, mean, std)
        return self._splitters[key]

    def batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for _ in range(n):
            x, y = self.one(rng)
            xs.append(x)
            ys.append(y)
        return np.stack(xs), np.stack(ys)

    def one(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One augmented ``(x (C, T, T), y (o, o))``."""
        index = self.usable[int(rng.choice(len(self.usable), p=self.weights))]
        pair = self.pairs[index]
        t, s = self.spec.tile, self.spec.shrink
        scale = 1.0
        if "scale" in self.augment:
            scale = float(rng.uniform(*SCALE_RANGE))
        side = t if scale == 1.0 else round(t / scale)
        r0, r1, c0, c1 = pair.train
        if r1 - r0 < side or c1 - c0 < side:
            side = min(r1 - r0, c1 - c0)  # a scaled read larger than the region: shrink it
            if side < t:
                side = t
        splitter = self.splitter(index, side)
        shrink = splitter.spec.shrink
        tile = self._position(rng, index, side, shrink)
        x, y = splitter.training_pair(tile, pair.labels, ignore_index=IGNORE, region=pair.train)
        if self.record:
            self.drawn.append(Drawn(index, (tile.row, tile.row + side, tile.col,
                                            tile.col + side), t / side))
        if side != t:
            x, y = _resample(x, y, t)
            y = y[s:t - s, s:t - s]
        if "flip" in self.augment:
            if rng.random() < 0.5:
                x, y = x[:, ::-1], y[::-1]
            if rng.random() < 0.5:
                x, y = x[:, :, ::-1], y[:, ::-1]
        if "rot90" in self.augment:
            k = int(rng.integers(0, 4))
            x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k)
        if "intensity" in self.augment:
            x = _intensity(rng, x)
        return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y, np.int64)

    def _position(self, rng: np.random.Generator, index: int, side: int, shrink: int) -> Tile:
        """A tile of ``side`` whose whole input lies in the pair's training window: centred
        on a foreground pixel with probability ``foreground_bias`` (moved inside the window),
        otherwise uniform (:meth:`Splitter.random_tiles` with the window shrunk by
        ``shrink``, so the output lies ``shrink`` inside it)."""
        r0, r1, c0, c1 = self.pairs[index].train
        if r1 - r0 < side or c1 - c0 < side:
            from tilesegment.errors import SettingError

            raise SettingError(
                f"the training region {r1 - r0}×{c1 - c0} px of {self.pairs[index].name} is "
                f"smaller than a training tile of {side} px: use a smaller --tile or a "
                "smaller --val-fraction")
        fg = self.foreground[index]
        if self.foreground_bias > 0 and len(fg) and rng.random() < self.foreground_bias:
            y, x = fg[int(rng.integers(0, len(fg)))]
            top = int(np.clip(y - side // 2, r0, r1 - side))
            left = int(np.clip(x - side // 2, c0, c1 - side))
            return Tile(-1, -1, top, left)
        inner = (r0 + shrink, r1 - shrink, c0 + shrink, c1 - shrink)
        return self.splitter(index, side).random_tiles(rng, 1, region=inner)[0]


def _area(window: Window) -> int:
    return (window[1] - window[0]) * (window[3] - window[2])


def _resample(x: np.ndarray, y: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``(C, S, S)`` → ``(C, side, side)`` (area when shrinking, bilinear when
    enlarging) and labels ``(S, S)`` → ``(side, side)`` by nearest neighbour (pixel centres)."""
    src = torch.from_numpy(np.ascontiguousarray(x))[None]
    if x.shape[-1] > side:
        out = F.interpolate(src, size=(side, side), mode="area")
    else:
        out = F.interpolate(src, size=(side, side), mode="bilinear", align_corners=False)
    n = y.shape[0]
    idx = np.minimum(((np.arange(side) + 0.5) * n / side).astype(np.int64), n - 1)
    return out[0].numpy(), y[idx][:, idx]


def _intensity(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """A random gamma (on the tile's own min–max range), gain and offset, in normalised
    units (so independent of the raster's dtype)."""
    gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.5))))
    gain = float(rng.uniform(0.8, 1.25))
    offset = float(rng.uniform(-0.2, 0.2))
    lo, hi = float(x.min()), float(x.max())
    if hi > lo:
        x = ((x - lo) / (hi - lo)) ** gamma * (hi - lo) + lo
    return (x * gain + offset).astype(np.float32)
