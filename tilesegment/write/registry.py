"""The registry of output writers: kind → :class:`~tilesegment.write.base.Output` subclass.

Each writer class declares its ``kind``, the path ``extensions`` that select it and the
``layers`` it can write; :func:`~tilesegment.write.create_output`,
:func:`~tilesegment.write.check_output` and :func:`~tilesegment.write.output_kind` look
the kind up here. Adding a kind is one new module and one registration: a line in
:data:`BUILTIN` (loaded lazily, so ``import tilesegment.write`` imports neither zarr nor
rasterio), or :func:`register_writer` on a class from elsewhere (a plugin, a test).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from tilesegment.errors import OutputError

if TYPE_CHECKING:
    from tilesegment.write.base import Output

BUILTIN: dict[str, str] = {
    "zarr": "tilesegment.write.zarr_output:ZarrOutput",
    "geotiff": "tilesegment.write.geotiff_output:GeoTiffOutput",
    "ome-zarr": "tilesegment.write.ome_zarr_output:OmeZarrOutput",
}
"""The kinds shipped with tilesegment, as ``module:Class`` (imported on first use)."""

_WRITERS: dict[str, type[Output] | str] = dict(BUILTIN)

W = TypeVar("W", bound="type[Output]")


def _load(kind: str) -> type[Output]:
    entry = _WRITERS[kind]
    if isinstance(entry, str):
        module, _, name = entry.partition(":")
        entry = getattr(importlib.import_module(module), name)
        _WRITERS[kind] = entry
    return entry


def writers() -> dict[str, type[Output]]:
    """Every registered kind and its writer class, in registration order."""
    return {kind: _load(kind) for kind in list(_WRITERS)}


def writer(kind: str) -> type[Output]:
    """The writer class registered as ``kind``; KeyError if none."""
    return _load(kind)


def extensions() -> dict[str, str]:
    """Every supported extension (lower case, with its dot) → the kind it selects."""
    return {ext: kind for kind, cls in writers().items() for ext in cls.extensions}


def suffix_of(path: str | Path) -> str:
    """The registered extension ``path``'s name ends with (the longest: ``.ome.zarr``
    before ``.zarr``), lower case; else its last suffix (``""`` for none)."""
    name = Path(path).name.lower()
    matches = [ext for ext in extensions() if name.endswith(ext) and len(name) > len(ext)]
    return max(matches, key=len) if matches else Path(name).suffix


def register_writer(cls: W, *, replace: bool = False) -> W:
    """Register the writer class ``cls`` under ``cls.kind`` (usable as a decorator).

    ValueError when the kind is taken (unless ``replace``), when it declares no extension,
    or when one of its extensions already selects another kind.
    """
    kind = cls.kind
    if kind in _WRITERS and not replace:
        raise ValueError(f"an output kind {kind!r} is already registered")
    exts = tuple(cls.extensions)
    if not exts or any(not e.startswith(".") or e != e.lower() for e in exts):
        raise ValueError(f"{cls.__name__}.extensions must be lower-case suffixes such as "
                         f"'.zarr', got {exts!r}")
    taken = {ext: other for ext, other in extensions().items() if other != kind}
    clash = [ext for ext in exts if ext in taken]
    if clash:
        raise ValueError(f"extension {clash[0]!r} already selects the {taken[clash[0]]!r} "
                         "output kind")
    _WRITERS[kind] = cls
    return cls


def unregister_writer(kind: str) -> None:
    """Remove ``kind`` from the registry (a built-in one comes back only by re-registering)."""
    _WRITERS.pop(kind, None)


def reader_for(path: Path) -> type[Output]:
    """The writer class that reads the output at ``path``: the kind its extension selects
    when that kind :meth:`~tilesegment.write.base.Output.holds` what is there, else the
    first registered kind that does (a hidden partial, a layer inside an output)."""
    classes = writers()
    kind = extensions().get(suffix_of(path))
    if kind is not None and classes[kind].holds(path):
        return classes[kind]
    for cls in classes.values():
        if cls.holds(path):
            return cls
    raise OutputError(f"{path} is not an output of any registered kind "
                      f"({', '.join(classes)})")


def writer_for(path: str | Path) -> type[Output]:
    """The writer class selected by the extension of ``path``; OutputError (one line,
    listing the supported extensions) when none is."""
    suffix = suffix_of(path)
    known = extensions()
    try:
        return writer(known[suffix])
    except KeyError:
        shown = f"extension {suffix!r}" if suffix else "no extension"
        raise OutputError(
            f"cannot write {path}: {shown} is not supported "
            f"(supported: {', '.join(known)})"
        ) from None
