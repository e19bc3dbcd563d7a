"""What the pipeline needs to know about a model before it reads a pixel. No torch here."""

from __future__ import annotations

from dataclasses import dataclass, field

from tilesegment.errors import GeometryError
from tilesegment.grid import TileRule, nearest_phase_halos, phase_halo

# A qualitative palette (RGB): the first colours of classes without colours of their own
# (:func:`palette` continues it past 16 classes).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
)


def palette(k: int) -> tuple[tuple[int, int, int], ...]:
    """``k`` distinct RGB colours: :data:`PALETTE`, then hues spread by the golden angle
    (each a new hue between the earlier ones) at three alternating lightness/saturation
    steps, so neighbouring class ids stay far apart. Never repeats a colour (k <= 2**24)."""
    import colorsys

    colors = list(PALETTE[:k])
    seen = set(colors)
    steps = ((0.85, 0.95), (0.65, 0.75), (0.95, 0.55))  # (value, saturation)
    i = 1  # hue 0 (pure red) is close to PALETTE's red: start one step on
    while len(colors) < k:
        hue = (i * 0.6180339887498949) % 1.0
        value, sat = steps[i % len(steps)]
        r, g, b = colorsys.hsv_to_rgb(hue, sat, value)
        rgb = (round(r * 255), round(g * 255), round(b * 255))
        while rgb in seen:  # rounding collisions far along: take the next free triple
            n = ((rgb[0] << 16 | rgb[1] << 8 | rgb[2]) + 1) % 2**24
            rgb = (n >> 16, (n >> 8) & 255, n & 255)
        seen.add(rgb)
        colors.append(rgb)
        i += 1
    return tuple(colors)


@dataclass(frozen=True)
class Normalization:
    """How raw pixel values become model input: ``(x - mean) / std`` per band.

    ``mode`` is ``"fixed"`` (``mean``/``std`` given, in raw units), ``"raster"`` (per-band
    mean and standard deviation of the whole raster, nodata excluded, computed out of core),
    or ``"none"`` (values cast to float32 unchanged). Never per tile: neighbouring tiles
    would then disagree at their seams.
    """

    mode: str = "raster"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("fixed", "raster", "none"):
            raise ValueError(f"normalization mode {self.mode!r} unknown")
        if self.mode == "fixed" and (self.mean is None or self.std is None):
            raise ValueError("fixed normalization needs mean and std")


IMAGENET = Normalization("fixed", mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
"""ImageNet statistics in 8-bit units, for backbones pretrained on ImageNet (3 bands)."""


def imagenet_or_raster(c: int) -> Normalization:
    """ImageNet statistics for 3-band input; whole-raster statistics otherwise."""
    return IMAGENET if c == 3 else Normalization("raster")


@dataclass(frozen=True)
class ModelSpec:
    """The model contract's metadata.

    ``forward(float32[N, in_channels, T, T]) -> float32[N, num_classes, T - 2·shrink(T), ...]``
    for every legal ``T`` of ``tile_rule``. ``receptive_radius``: the halo at which tiled
    output equals whole-image output (for valid-convolution models the shrink covers it).
    ``resolution``/``resolution_unit``: the pixel size the model was trained at (µm or m).
    """

    name: str
    in_channels: int
    num_classes: int
    tile_rule: TileRule
    receptive_radius: int
    default_tile: int
    class_names: tuple[str, ...] = ()
    class_colors: tuple[tuple[int, int, int], ...] = ()
    normalization: Normalization = field(default_factory=Normalization)
    resolution: float | None = None
    resolution_unit: str | None = None
    global_context: bool = False
    """The model pools over its whole input (e.g. ASPP image pooling): no halo makes tiled
    output equal whole-image output; ``receptive_radius`` is then only a heuristic."""

    def __post_init__(self) -> None:
        k = self.num_classes
        if not self.class_names:
            object.__setattr__(self, "class_names", tuple(f"class_{i}" for i in range(k)))
        if not self.class_colors:
            object.__setattr__(self, "class_colors", palette(k))
        if len(self.class_names) != k or len(self.class_colors) != k:
            raise ValueError(f"{self.name}: need {k} class names and colours")

    @property
    def valid(self) -> bool:
        """True for valid-convolution models (output smaller than input)."""
        return self.tile_rule.valid_depth > 0

    def check_tile(self, tile: int) -> int:
        """Return the shrink at ``tile``; raise naming the nearest legal size if illegal."""
        if not self.tile_rule.is_legal(tile):
            near = self.tile_rule.nearest_legal(tile)
            raise GeometryError(
                f"tile {tile} is not legal for model {self.name!r} "
                f"({self.tile_rule.describe()}); nearest legal size: {near}")
        return self.tile_rule.shrink(tile)

    @property
    def context_needed(self) -> int:
        """The halo below which tiles lack context: the receptive radius, or for a
        valid-convolution model its shrink (its output pixels have full context)."""
        return self.receptive_radius if not self.valid else 0

    def default_halo(self, tile: int) -> int:
        """Smallest seamless halo at ``tile``: covers the receptive field (or the shrink) and
        is of the model's phase on its output-stride grid, so every tile's pooling grid lies
        where the whole-image pass has it. Raises when ``tile`` leaves no core for it."""
        shrink = self.check_tile(tile)
        rule = self.tile_rule
        halo = phase_halo(max(shrink, self.context_needed), rule.output_stride,
                          rule.halo_phase())
        if tile - 2 * halo <= 0:
            raise GeometryError(
                f"tile {tile} is too small for model {self.name!r}: its seamless halo {halo} "
                f"leaves no core; use --tile {self.smallest_tile(halo)} or more")
        return halo

    def smallest_tile(self, halo: int) -> int:
        """The smallest legal tile whose core at ``halo`` is at least one output stride."""
        rule = self.tile_rule
        stride = rule.output_stride
        side = rule.nearest_legal(2 * halo + stride)
        while side - 2 * halo < stride:
            side = rule.nearest_legal(side + stride)
        return side

    def halo_problem(self, tile: int, halo: int) -> str | None:
        """Why ``halo`` breaks the pooling grid at ``tile`` (``None`` if it does not).

        A halo off the model's phase shifts every tile's pooling grid against the whole-image
        pass: no halo size repairs that, so it is refused rather than warned about."""
        rule = self.tile_rule
        stride, phase = rule.output_stride, rule.halo_phase()
        if stride == 1 or (halo - phase) % stride == 0:
            return None
        good = nearest_phase_halos(halo, stride, phase, self.check_tile(tile))
        good = [h for h in good if tile - 2 * h > 0]
        where = "a multiple of" if phase == 0 else f"{phase} plus a multiple of"
        advice = " or ".join(f"--halo {h}" for h in good) or "a larger --tile"
        return (f"halo {halo} puts the tiles off model {self.name!r}'s pooling grid (output "
                f"stride {stride}; a halo must be {where} {stride}), so tiled output would "
                f"differ from a whole-image pass everywhere; use {advice}")
