"""What an output may replace: the overwrite policy, checked before anything is computed.

Refused whatever ``overwrite`` says (:class:`UnsafeOutputError`):

- an output path that is an input of the run (the raster, a truth mask, a weights file),
  that contains one (a directory holding the input), or that lies inside an input
  directory (a path inside the input Zarr);
- a directory that is not a tilesegment Zarr output, or a tilesegment Zarr output holding
  anything it did not write (a user's notes);
- for a GeoTIFF layer, anything but a regular file (a directory, a symlink to one).

Each writer kind applies one of the two policies (``check_replaceable_directory`` for a
directory output, ``check_replaceable_file`` for a file) to every path it would publish.
Replaced only with ``overwrite`` (:class:`OutputExistsError` otherwise): a tilesegment Zarr
output, or a regular file where a GeoTIFF layer goes (a previous output or a plain file).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from tilesegment.errors import OutputExistsError, UnsafeOutputError
from tilesegment.write import layout

ZARR_LAYERS = layout.LAYERS


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _size(path: Path) -> tuple[int, int]:
    """Files and bytes under ``path`` (a file counts as one)."""
    if not path.is_dir() or path.is_symlink():
        return 1, path.lstat().st_size
    files = total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            files += 1
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return files, total


def _amount(path: Path) -> str:
    files, total = _size(path)
    return f"{files} file{'s' if files != 1 else ''}, {_human(total)}"


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def check_inputs(final: Path, inputs: Iterable[Path]) -> None:
    """Refuse ``final`` if it is, contains or lies inside one of ``inputs``."""
    target = _real(final)
    for source in inputs:
        if not os.path.lexists(source):
            continue
        real = _real(source)
        if target == real:
            raise UnsafeOutputError(
                f"refusing to write {final}: it is {source}, an input of this run, which "
                "would be destroyed; choose another output path (--overwrite never "
                "replaces an input)")
        if real.is_relative_to(target):
            raise UnsafeOutputError(
                f"refusing to write {final}: it contains {source}, an input of this run, "
                f"which replacing it would delete ({_amount(final)}); choose another "
                "output path")
        if real.is_dir() and target.is_relative_to(real):
            raise UnsafeOutputError(
                f"refusing to write {final}: it lies inside {source}, an input of this "
                "run, which writing there would alter; choose an output path outside it")


def zarr_output_foreign(path: Path) -> list[str]:
    """Entries under a Zarr output directory that a tilesegment writer did not make
    (relative paths, sorted); [] for a pure output."""
    foreign: list[str] = []
    for entry in sorted(path.iterdir()):
        name = entry.name
        if entry.is_symlink():
            foreign.append(name)
        elif name == layout.ZARR_JSON and entry.is_file():
            continue
        elif name in ZARR_LAYERS and entry.is_dir():
            foreign += [f"{name}/{x}" for x in _layer_foreign(entry)]
        else:
            foreign.append(name + ("/" if entry.is_dir() else ""))
    return foreign


def array_foreign(layer: Path) -> list[str]:
    """Entries under a Zarr v3 array directory that are not its ``zarr.json`` or its
    numbered chunk files (relative paths)."""
    return _layer_foreign(layer)


def _layer_foreign(layer: Path) -> list[str]:
    foreign = []
    for entry in sorted(layer.iterdir()):
        if entry.name == layout.ZARR_JSON and entry.is_file() and not entry.is_symlink():
            continue
        if entry.name == layout.ZARR_CHUNK_DIR and entry.is_dir() and not entry.is_symlink():
            for folder, dirs, names in os.walk(entry):
                rel = Path(folder).relative_to(layer)
                for name in [*dirs, *names]:
                    item = Path(folder) / name
                    if not name.isdigit() or item.is_symlink():
                        foreign.append(str(rel / name))
            continue
        foreign.append(entry.name)
    return foreign


def is_zarr_output(path: Path) -> bool:
    """Whether ``path`` is a directory holding a tilesegment Zarr output's group."""
    meta = path / layout.ZARR_JSON
    if not path.is_dir() or path.is_symlink() or not meta.is_file():
        return False
    try:
        attrs = json.loads(meta.read_text(encoding="utf-8")).get("attributes") or {}
    except (OSError, ValueError):
        return False
    record = attrs.get(layout.ZARR_ATTRS_KEY)
    return isinstance(record, dict) and record.get("format") == layout.FORMAT_NAME


def check_replaceable_directory(
        final: Path, *, overwrite: bool,
        foreign_of: Callable[[Path], list[str]] | None = None) -> None:
    """The policy for a directory output (Zarr, OME-Zarr): only a pure tilesegment output
    there may be replaced, and only with ``overwrite``. ``foreign_of``: what in the
    directory the kind did not write (default :func:`zarr_output_foreign`)."""
    if not os.path.lexists(final):
        return
    if final.is_symlink():
        raise UnsafeOutputError(
            f"refusing to replace {final}: it is a symbolic link, not a tilesegment "
            "Zarr output; remove it or choose another output path")
    if not final.is_dir():
        raise UnsafeOutputError(
            f"refusing to replace {final}: it is a file ({_amount(final)}), not a "
            "tilesegment Zarr output; --overwrite only replaces tilesegment outputs")
    if not is_zarr_output(final):
        raise UnsafeOutputError(
            f"refusing to replace {final}: it is a directory that is not a "
            f"tilesegment output ({_amount(final)} would be deleted); --overwrite only "
            "replaces tilesegment outputs: move it away or choose another output path")
    foreign = (foreign_of or zarr_output_foreign)(final)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise UnsafeOutputError(
            f"refusing to replace {final}: besides a tilesegment output it holds "
            f"{foreign[0]}{more}, which replacing it would delete; move those out or "
            "choose another output path")
    what = "a tilesegment output"
    _refuse_unless(final, what, overwrite=overwrite)


def check_replaceable_file(final: Path, *, overwrite: bool) -> None:
    """The policy for a file output (a GeoTIFF layer): a regular file, replaced only with
    ``overwrite``; never a directory or a dangling link."""
    if not os.path.lexists(final):
        return
    if final.is_dir():
        raise UnsafeOutputError(
            f"refusing to replace {final}: it is a directory ({_amount(final)} would "
            "be deleted), not a GeoTIFF; choose another output path")
    if final.is_symlink() and not final.exists():
        raise UnsafeOutputError(
            f"refusing to replace {final}: it is a dangling symbolic link")
    what = ("a tilesegment output" if _is_tiff_output(final)
            else f"a file that is not a tilesegment output, {_amount(final)}, would be lost")
    _refuse_unless(final, what, overwrite=overwrite)


def _refuse_unless(final: Path, what: str, *, overwrite: bool) -> None:
    if not overwrite:
        raise OutputExistsError(f"{final} exists ({what}); pass --overwrite to replace it")


def _is_tiff_output(path: Path) -> bool:
    """Whether ``path`` carries a tilesegment tag (a cheap scan of the first IFD)."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            tag = tif.pages[0].tags.get(42112)  # GDAL_METADATA
            return tag is not None and layout.TIFF_ATTRS_TAG in str(tag.value)
    except Exception:
        return False


amount = _amount
"""``"<files> files, <size>"`` under a path (a file counts as one): for messages."""

is_tiff_output = _is_tiff_output
