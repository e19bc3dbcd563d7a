"""Fixtures for the reader tests: small real files written in ``tmp_path`` (no mocks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.read.read_helpers import NODATA, Written, write_geotiff, write_pyramid


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def geotiff(tmp_path: Path, rng: np.random.Generator) -> Written:
    """3-band float32 GeoTIFF 100×130 with nodata pixels and overviews ×2, ×4."""
    data = rng.random((3, 100, 130), dtype=np.float32) * 100
    data[:, :5, :7] = NODATA
    path = write_geotiff(tmp_path / "scene.tif", data, overviews=(2, 4))
    return Written(path, [data])


@pytest.fixture
def rgb_pyramid(tmp_path: Path, rng: np.random.Generator) -> Written:
    """RGB uint8 pyramid 120×160 → 60×80 → 30×40 at 0.25, 0.5, 1.0 µm."""
    base = rng.integers(0, 256, (3, 120, 160), dtype=np.uint8)
    return write_pyramid(tmp_path / "slide.tif", base)


@pytest.fixture
def float_pyramid(tmp_path: Path, rng: np.random.Generator) -> Written:
    """2-band planar float32 pyramid 240×192 → 120×96 → 60×48 at 0.25, 0.5, 1.0 µm."""
    base = rng.random((2, 240, 192), dtype=np.float32)
    return write_pyramid(tmp_path / "float.tif", base)
