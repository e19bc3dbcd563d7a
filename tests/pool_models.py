"""A ``package.module:function`` model for the model-pool tests: each call of :func:`build`
appends this process's pid to the file ``$TILESEGMENT_TEST_BUILDS``, so builds are counted
from outside the code under test."""

from __future__ import annotations

import os

import torch
from torch import nn


def build(in_channels: int, num_classes: int) -> nn.Module:
    """A seeded 1×1 convolution ``float32[N, C, T, T]`` → ``float32[N, K, T, T]``."""
    with open(os.environ["TILESEGMENT_TEST_BUILDS"], "a") as f:
        f.write(f"{os.getpid()}\n")
    torch.manual_seed(7)
    return nn.Conv2d(in_channels, num_classes, 1)
