"""Measure a model's receptive field by probing: which input pixels move one output pixel."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def measure_receptive_radius(
    model: nn.Module, in_channels: int, side: int, shrink: int = 0, draws: int = 3,
    phases: int = 1, seed: int = 0,
) -> int:
    """Largest |offset| between an output pixel and an input pixel it depends on.

    Back-propagates from single output pixels (``phases`` neighbouring positions, to cover
    pooling phases) through ``draws`` random inputs of ``(1, in_channels, side, side)`` and
    takes the union of non-zero input gradients. ``side`` must be legal for the model and
    larger than twice the receptive field, or the measure is cut off by the tile border.
    """
    gen = torch.Generator().manual_seed(seed)
    model = model.eval()
    reach = 0
    out_side = side - 2 * shrink
    centre = out_side // 2
    for _ in range(draws):
        x = torch.randn(1, in_channels, side, side, generator=gen, requires_grad=True)
        y = model(x)
        for p in range(phases):
            oy = ox = centre + p
            grad, = torch.autograd.grad(y[0, :, oy, ox].sum(), x, retain_graph=True)
            rows, cols = np.nonzero(grad[0].abs().sum(0).numpy())
            if rows.size:
                iy, ix = oy + shrink, ox + shrink
                reach = max(reach, int(np.abs(rows - iy).max()), int(np.abs(cols - ix).max()))
    return reach
