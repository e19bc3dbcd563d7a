"""The manifest of a block store: which blocks are durably stored, one marker file each.

A block task writes its block's chunks, flushes them to disk (``fsync`` of each chunk file
and its directory), and only then records the block: a small JSON file
``<store>/done/<row0>.<col0>.json`` holding the block's counts (class counts, nodata,
tiles), created whole by a hard link (or rename) from a temporary name. One file per block,
each created by the task that wrote the block, so blocks recorded from several processes
(the workers of a cluster on one filesystem) never contend for one file; a marker exists
only for a block whose every layer is on disk, including blocks that came out all-fill.
``--resume`` computes only the blocks without a marker. The folder is removed when the
store is published (it is not part of an output).

No zarr, rasterio or torch here: it reads and writes plain files.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np

from tilesegment.errors import OutputError
from tilesegment.write import atomic, layout

DONE_DIR = "done"
"""The folder of a block store holding one marker file per block stored."""


def store_record(root: Path) -> dict[str, Any]:
    """The ``tilesegment`` attribute of the block store at ``root`` (its ``zarr.json`` read
    as JSON; ``{}`` when unreadable)."""
    try:
        doc = json.loads((root / layout.ZARR_JSON).read_text(encoding="utf-8"))
        attrs = (doc.get("attributes") or {}).get(layout.ZARR_ATTRS_KEY)
    except (OSError, ValueError, AttributeError):
        return {}
    return attrs if isinstance(attrs, dict) else {}


def marker_path(root: Path, row0: int, col0: int) -> Path:
    """``<root>/done/<row0>.<col0>.json``: the marker of the block at ``(row0, col0)``."""
    return root / DONE_DIR / f"{int(row0)}.{int(col0)}.json"


def _plain(value: Any) -> Any:
    """``value`` made JSON-able: numpy arrays and scalars as lists and numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def sync_files(paths: list[Path]) -> None:
    """``fsync`` each file of ``paths`` that exists, then each of their directories."""
    folders = []
    for path in paths:
        if path.is_file():
            atomic.fsync_path(path)
            if path.parent not in folders:
                folders.append(path.parent)
    for folder in folders:
        with contextlib.suppress(OSError):  # some filesystems refuse a directory fsync
            atomic.fsync_path(folder)


def record(root: Path, row0: int, col0: int, result: dict[str, Any] | None = None) -> None:
    """Record the block at ``(row0, col0)`` as stored (its chunks already synced), with
    ``result`` (the block task's counts) inside; OutputError when it cannot be written."""
    path = marker_path(root, row0, col0)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    text = json.dumps(_plain(result or {}), sort_keys=True)
    try:
        path.parent.mkdir(exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # appears whole; a block written twice is the same block
        with contextlib.suppress(OSError):
            atomic.fsync_path(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(f"cannot record block (row {row0}, col {col0}) of "
                          f"{atomic.final_of(root)} as done: {exc.strerror or exc}") from None


def done_blocks(root: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """The blocks recorded in the store at ``root``: ``{(row0, col0): result}``. A marker
    that cannot be read (never the case for one created whole) counts as not done."""
    folder = root / DONE_DIR
    if not folder.is_dir():
        return {}
    done: dict[tuple[int, int], dict[str, Any]] = {}
    for entry in folder.iterdir():
        parts = entry.name.removesuffix(".json").split(".")
        if entry.name.startswith(".") or len(parts) != 2 or not all(
                p.isdigit() for p in parts):
            continue
        try:
            done[(int(parts[0]), int(parts[1]))] = json.loads(entry.read_text("utf-8"))
        except (OSError, ValueError):
            continue
    return done


def count_done(root: Path) -> int:
    """How many blocks the store at ``root`` records as done."""
    return len(done_blocks(root))


def remove(root: Path) -> None:
    """Remove the manifest folder of the store at ``root`` (before it is published)."""
    import shutil

    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(root / DONE_DIR)
