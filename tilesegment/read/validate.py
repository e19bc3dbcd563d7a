"""Damage checks made at open time, before any pixel is used.

Every check raises a one-line :class:`~tilesegment.errors.DamagedInputError` (or
:class:`~tilesegment.errors.InputError` for an unsupported but intact file) whose message
starts with the file name and says what is wrong. All checks read tags only, never pixels.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from tilesegment.errors import DamagedInputError, InputError

TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) folded into one space."""
    return " ".join(str(text).split())


def damaged(source: str | os.PathLike[str], problem: object) -> DamagedInputError:
    """A :class:`DamagedInputError` reading ``"<file>: <problem>"`` on one line."""
    return DamagedInputError(one_line(f"{source}: {problem}"))


def unsupported(source: str | os.PathLike[str], problem: object) -> InputError:
    """An :class:`InputError` reading ``"<file>: <problem>"`` on one line."""
    return InputError(one_line(f"{source}: {problem}"))


def is_tiff(path: Path) -> bool:
    """Whether ``path`` starts with a classic or BigTIFF magic number."""
    with open(path, "rb") as fh:
        return fh.read(4) in TIFF_MAGICS


def check_tiff_header(path: Path) -> None:
    """Fail when the file ends before its first IFD (``tifffile`` only logs that case)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(16)
    if len(head) < 8:
        raise damaged(path, f"truncated TIFF: {size} bytes, shorter than a TIFF header")
    order = "<" if head[:2] == b"II" else ">"
    bigtiff = head[2:4] in (b"+\x00", b"\x00+")
    if bigtiff:
        if len(head) < 16:
            raise damaged(path, f"truncated BigTIFF: {size} bytes, shorter than its header")
        offset = struct.unpack(order + "Q", head[8:16])[0]
        entry_count_size = 8
    else:
        offset = struct.unpack(order + "I", head[4:8])[0]
        entry_count_size = 2
    if offset == 0:
        raise damaged(path, "TIFF header points to no IFD (first IFD offset is 0)")
    if offset + entry_count_size > size:
        raise damaged(
            path,
            f"truncated before its first IFD: the header points to byte {offset} "
            f"but the file has only {size} bytes",
        )


def open_tiff(path: Path) -> tifffile.TiffFile:
    """Open ``path`` with tifffile after the header check; fail if it holds no image."""
    check_tiff_header(path)
    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, struct.error, EOFError, OSError) as exc:
        raise damaged(path, f"damaged TIFF structure: {exc}") from exc
    try:
        if len(tif.pages) == 0:
            raise damaged(path, "TIFF holds no readable IFD (truncated or damaged)")
        if not tif.series:
            raise damaged(path, "TIFF holds no image series (truncated or damaged)")
    except DamagedInputError:
        tif.close()
        raise
    except Exception as exc:
        tif.close()
        raise damaged(path, f"damaged TIFF structure: {exc}") from exc
    return tif


def compression_name(code: int) -> str:
    """The TIFF compression's name (``"JPEG"``, ``"ADOBE_DEFLATE"``), or its number."""
    try:
        return tifffile.COMPRESSION(code).name
    except ValueError:
        return str(code)


def check_decodable(path: Path, page: Any) -> None:
    """Fail when tifffile cannot decode ``page`` (unknown compression, odd sample format)."""
    code = int(page.compression)
    if code != 1 and code not in tifffile.TIFF.DECOMPRESSORS:
        name = compression_name(code)
        what = f"{name} (code {code})" if name != str(code) else f"code {code} (unknown)"
        raise unsupported(
            path, f"unsupported TIFF compression {what}: no decoder is installed for it"
        )
    if page.dtype is None:
        raise unsupported(
            path,
            f"unsupported TIFF sample format {page.sampleformat} "
            f"with {page.bitspersample} bits per sample",
        )
    try:
        page.decode(None, 0)  # tifffile hands back a raising stub for what it cannot decode
    except (ValueError, NotImplementedError, KeyError) as exc:
        raise unsupported(path, f"cannot decode this TIFF: {exc}") from exc


