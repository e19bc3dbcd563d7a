"""Pure tile geometry: which tiles exist, where their cores and halos lie, which a block needs.

No I/O and no torch. Coordinates are pixels of the raster (= of the output mask), rows first.
Tiles lie on one global grid anchored at the raster origin, so a block's result never
depends on how the output is divided into blocks.

A tile of side ``tile`` fed to a model that loses ``shrink`` pixels per side (0 for
same-padded models) yields an output of side ``tile - 2*shrink``; of it the central
``core = tile - 2*halo`` is kept (``--blend crop``), or all of it is blended (``gaussian``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tilesegment.errors import GeometryError

PAD_MODES = ("reflect", "symmetric", "edge", "constant")
BLEND_MODES = ("crop", "gaussian")
GAUSSIAN_PRESETS = ("tilesegment", "monai", "nnunet")
"""Weight maps of ``gaussian`` (:func:`tilesegment.merge.gaussian.gaussian_weight`); the
first is the default. Spelled ``gaussian:<preset>`` wherever a blend is named."""
BLEND_CHOICES = (*BLEND_MODES, *(f"gaussian:{p}" for p in GAUSSIAN_PRESETS))
"""Every spelling of a blend that ``--blend`` and ``segment(blend=...)`` accept."""


def parse_blend(text: str) -> tuple[str, str]:
    """``(mode, gaussian preset)`` of a blend spelling: ``crop``, ``gaussian`` (the default
    preset) or ``gaussian:<preset>``; a one-line :class:`GeometryError` otherwise."""
    if isinstance(text, str) and text in BLEND_CHOICES:
        mode, _, preset = text.partition(":")
        return mode, preset or GAUSSIAN_PRESETS[0]
    raise GeometryError(f"blend {text!r} unknown; use one of {', '.join(BLEND_CHOICES)}")


@dataclass(frozen=True)
class TileRule:
    """Which square tile sides a model accepts, and what it returns for them.

    ``valid_depth == 0``: legal sides are multiples of ``multiple`` that are at least
    ``minimum``; the output is the input less ``margin`` pixels per side (0: same-padded).
    ``valid_depth > 0``: a valid-convolution U-Net of that many poolings with
    ``convs_per_level`` unpadded 3×3 convolutions per level; a side is legal when every
    pooling sees an even size and nothing shrinks to zero (572 → 388 for depth 4).
    """

    multiple: int = 1
    minimum: int = 1
    valid_depth: int = 0
    convs_per_level: int = 2
    margin: int = 0

    def output_size(self, side: int) -> int | None:
        """Output side for input ``side``, or ``None`` if the side is illegal."""
        if side < self.minimum:
            return None
        if self.valid_depth == 0:
            out = side - 2 * self.margin
            return out if side % self.multiple == 0 and out > 0 else None
        loss = 2 * self.convs_per_level  # each unpadded 3×3 conv loses 1 px per side
        x = side
        for _ in range(self.valid_depth):
            x -= loss
            if x <= 0 or x % 2:
                return None
            x //= 2
        x -= loss
        if x <= 0:
            return None
        for _ in range(self.valid_depth):
            x = 2 * x - loss
        return x if x > 0 else None

    def is_legal(self, side: int) -> bool:
        return self.output_size(side) is not None

    def shrink(self, side: int) -> int:
        """Pixels lost per side at a legal ``side``."""
        out = self.output_size(side)
        if out is None:
            raise GeometryError(f"tile {side} is not legal ({self.describe()})")
        return (side - out) // 2

    def nearest_legal(self, side: int) -> int:
        """The legal side closest to ``side`` (the larger one on a tie)."""
        for delta in range(0, 1 << 16):
            for cand in (side + delta, side - delta):
                if cand >= 1 and self.is_legal(cand):
                    return cand
        raise GeometryError(f"no legal tile size near {side} ({self.describe()})")

    @property
    def output_stride(self) -> int:
        """Shift granularity under which the model's output is shift-equivariant."""
        return self.multiple if self.valid_depth == 0 else 2**self.valid_depth

    def halo_phase(self) -> int:
        """The residue modulo the output stride that every seamless halo has.

        Tile origins sit at ``i·core - halo``; with cores on the stride grid, a halo of this
        phase puts every tile's pooling grid where the whole-image pass has it. Same-padded
        models: 0 (tile origins on the raster's own pooling grid, so one plain pass over the
        raster is the reference). Valid-convolution U-Nets: their output side is never a
        multiple of the stride (572 → 388), so a core on the stride grid forces the halo's
        phase (94 ≡ 14 mod 16 for the paper's net); the reference is then the pass over the
        raster mirror-padded by a halo of that phase.
        """
        stride = self.output_stride
        if self.valid_depth == 0:
            return 0
        first = self.nearest_legal(max(self.minimum, 1))
        shrink = self.shrink(first)
        for halo in range(shrink, shrink + stride):
            if (first - 2 * halo) % stride == 0:
                return halo % stride
        raise GeometryError(f"no halo puts the cores of this model on its stride grid "
                            f"({self.describe()})")

    def describe(self) -> str:
        if self.valid_depth == 0:
            return f"a multiple of {self.multiple}, at least {self.minimum}"
        first = self.nearest_legal(max(self.minimum, 1))
        step = self.output_stride
        return (f"valid convolutions: {first} + {step}·k "
                f"(e.g. {first + 22 * step} → {self.output_size(first + 22 * step)})")


