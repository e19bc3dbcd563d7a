"""Small synthetic labelled rasters for the trainer's tests."""

from __future__ import annotations

import numpy as np


def discs(height: int = 96, width: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``float32 (1, H, W)`` bright discs (+1) on Gaussian noise (σ 0.3) and their labels
    ``uint8 (H, W)`` (1 inside a disc)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    image = rng.normal(0, 0.3, (height, width)).astype(np.float32)
    labels = np.zeros((height, width), np.uint8)
    for _ in range(height * width // 600):
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(4, 9)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        labels[inside] = 1
    image[labels == 1] += 1.0
    return image[None], labels
