"""``package.module:function`` models for the resume and fault tests, watched from outside.

The input (:func:`write_positions`) carries each pixel's position: band 0 its row, band 1
its column (float32, ``--normalize none``), so a tile's top-left pixel names it. Each model
call appends one line per tile, ``<row> <col> <pid>``, to the file ``$TS_CALL_LOG`` (when set),
sleeps ``$TS_CALL_SLEEP`` seconds (default 0), calls ``os._exit(1)`` when band 2 of a
tile holds :data:`CRASH` (a block that kills its worker every time), and raises when it
holds :data:`FAULT` while ``$TS_FAULT`` is set (a model error, fixed by unsetting it). The
output is a seeded 1×1 convolution: ``float32[N, 3, T, T]`` → ``float32[N, 2, T, T]``.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

CRASH = -7.0
"""A band-2 value that makes the model end its process."""
FAULT = -9.0
"""A band-2 value that makes the model raise (while ``$TS_FAULT`` is set)."""


class Watched(nn.Module):
    """A 1×1 convolution that logs each tile's top-left position (see the module doc)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.conv = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        real = [n for n in range(len(x)) if bool(x[n].abs().sum() > 0)]  # not the probe
        if real:
            if any(bool((x[n, 2] == CRASH).any()) for n in real):
                os._exit(1)
            if os.environ.get("TS_FAULT") and any(bool((x[n, 2] == FAULT).any())
                                                  for n in real):
                raise RuntimeError("model fault at the marker")
            log = os.environ.get("TS_CALL_LOG")
            if log:
                with open(log, "a") as f:
                    f.writelines(f"{int(x[n, 0, 0, 0])} {int(x[n, 1, 0, 0])} {os.getpid()}\n"
                                 for n in real)
            time.sleep(float(os.environ.get("TS_CALL_SLEEP", "0")))
        return self.conv(x)


def build(in_channels: int, num_classes: int) -> nn.Module:
    return Watched(in_channels, num_classes)
