"""U-Net receptive-field arithmetic, without torch (the registry needs it at import)."""

from __future__ import annotations


def unet_receptive_field(depth: int, convs_per_level: int = 2) -> int:
    """Side of the receptive field of one output pixel, by the usual size/jump recurrence.

    Each 3×3 conv at jump ``j`` adds ``2j``; each 2×2 pool adds ``j`` and doubles ``j``; the
    2×2 stride-2 up-convolutions map each output pixel to one input pixel (they add nothing).
    """
    size, jump = 1, 1
    for _ in range(depth):
        size += 2 * jump * convs_per_level + jump
        jump *= 2
    size += 2 * jump * convs_per_level
    for _ in range(depth):
        jump //= 2
        size += 2 * jump * convs_per_level
    return size


def unet_receptive_radius(depth: int, convs_per_level: int = 2) -> int:
    """How far from an output pixel its inputs may lie, whatever its pooling phase.

    Half the field plus the phase offset of the coarsest pooling (``2^(depth-1) - 1``); the
    tests check this bound against :func:`tilesegment.models.probe.measure_receptive_radius`.
    """
    phase = 2 ** (depth - 1) - 1 if depth else 0
    return unet_receptive_field(depth, convs_per_level) // 2 + phase
