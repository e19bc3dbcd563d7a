"""Whole-slide formats tifffile cannot read (NDPI, MRXS, SCN, VMS, BIF...) through OpenSlide.

``openslide-python`` with the ``openslide-bin`` wheel (the ``slides`` extra; no system
library needed). :mod:`tilesegment.read.dispatch` picks this reader for those suffixes and
for a TIFF that tifffile cannot decode but OpenSlide recognises.

OpenSlide returns RGBA. Pixels with alpha 0 (outside the scanned area, e.g. between MRXS
regions) become the slide's background colour (``openslide.background-color``, white when
the slide does not say); partly transparent ones are blended onto it:
``round(rgb·a/255 + background·(1 - a/255))``. The result is ``uint8 (3, h, w)``.

OpenSlide addresses a region by its level-0 position. On a level whose downsample is a whole
number that is exact; on one whose downsample is not (e.g. 4.016 when a level's size was
rounded), OpenSlide resamples by the fractional offset, so this reader reads such a level in
fixed :data:`CHUNK`-px chunks: a pixel's value never depends on the window asked for.

Damaged input follows the other readers' rules: an error OpenSlide reports (at open or while
decoding a region) becomes one line naming the file, level and window; nothing is zero-filled.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

from tilesegment.read import validate
from tilesegment.read.base import Georef, LevelInfo, Raster, Window, check_window

SUFFIXES = frozenset({".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif"})
"""Files read with OpenSlide whatever else could open them."""

CHUNK = 512
"""Side of the chunks a level with a fractional downsample is read in."""

EXTRA_HINT = "pip install 'tilesegment[slides]' (openslide-python and openslide-bin)"


def openslide_module(path: str | Path) -> Any:
    """The ``openslide`` module; an :class:`~tilesegment.errors.InputError` naming the
    ``slides`` extra when it (or its library) is missing."""
    try:
        import openslide
    except (ImportError, OSError) as exc:
        raise validate.unsupported(
            path, f"reading this slide needs OpenSlide, which is not installed ({exc}): "
            f"{EXTRA_HINT}") from exc
    return openslide


def openslide_vendor(path: str | Path) -> str | None:
    """The OpenSlide vendor that recognises ``path`` (``"aperio"``, ``"generic-tiff"``…),
    or ``None`` (also when OpenSlide is not installed)."""
    try:
        import openslide
    except (ImportError, OSError):
        return None
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:
        return None


def _background(properties: Any) -> np.ndarray:
    """The background colour ``uint8 (3,)`` (``openslide.background-color``, else white)."""
    text = properties.get("openslide.background-color")
    try:
        return np.array([int(text[i:i + 2], 16) for i in (0, 2, 4)], np.float64)
    except (TypeError, ValueError, IndexError):
        return np.array([255.0, 255.0, 255.0])


def rgba_to_rgb(rgba: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``uint8 (h, w, 4)`` (un-premultiplied, as openslide-python returns it) → ``uint8
    (3, h, w)`` over ``background`` ``(3,)``: alpha 0 → the background, 255 → as is."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if (alpha == 255).all():
        return np.ascontiguousarray(np.moveaxis(rgb, -1, 0))
    a = alpha.astype(np.float64)[..., None] / 255.0
    mixed = np.rint(rgb * a + background * (1.0 - a))
    return np.ascontiguousarray(np.moveaxis(mixed.astype(np.uint8), -1, 0))


class OpenSlideRaster(Raster):
    """One level of a slide read with OpenSlide: ``uint8 (3, H, W)`` RGB.

    ``georef.pixel_size`` in µm from ``openslide.mpp-y``/``mpp-x`` scaled by each level's
    size ratio to level 0 (``None`` when the slide does not record it).
    """

    def __init__(self, path: str | Path, level: int = 0) -> None:
        self._path = Path(path)
        self.source = str(path)
        self.kind = "slide"
        self.nodata = None
        self.dtype = np.dtype(np.uint8)
        self._local = threading.local()
        slide = self._open()
        try:
            self._init_from(slide, level)
        except BaseException:
            slide.close()
            raise
        self._local.slide = slide

    def _open(self) -> Any:
        openslide = openslide_module(self._path)
        if not self._path.exists():
            raise validate.unsupported(self._path, "file not found")
        try:
            return openslide.OpenSlide(str(self._path))
        except openslide.OpenSlideUnsupportedFormatError as exc:
            suffix = self._path.suffix.lower()
            if suffix in SUFFIXES and validate.is_tiff(self._path):
                validate.check_tiff_header(self._path)
                raise validate.damaged(
                    self._path, f"a TIFF-based {suffix[1:].upper()} slide that OpenSlide "
                    f"cannot read: truncated or damaged{_detail(exc)}") from exc
            raise validate.unsupported(
                self._path, "not a slide format OpenSlide reads (NDPI, MRXS, SCN, VMS, "
                f"BIF, SVS, generic tiled TIFF…){_detail(exc)}") from exc
        except (openslide.OpenSlideError, OSError, ValueError) as exc:
            raise validate.damaged(self._path, f"OpenSlide cannot open it: {exc}") from exc

    def _init_from(self, slide: Any, level: int) -> None:
        n = slide.level_count
        if not 0 <= level < n:
            raise validate.unsupported(
                self._path, f"level {level} does not exist: the slide has {n} level(s), "
                f"0 to {n - 1}")
        props = slide.properties
        self.level = level
        self.format = props.get("openslide.vendor", "unknown")
        self._background = _background(props)
        w0, h0 = slide.level_dimensions[0]
        try:
            mpp = (float(props["openslide.mpp-y"]), float(props["openslide.mpp-x"]))
            if not all(math.isfinite(v) and v > 0 for v in mpp):
                mpp = None
        except (KeyError, ValueError):
            mpp = None
        infos = []
        for w, h in slide.level_dimensions:
            size = (mpp[0] * h0 / h, mpp[1] * w0 / w) if mpp else None
            infos.append(LevelInfo(shape=(int(h), int(w)), pixel_size=size))
        self.levels = tuple(infos)
        width, height = slide.level_dimensions[level]
        self.shape = (3, int(height), int(width))
        self._downsample = float(slide.level_downsamples[level])
        self._exact = self._downsample == round(self._downsample)
        try:
            self.block_shape = (int(props[f"openslide.level[{level}].tile-height"]),
                                int(props[f"openslide.level[{level}].tile-width"]))
        except (KeyError, ValueError):
            self.block_shape = None
        pixel_size = self.levels[level].pixel_size
        self.georef = Georef(pixel_size=pixel_size, unit="um" if pixel_size else None)

    def _slide(self) -> Any:
        slide = getattr(self._local, "slide", None)
        if slide is None:
            slide = self._open()
            self._local.slide = slide
        return slide

    def close(self) -> None:
        """Close this thread's slide handle (reopened on the next read)."""
        slide = getattr(self._local, "slide", None)
        if slide is not None:
            slide.close()
            self._local.slide = None

    def at_level(self, level: int) -> Raster:
        """The same slide opened at pyramid ``level``."""
        return self if level == self.level else OpenSlideRaster(self._path, level)

    def _region(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """``uint8 (h, w, 4)`` of this level, read at the level-0 position of ``(r0, c0)``;
        an OpenSlide error becomes a one-line :class:`DamagedInputError`."""
        slide = self._slide()
        ds = self._downsample
        location = (round(c0 * ds), round(r0 * ds))
        try:
            image = slide.read_region(location, self.level, (c1 - c0, r1 - r0))
            return np.asarray(image)
        except Exception as exc:
            self.close()  # an OpenSlide handle that failed once stays failed
            raise validate.damaged(
                self._path, f"level {self.level}: rows {r0}:{r1}, cols {c0}:{c1} cannot be "
                f"read by OpenSlide ({type(exc).__name__}: {exc})") from exc

    def read(self, window: Window) -> np.ndarray:
        """Read ``window`` as ``uint8 (3, h, w)`` RGB (see the module's note on alpha)."""
        r0, r1, c0, c1 = check_window(self, window)
        if r1 == r0 or c1 == c0:
            return np.empty((3, r1 - r0, c1 - c0), np.uint8)
        if self._exact:
            return rgba_to_rgb(self._region(r0, r1, c0, c1), self._background)
        out = np.empty((3, r1 - r0, c1 - c0), np.uint8)
        h, w = self.height, self.width
        for top in range(r0 // CHUNK * CHUNK, r1, CHUNK):
            for left in range(c0 // CHUNK * CHUNK, c1, CHUNK):
                bottom, right = min(top + CHUNK, h), min(left + CHUNK, w)
                chunk = rgba_to_rgb(self._region(top, bottom, left, right), self._background)
                y0, y1, x0, x1 = max(top, r0), min(bottom, r1), max(left, c0), min(right, c1)
                out[:, y0 - r0:y1 - r0, x0 - c0:x1 - c0] = chunk[:, y0 - top:y1 - top,
                                                                  x0 - left:x1 - left]
        return out

    def describe(self) -> dict[str, Any]:
        """Base metadata plus ``format`` (OpenSlide's vendor) and ``reader``."""
        info = super().describe()
        info.update(format=self.format, reader="openslide")
        return info


def _detail(exc: BaseException) -> str:
    text = str(exc).strip()
    return f" ({text})" if text else ""
