"""Receptive radii derived from a network's layer list, without torch.

A network is described, input to output, as a list of steps: :class:`Conv` (a convolution
or a pooling window: kernel, stride, padding, dilation), :class:`Up` (nearest-neighbour
upsampling by an integer factor to exactly ``factor ×`` the size, as ``F.interpolate(...,
mode="nearest")`` does then) and :class:`Branches` (parallel paths whose outputs are added
or concatenated: a residual block, a U-Net skip) and :class:`Bilinear` (upsampling by an
integer factor with ``align_corners=False``). :func:`support` walks the list backwards
from output pixels ``[lo, hi]`` (one axis; the nets are square) to the input pixels they
may depend on; :func:`receptive_radius` takes the worst output pixel over every phase of
the output stride. Supports are exact bounds: every tap counts, whatever its weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Conv:
    """A ``kernel``-wide window (convolution or pooling) of ``stride``, ``pad``, ``dilation``."""

    kernel: int
    stride: int = 1
    pad: int = 0
    dilation: int = 1


@dataclass(frozen=True)
class Up:
    """Nearest-neighbour upsampling by ``factor``: output ``o`` reads input ``o // factor``."""

    factor: int


@dataclass(frozen=True)
class Bilinear:
    """Bilinear upsampling by ``factor`` (``align_corners=False``): output ``o`` sits on
    input coordinate ``(o + ½)/factor - ½`` and reads the two pixels around it (at the
    border the outer one is clamped to the edge, which only narrows the support)."""

    factor: int


@dataclass(frozen=True)
class Branches:
    """Parallel paths from one input, merged (sum or concatenation); each a step list."""

    paths: tuple[tuple[Step, ...], ...]


Step = Conv | Up | Bilinear | Branches


def support(steps: Sequence[Step], lo: int, hi: int) -> tuple[int, int]:
    """Input pixels ``[lo', hi']`` that output pixels ``[lo, hi]`` of ``steps`` may read."""
    for step in reversed(steps):
        if isinstance(step, Conv):
            s, p = step.stride, step.pad
            lo, hi = s * lo - p, s * hi - p + step.dilation * (step.kernel - 1)
        elif isinstance(step, Up):
            lo, hi = lo // step.factor, hi // step.factor
        elif isinstance(step, Bilinear):
            f2 = 2 * step.factor  # floor((o + ½)/f - ½) = floor((2o + 1 - f) / 2f)
            lo, hi = (2 * lo + 1 - step.factor) // f2, (2 * hi + 1 - step.factor) // f2 + 1
        else:
            ends = [support(path, lo, hi) for path in step.paths]
            lo, hi = min(e[0] for e in ends), max(e[1] for e in ends)
    return lo, hi


def output_stride(steps: Sequence[Step]) -> int:
    """How many input pixels one output pixel advances by (strides over upsamplings)."""
    num, den = 1, 1
    for step in steps:
        if isinstance(step, Conv):
            num *= step.stride
        elif isinstance(step, Up | Bilinear):
            den *= step.factor
        else:
            strides = {output_stride(path) for path in step.paths}
            if len(strides) != 1:
                raise ValueError(f"branches of different strides: {sorted(strides)}")
            num *= strides.pop()
    if num % den:
        raise ValueError(f"output stride {num}/{den} is not a whole number")
    return num // den


def receptive_radius(steps: Sequence[Step], period: int) -> int:
    """Largest distance between an output pixel and an input pixel it may depend on, over
    ``period`` consecutive output pixels (the phases of the deepest pooling grid: the
    pattern repeats with it, so these cover every pixel)."""
    reach = 0
    for x in range(period):
        lo, hi = support(steps, x, x)
        reach = max(reach, x - lo, hi - x)
    return reach