def block_grid(page: Any) -> tuple[int, int, int, int]:
    """``(block_h, block_w, n_rows, n_cols)`` of a page's TIFF blocks (tiles or strips)."""
    height, width = int(page.imagelength), int(page.imagewidth)
    if page.is_tiled:
        bh, bw = int(page.tilelength), int(page.tilewidth)
    else:
        bh, bw = min(int(page.rowsperstrip) or height, height), width
    return bh, bw, -(-height // bh), -(-width // bw)


def block_label(index: int, n_rows: int, n_cols: int) -> str:
    """``"TIFF block 7 (row 1, col 2)"`` for the block at ``index`` of a page's offsets."""
    plane, rest = divmod(index, n_rows * n_cols)
    row, col = divmod(rest, n_cols)
    where = f"row {row}, col {col}" + (f", sample plane {plane}" if plane else "")
    return f"TIFF block {index} ({where})"


def check_blocks_in_file(path: Path, pages: Sequence[Any], *, level: int) -> None:
    """Fail when a TIFF block of ``pages`` lies past the end of the file, or when the file
    cannot hold the image its tags declare (tags only; see :func:`check_declared_size`)."""
    size = path.stat().st_size
    for page in pages:
        if page is None:
            raise damaged(path, f"level {level}: a page of the image series is missing")
        offsets = page.dataoffsets
        counts = page.databytecounts
        grid = block_grid(page.keyframe)[2:]
        if len(offsets) != len(counts):
            raise damaged(
                path,
                f"level {level}: {len(offsets)} block offsets but {len(counts)} byte counts",
            )
        for index, (offset, count) in enumerate(zip(offsets, counts, strict=True)):
            if offset + count > size:
                raise damaged(
                    path,
                    f"level {level}: {block_label(index, *grid)} lies past the end "
                    f"of the file (bytes {offset}..{offset + count} of {size}); "
                    "the file is truncated",
                )
        check_declared_size(path, page, level=level, size=size)


#: The most a codec can expand its input: DEFLATE ≤ 1032:1 (a 258-byte match per 2 bits),
#: TIFF LZW < 3641:1 (a code of ≥ 9 bits stands for ≤ 4096 bytes), PackBits 64:1 (2 bytes
#: for a run of 128). Codecs not listed (JPEG, whose progressive mode codes runs of empty
#: blocks; ZSTD, LZMA, WebP, JPEG 2000…) have no bound here.
MAX_EXPANSION = {5: 3641, 8: 1032, 32946: 1032, 32773: 64}

#: A margin on those bounds: a block is refused only when even twice the codec's best case
#: could not hold it.
EXPANSION_SLACK = 2


def _row_bytes(width: int, samples: int, bits: int) -> int:
    return -(-(width * samples * bits) // 8)


def check_declared_size(path: Path, page: Any, *, level: int, size: int) -> None:
    """Fail when the file cannot hold the image its tags declare, before any pixel is read.

    - fewer TIFF block offsets than the declared size needs (a 10⁶ × 10⁶ image in 256 × 256
      tiles needs 15 million of them);
    - an uncompressed block whose pixels would reach past the end of the file;
    - a compressed block too small for its pixels even at its codec's best ratio
      (:data:`MAX_EXPANSION`, with :data:`EXPANSION_SLACK`);
    - a compressed block that decodes to more bytes than this machine's memory
      (:func:`tilesegment.limits.memory_limit`).
    """
    key = page.keyframe
    height, width = int(key.imagelength), int(key.imagewidth)
    bh, bw, n_rows, n_cols = block_grid(key)
    planes, contig = int(key.shaped[0]), int(key.shaped[4])
    bits = int(key.bitspersample)
    offsets, counts = page.dataoffsets, page.databytecounts
    needed = planes * n_rows * n_cols
    if len(offsets) < needed:
        raise damaged(
            path,
            f"level {level}: the tags declare a {width} × {height} px image in {needed:,} "
            f"TIFF blocks of {bw} × {bh} px but list only {len(offsets):,} block offsets; "
            f"the file ({size:,} bytes) cannot hold that image",
        )
    compression = int(key.compression)
    full = bh * _row_bytes(bw, contig, bits)
    if compression != 1:
        from tilesegment.limits import format_bytes, memory_limit

        limit, source = memory_limit()
        if full > limit:
            raise damaged(
                path,
                f"level {level}: one TIFF block of {bw} × {bh} px decodes to "
                f"{format_bytes(full)}, more than the {format_bytes(limit)} memory limit "
                f"({source}); the tags declare a {width} × {height} px image",
            )
    offsets = np.asarray(offsets[:needed], dtype=np.int64)
    counts = np.asarray(counts[:needed], dtype=np.int64)
    if key.is_tiled:
        blocks = np.full(needed, full, dtype=np.int64)
    else:  # the last strip of each plane holds only the rows left
        rows = np.minimum(bh, height - (np.arange(needed) % n_rows) * bh)
        blocks = rows.astype(np.int64) * _row_bytes(width, contig, bits)
    written = (offsets != 0) & (counts != 0)  # unwritten (sparse) blocks fail if ever read
    ratio = MAX_EXPANSION.get(compression)
    if compression == 1:
        bad = np.flatnonzero(written & (offsets + blocks > size))
        if bad.size:
            index = int(bad[0])
            raise damaged(
                path,
                f"level {level}: {block_label(index, n_rows, n_cols)} declares "
                f"{int(blocks[index]):,} bytes of uncompressed pixels from byte "
                f"{int(offsets[index]):,}, past the end of the file ({size:,} bytes); the "
                f"tags declare a {width} × {height} px image the file cannot hold",
            )
    elif ratio is not None:
        bad = np.flatnonzero(written & (counts * (ratio * EXPANSION_SLACK) < blocks))
        if bad.size:
            index = int(bad[0])
            raise damaged(
                path,
                f"level {level}: {block_label(index, n_rows, n_cols)} has "
                f"{int(counts[index]):,} compressed bytes for {int(blocks[index]):,} bytes "
                f"of pixels, beyond what {compression_name(compression)} can expand (at most "
                f"{ratio}:1); the tags declare a {width} × {height} px image the file "
                "cannot hold",
            )
