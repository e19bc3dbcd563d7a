"""Whole-slide and microscopy TIFFs (SVS, OME-TIFF, pyramidal TIFF) read with tifffile.

The reader picks one pyramid level ``series[0].levels[N]`` and reads a window by decoding
only the TIFF blocks (tiles or strips) it covers, in the calling thread. Each thread owns
its own :class:`tifffile.TiffFile` (kept in ``self._local``), so reads never share a file
position and decoding runs in parallel. A block that is missing, cut short or cannot be
decoded raises :class:`~tilesegment.errors.DamagedInputError` naming the block: the reader
never returns a zero-filled hole (tifffile's Zarr store fills missing blocks with zeros).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from tilesegment.read import tiffmeta, validate
from tilesegment.read.base import Georef, LevelInfo, Raster, Window, check_window

#: Axes that may hold the bands of a slide, besides the TIFF samples ``S``.
CHANNEL_AXES = frozenset("CIQ")


@dataclass
class _Handle:
    """What one thread needs to read one level: its own TiffFile and the block tables."""

    tif: tifffile.TiffFile
    decode: Any
    offsets: list[tuple[int, ...]]
    counts: list[tuple[int, ...]]
    jpegtables: list[bytes | None]
    jpegheader: bytes | None


def _check_axes(path: Path, level_series: Any) -> None:
    """Fail unless the level is a 2-D image with at most one band axis."""
    extra = [
        (ax, n) for ax, n in zip(level_series.axes, level_series.shape, strict=True)
        if ax not in "YXS" and n > 1
    ]
    if len(extra) > 1 or (extra and extra[0][0] not in CHANNEL_AXES):
        axes = ", ".join(f"{ax}={n}" for ax, n in extra)
        raise validate.unsupported(
            path,
            f"image series has axes {level_series.axes} ({axes}): only 2-D images with "
            "one channel axis are supported",
        )
    if level_series.keyframe.shaped[1] != 1:
        raise validate.unsupported(path, "volumetric TIFF blocks (tile depth > 1)")


class SlideRaster(Raster):
    """One level of a tiled or striped TIFF read with tifffile: ``(C, H, W)``.

    RGB slides stored ``(H, W, 3)`` come back as ``(3, H, W)``; multi-page channel stacks
    (OME ``CYX``) as ``(C, H, W)``. ``georef.pixel_size`` is in µm when the file says.
    """

    def __init__(self, path: str | Path, level: int = 0) -> None:
        self._path = Path(path)
        self.source = str(path)
        self.kind = "slide"
        self.nodata = None
        self._local = threading.local()
        tif = validate.open_tiff(self._path)
        try:
            self._init_from(tif, level)
        except BaseException:
            tif.close()
            raise
        self._local.handle = self._make_handle(tif)

    def _init_from(self, tif: tifffile.TiffFile, level: int) -> None:
        series = tif.series[0]
        n_levels = len(series.levels)
        if not 0 <= level < n_levels:
            raise validate.unsupported(
                self._path,
                f"level {level} does not exist: the slide has {n_levels} level(s), "
                f"0 to {n_levels - 1}",
            )
        lv = series.levels[level]
        keyframe = lv.keyframe
        _check_axes(self._path, lv)
        validate.check_decodable(self._path, keyframe)
        validate.check_blocks_in_file(self._path, lv.pages, level=level)
        sep, _, height, width, contig = keyframe.shaped
        self._pages = len(lv.pages)
        self._samples = sep * contig
        self._separate = sep
        self.level = level
        self.shape = (self._pages * self._samples, int(height), int(width))
        self.dtype = np.dtype(keyframe.dtype)
        bh, bw, _, _ = validate.block_grid(keyframe)
        self.block_shape = (bh, bw)
        self._tiled = bool(keyframe.is_tiled)
        # Uncompressed strips: read only the rows a window needs, never a whole strip.
        self._raw_rows = bool(
            not keyframe.is_tiled and keyframe.compression == 1 and keyframe.fillorder == 1
            and keyframe.predictor == 1 and not keyframe.is_subsampled
            and self.dtype.kind in "uif" and self.dtype.itemsize * 8 == keyframe.bitspersample
        )
        self._file_dtype = self.dtype.newbyteorder(tif.byteorder)
        self.compression = validate.compression_name(int(keyframe.compression))
        self.format = tiffmeta.slide_format(tif)
        base = tiffmeta.pixel_size_um(tif)
        h0, w0 = series.levels[0].keyframe.shaped[2:4]
        infos = []
        for item in series.levels:
            h, w = item.keyframe.shaped[2:4]
            size = (base[0] * (h0 / h), base[1] * (w0 / w)) if base else None
            infos.append(LevelInfo(shape=(int(h), int(w)), pixel_size=size))
        self.levels = tuple(infos)
        pixel_size = self.levels[level].pixel_size
        self.georef = Georef(pixel_size=pixel_size, unit="um" if pixel_size else None)

    def _make_handle(self, tif: tifffile.TiffFile) -> _Handle:
        lv = tif.series[0].levels[self.level]
        keyframe = lv.keyframe
        return _Handle(
            tif=tif,
            decode=keyframe.decode,
            offsets=[tuple(p.dataoffsets) for p in lv.pages],
            counts=[tuple(p.databytecounts) for p in lv.pages],
            jpegtables=[getattr(p, "jpegtables", None) or keyframe.jpegtables
                        for p in lv.pages],
            jpegheader=keyframe.jpegheader,
        )

    def _handle(self) -> _Handle:
        handle: _Handle | None = getattr(self._local, "handle", None)
        if handle is None:
            try:
                tif = tifffile.TiffFile(self._path)
            except FileNotFoundError as exc:
                raise validate.unsupported(self._path, "file not found") from exc
            except Exception as exc:
                raise validate.damaged(self._path, f"cannot reopen the TIFF: {exc}") from exc
            handle = self._make_handle(tif)
            self._local.handle = handle
        return handle

    def close(self) -> None:
        """Close this thread's file handle (it is reopened on the next read)."""
        handle: _Handle | None = getattr(self._local, "handle", None)
        if handle is not None:
            handle.tif.close()
            self._local.handle = None

    def _where(self, page: int, index: int) -> str:
        bh, bw = self.block_shape or (self.height, self.width)
        label = validate.block_label(index, -(-self.height // bh), -(-self.width // bw))
        page_part = f", page {page}" if self._pages > 1 else ""
        return f"level {self.level}{page_part}: {label}"

    def _decode_block(self, handle: _Handle, page: int, index: int) -> np.ndarray:
        """Decode one TIFF block as ``(rows, cols, samples)`` of :attr:`dtype`."""
        offset, count = handle.offsets[page][index], handle.counts[page][index]
        if offset == 0 or count == 0:
            raise validate.damaged(
                self._path, f"{self._where(page, index)} has no data (offset or size 0)"
            )
        fh = handle.tif.filehandle
        fh.seek(offset)
        data = fh.read(count)
        if len(data) != count:
            raise validate.damaged(
                self._path,
                f"{self._where(page, index)} is cut short: {len(data)} of {count} bytes",
            )
        kwargs: dict[str, bytes] = {}
        if handle.jpegtables[page] is not None:
            kwargs["jpegtables"] = handle.jpegtables[page]
        if handle.jpegheader is not None:
            kwargs["jpegheader"] = handle.jpegheader
        try:
            block = handle.decode(data, index, **kwargs)[0]
        except Exception as exc:
            raise validate.damaged(
                self._path,
                f"{self._where(page, index)} cannot be decoded "
                f"({type(exc).__name__}: {exc})",
            ) from exc
        if block is None:
            raise validate.damaged(self._path, f"{self._where(page, index)} decoded to nothing")
        return block[0]

    def at_level(self, level: int) -> Raster:
        """The same file opened at pyramid ``level``."""
        return self if level == self.level else SlideRaster(self._path, level)

    def _read_rows(self, handle: _Handle, page: int, index: int, first: int,
                   stop: int) -> np.ndarray:
        """Rows ``first:stop`` of an uncompressed strip as ``(rows, W, samples)``."""
        offset, count = handle.offsets[page][index], handle.counts[page][index]
        samples = 1 if self._separate > 1 else self._samples
        row_bytes = self.width * samples * self.dtype.itemsize
        if offset == 0 or count < stop * row_bytes:
            raise validate.damaged(
                self._path,
                f"{self._where(page, index)} holds {count} bytes, fewer than the "
                f"{stop * row_bytes} its rows need",
            )
        fh = handle.tif.filehandle
        fh.seek(offset + first * row_bytes)
        data = fh.read((stop - first) * row_bytes)
        if len(data) != (stop - first) * row_bytes:
            raise validate.damaged(self._path, f"{self._where(page, index)} is cut short")
        rows = np.frombuffer(data, dtype=self._file_dtype)
        return rows.reshape(stop - first, self.width, samples).astype(self.dtype, copy=False)

    def read(self, window: Window) -> np.ndarray:
        """Read ``window`` as ``(C, h, w)`` of :attr:`dtype`, decoding only covered blocks."""
        r0, r1, c0, c1 = check_window(self, window)
        out = np.empty((self.bands, r1 - r0, c1 - c0), dtype=self.dtype)
        if out.size == 0:
            return out
        handle = self._handle()
        bh, bw = self.block_shape or (self.height, self.width)
        n_rows, n_cols = -(-self.height // bh), -(-self.width // bw)
        for page in range(self._pages):
            for plane in range(self._separate):
                for brow in range(r0 // bh, -(-r1 // bh)):
                    for bcol in range(c0 // bw, -(-c1 // bw)):
                        index = plane * n_rows * n_cols + brow * n_cols + bcol
                        top, left = brow * bh, bcol * bw
                        y0, y1 = max(r0, top), min(r1, top + bh)
                        x0, x1 = max(c0, left), min(c1, left + bw)
                        if self._raw_rows:
                            block = self._read_rows(handle, page, index, y0 - top, y1 - top)
                            top = y0
                        else:
                            block = self._decode_block(handle, page, index)
                        if block.shape[0] < y1 - top or block.shape[1] < x1 - left:
                            raise validate.damaged(
                                self._path,
                                f"{self._where(page, index)} decoded to "
                                f"{block.shape[0]}×{block.shape[1]} pixels, "
                                f"fewer than the {y1 - top}×{x1 - left} it must cover",
                            )
                        part = block[y0 - top : y1 - top, x0 - left : x1 - left]
                        ch = page * self._samples + plane
                        out[ch : ch + part.shape[2], y0 - r0 : y1 - r0, x0 - c0 : x1 - c0] = (
                            np.moveaxis(part, 2, 0)
                        )
        return out

    def describe(self) -> dict[str, Any]:
        """Base metadata plus ``format``, ``compression`` and ``block_layout``."""
        info = super().describe()
        info.update(
            format=self.format,
            compression=self.compression,
            block_layout="tiles" if self._tiled else "strips",
        )
        return info

