"""Checks of written files and block stores, used by the writers before publishing (their
own files) and by each kind's :meth:`~tilesegment.write.base.Output.problems` when an output
is read back (:mod:`tilesegment.write.verify`).

- :func:`verify_tiff`: every IFD (the full resolution and each overview) readable, every
  TIFF block present with a nonzero byte count inside the file;
- :func:`zarr_chunk_problems`: every block a completion record says was written has a chunk
  in every layer;
- :func:`zarr_problems`, :func:`geotiff_problems`: what is wrong with a complete output of
  each built-in kind.

A leaf of ``tilesegment.write``: it imports only :mod:`.layout` and :mod:`.atomic` (no
writer, no registry), so the writers can use it without an import cycle.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from tilesegment.errors import OutputError
from tilesegment.write import layout
from tilesegment.write.atomic import final_of

MISSING_LIST_LIMIT = 10_000
"""Up to this many unwritten blocks are listed in a completion record (else only counted)."""


def verify_tiff(path: Path, *, pages: int | None = None) -> int:
    """Raise :class:`OutputError` unless the TIFF at ``path`` is whole; return its IFD count.

    Whole: at least one IFD (``pages`` exactly, when given), each readable, each of its
    blocks at a nonzero offset with a nonzero byte count ending inside the file.
    """
    import tifffile

    shown = final_of(path)
    try:
        size = path.stat().st_size
        with tifffile.TiffFile(path) as tif:
            ifds = list(tif.pages)
            if not ifds:
                raise OutputError(f"{shown} is damaged: no readable TIFF directory")
            for index, page in enumerate(ifds):
                _check_page(shown, index, page, size)
    except OutputError:
        raise
    except Exception as exc:  # tifffile raises many kinds for a cut-short file
        raise OutputError(f"{shown} is damaged: {type(exc).__name__}: {exc}") from exc
    if pages is not None and len(ifds) != pages:
        raise OutputError(f"{shown} is damaged: {len(ifds)} TIFF directories, want {pages}")
    return len(ifds)


def _check_page(path: Path, index: int, page: Any, size: int) -> None:
    offsets, counts = page.dataoffsets, page.databytecounts
    if page.is_tiled:
        across = math.ceil(page.imagewidth / page.tilewidth)
        down = math.ceil(page.imagelength / page.tilelength)
        planes = page.samplesperpixel if page.planarconfig == 2 else 1
        want = across * down * planes
    else:
        want = len(offsets)
    where = f"{path} is damaged (TIFF directory {index})"
    if len(offsets) != want or len(counts) != want:
        raise OutputError(f"{where}: {len(offsets)} blocks, want {want}")
    for block, (offset, count) in enumerate(zip(offsets, counts, strict=True)):
        if offset <= 0 or count <= 0 or offset + count > size:
            raise OutputError(
                f"{where}: block {block} at offset {offset} with {count} bytes is missing "
                f"or past the end of the {size}-byte file")


def _layer_dir_chunks(root: Path) -> set[tuple[int, ...]]:
    """Chunk coordinates present under a Zarr v3 array directory (``c/i/j`` keys)."""
    found: set[tuple[int, ...]] = set()
    base = root / layout.ZARR_CHUNK_DIR
    for folder, _, files in os.walk(base):
        rel = Path(folder).relative_to(base).parts
        for name in files:
            try:
                coords = tuple(int(part) for part in (*rel, name))
            except ValueError:
                continue
            if (Path(folder) / name).stat().st_size > 0:
                found.add(coords)
    return found


def zarr_written_blocks(root: Path) -> set[tuple[int, int]]:
    """``(i, j)`` block indices with a mask chunk in the store at ``root``."""
    return {c for c in _layer_dir_chunks(layout.zarr_layer_path(root, layout.MASK))
            if len(c) == 2}


def zarr_chunk_problems(root: Path, layers: list[str], grid: tuple[int, int],
                        written: set[tuple[int, int]]) -> list[str]:
    """What is missing: ``written`` blocks without a chunk in one of ``layers``."""
    problems = []
    for layer in layers:
        present = _layer_dir_chunks(layout.zarr_layer_path(root, layer))
        if layer == layout.PROBABILITIES:
            present = {c[1:] for c in present if len(c) == 3 and c[0] == 0}
        lost = sorted(b for b in written if b not in present)
        if lost:
            problems.append(f"layer {layer!r} lacks {len(lost)} of {len(written)} written "
                            f"blocks (first: block {list(lost[0])} of a {grid[0]}x{grid[1]} "
                            "grid)")
    return problems


def missing_blocks(grid: tuple[int, int], written: set[tuple[int, int]]) -> list | None:
    """The blocks not written as ``[[i, j], ...]`` (None when more than the list limit)."""
    if grid[0] * grid[1] - len(written) > MISSING_LIST_LIMIT:
        return None
    return [[i, j] for i in range(grid[0]) for j in range(grid[1]) if (i, j) not in written]


def expected_blocks(grid: tuple[int, int], completion: dict[str, Any]) -> set | None:
    """The blocks a completion record says were written (None when it only counts them)."""
    missing = completion.get("blocks_missing")
    if missing is None:
        return None
    gone = {(int(i), int(j)) for i, j in missing}
    return {(i, j) for i in range(grid[0]) for j in range(grid[1]) if (i, j) not in gone}


def zarr_problems(path: Path, meta: dict[str, Any], completion: dict[str, Any]) -> list[str]:
    """What is missing from a complete Zarr output: blocks and layer chunks."""
    bh, bw = meta["block_shape"]
    h, w = meta["shape"]
    grid = (math.ceil(h / bh), math.ceil(w / bw))
    problems = []
    found = zarr_written_blocks(path)
    expected = expected_blocks(grid, completion)
    recorded = completion.get("blocks_written")
    if expected is None:
        if recorded is not None and len(found) != int(recorded):
            problems.append(f"{len(found)} mask blocks on disk, {recorded} recorded")
        expected = found
    else:
        lost = sorted(expected - found)
        if lost:
            problems.append(f"{len(lost)} of {len(expected)} written blocks are missing "
                            f"(first: block {list(lost[0])})")
    problems += [p for p in zarr_chunk_problems(path, [x for x in meta["layers"]
                                                       if x != layout.MASK], grid, expected)]
    return problems


def geotiff_problems(path: Path, meta: dict[str, Any], completion: dict[str, Any]) -> list[str]:
    """What is wrong with a complete GeoTIFF set: a damaged file, a sibling missing, from
    another run or of another size than recorded."""
    run_id = completion.get("run_id")
    problems = []
    try:
        verify_tiff(path)
    except OutputError as exc:
        problems.append(str(exc))
    records = completion.get("layers") or {}
    for layer in meta["layers"]:
        if layer == layout.MASK:
            continue
        sibling = Path(meta["layer_paths"][layer])
        record = records.get(layer)
        if record is None:
            problems.append(f"the completion record does not name its {layer} layer")
            continue
        if not sibling.is_file():
            problems.append(f"its {layer} layer {sibling.name} is missing")
            continue
        their = _tiff_run_id(sibling)
        if their != run_id:
            problems.append(f"its {layer} layer {sibling.name} comes from another run "
                            f"({their} vs {run_id}): the set is mixed")
        elif sibling.stat().st_size != record.get("bytes"):
            problems.append(f"its {layer} layer {sibling.name} has {sibling.stat().st_size} "
                            f"bytes, the record says {record.get('bytes')}")
        else:
            try:
                verify_tiff(sibling)
            except OutputError as exc:
                problems.append(str(exc))
    return problems


def _tiff_run_id(path: Path) -> str | None:
    """The run id in the ``TILESEGMENT`` tag of one GeoTIFF layer (None if absent)."""
    import rasterio

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            ds = rasterio.open(path)
        with ds:
            text = ds.tags().get(layout.TIFF_ATTRS_TAG)
        return json.loads(text).get("run_id") if text else None
    except Exception:  # unreadable or foreign: no run id
        return None