@dataclass(frozen=True)
class TileSpec:
    """How the raster is cut: tile side, halo, pixels the model loses, pad and blend mode."""

    tile: int
    halo: int
    shrink: int = 0
    pad_mode: str = "reflect"
    blend: str = "crop"
    blend_margin: int = 0
    """``gaussian`` only: output pixels on each side of a tile's output that are left out of
    the blend because they lack full context (the receptive radius less the shrink)."""
    blend_preset: str = GAUSSIAN_PRESETS[0]
    """``gaussian`` only: the weight map (one of :data:`GAUSSIAN_PRESETS`)."""

    def __post_init__(self) -> None:
        if self.pad_mode not in PAD_MODES:
            raise GeometryError(f"pad mode {self.pad_mode!r} unknown; use one of {PAD_MODES}")
        if self.blend not in BLEND_MODES:
            raise GeometryError(f"blend {self.blend!r} unknown; use one of {BLEND_MODES}")
        if self.blend_preset not in GAUSSIAN_PRESETS:
            raise GeometryError(f"gaussian preset {self.blend_preset!r} unknown; use one of "
                                f"{GAUSSIAN_PRESETS}")
        if self.halo < self.shrink:
            raise GeometryError(
                f"halo {self.halo} is smaller than the model's shrink {self.shrink}; "
                f"use --halo {self.shrink} or more")
        if not 0 <= self.blend_margin <= self.halo - self.shrink:
            raise GeometryError(
                f"blend margin {self.blend_margin} must lie in [0, halo - shrink = "
                f"{self.halo - self.shrink}]: a tile's blended region must hold its core")
        if self.core <= 0:
            raise GeometryError(
                f"halo {self.halo} leaves no core in a tile of {self.tile}: "
                f"need 2·halo < tile (halo ≤ {(self.tile - 1) // 2})")

    @property
    def core(self) -> int:
        """Side of the kept centre of each tile."""
        return self.tile - 2 * self.halo

    @property
    def out_side(self) -> int:
        """Side of the model's output for one tile."""
        return self.tile - 2 * self.shrink

    @property
    def blend_side(self) -> int:
        """Side of the part of each tile's output that ``gaussian`` blends."""
        return self.out_side - 2 * self.blend_margin

    def footprint(self) -> int:
        """How far a tile's used output reaches past its core on each side."""
        return 0 if self.blend == "crop" else self.halo - self.shrink - self.blend_margin


@dataclass(frozen=True)
class Tile:
    """One tile of the global grid: index ``(i, j)`` and its input window origin.

    The input window is ``[row, row + tile) × [col, col + tile)`` in raster coordinates and may
    reach outside the raster (filled by the pad mode). Its output starts at
    ``(row + shrink, col + shrink)``. A training tile drawn off the grid
    (:meth:`tilesegment.split.Splitter.random_tiles`) has ``i = j = -1``.
    """

    i: int
    j: int
    row: int
    col: int


def grid_shape(shape: tuple[int, int], spec: TileSpec) -> tuple[int, int]:
    """Number of tile rows and columns covering a raster of ``shape`` ``(H, W)``."""
    h, w = shape
    return -(-h // spec.core), -(-w // spec.core)


def tiles_for_window(
    shape: tuple[int, int], spec: TileSpec, window: tuple[int, int, int, int]
) -> list[Tile]:
    """Tiles whose used output overlaps ``window`` ``(r0, r1, c0, c1)``, in global row-major order.

    For ``crop`` that is the tiles whose core overlaps; for ``gaussian`` the tiles whose whole
    output (core plus ``halo - shrink`` each side) overlaps.
    """
    r0, r1, c0, c1 = window
    n_i, n_j = grid_shape(shape, spec)
    reach = spec.footprint()
    c = spec.core

    def span(lo: int, hi: int, n: int) -> range:
        first = max(0, (lo - reach) // c - (1 if reach else 0))
        last = min(n - 1, (hi - 1 + reach) // c)
        return range(first, last + 1)

    out = []
    for i in span(r0, r1, n_i):
        for j in span(c0, c1, n_j):
            ro0, ro1 = i * c - reach, (i + 1) * c + reach
            co0, co1 = j * c - reach, (j + 1) * c + reach
            if ro0 < r1 and ro1 > r0 and co0 < c1 and co1 > c0:
                out.append(Tile(i, j, i * c - spec.halo, j * c - spec.halo))
    return out


def iter_blocks(
    shape: tuple[int, int], block: tuple[int, int]
) -> Iterator[tuple[int, int, int, int]]:
    """Output blocks ``(r0, r1, c0, c1)`` in row-major order; edge blocks are smaller."""
    h, w = shape
    bh, bw = block
    for r0 in range(0, h, bh):
        for c0 in range(0, w, bw):
            yield r0, min(r0 + bh, h), c0, min(c0 + bw, w)


def default_block(spec: TileSpec, target: int = 1024) -> tuple[int, int]:
    """A square block that is a whole number of cores, near ``target`` pixels on a side.

    Blocks that are whole numbers of cores never compute a tile twice under ``crop``.
    """
    k = max(1, round(target / spec.core))
    return k * spec.core, k * spec.core


def phase_halo(at_least: int, stride: int, phase: int = 0) -> int:
    """Smallest halo ≥ ``at_least`` that is ``phase`` modulo ``stride``.

    Models with pooling are shift-equivariant only for shifts that are multiples of their
    output stride. Tiles start at ``i·core - halo``; with the core a multiple of the stride
    and the halo of the model's phase (:meth:`TileRule.halo_phase`), every tile sees the
    pooling grid the whole-image pass sees, so tiled output can equal it.
    """
    at_least = max(0, at_least)
    return at_least + (phase - at_least) % stride


def nearest_phase_halos(halo: int, stride: int, phase: int, at_least: int = 0) -> list[int]:
    """The good halos (``phase`` mod ``stride``, ≥ ``at_least``) just below and above ``halo``."""
    above = phase_halo(max(halo, at_least), stride, phase)
    below = above - stride
    return [h for h in (below, above) if h >= max(at_least, 0)]
