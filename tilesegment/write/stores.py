"""The block stores of unfinished outputs: finding them, and clearing what a killed run left.

A run writes its blocks into a hidden store beside the output,
``.<name>.partial-<key>`` (``<key>.scratch.zarr`` for a GeoTIFF), ``<key>`` the first 16
hex digits of the run plan's fingerprint (a random token for a run without one); the store
records the full fingerprint and its writer (pid, host) in its metadata
(:data:`~tilesegment.write.layout.FINGERPRINT_KEY`, :data:`~tilesegment.write.layout.
WRITER_KEY`). A failed or interrupted run removes its store; a run killed outright (SIGKILL,
a power loss) cannot, and the next run onto the same output does it instead
(:func:`clear_stale`, called by ``create_output``):

- a store of another fingerprint is removed, with a :class:`StaleOutputWarning` naming it;
- a store of the same fingerprint is what a later ``--resume`` will reuse; without resume
  the run starts over: the store is removed and made afresh, with a warning saying so;
- an old output an interrupted Zarr replacement left aside (``.<name>.old-<token>``) is
  removed when the output itself is in place, under the output's lock only.

Only what is provably tilesegment's is removed: a directory named by this layout, owned by
this user, holding a Zarr group with tilesegment's metadata, whose writer is gone (a process
of this host that no longer runs, or, while this process holds the output's lock, any other
run: every run takes that lock). Anything else that looks like one is left, with a warning.
:func:`find_block_store` is what a resuming run will call.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tilesegment.errors import OutputError, StaleOutputWarning
from tilesegment.write import atomic, guard, layout, lock
from tilesegment.write.base import open_store_roots


@dataclass(frozen=True)
class FoundStore:
    """A block store of an output, as found on disk."""

    path: Path
    fingerprint: str | None
    """The full fingerprint recorded inside (None: a run without one, or an older one)."""
    writer: dict[str, Any] | None
    """``{"pid", "host"}`` of the process that created it (None once complete)."""
    complete: bool
    """Its completion record says complete (an old output swapped out by a replacement)."""


def candidates(final: Path) -> list[Path]:
    """The entries beside ``final`` named like one of its block stores, sorted."""
    parent = final.parent
    if not parent.is_dir():
        return []
    return sorted(e for e in parent.iterdir() if layout.block_store_key(final, e.name))


def inspect_store(path: Path) -> FoundStore | str:
    """What the entry ``path`` (named like a block store) holds: a :class:`FoundStore`
    when it is provably one of tilesegment's, else why it is not (one phrase)."""
    try:
        info = path.lstat()
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    if path.is_symlink() or not path.is_dir():
        return "it is not a directory"
    if info.st_uid != os.geteuid():
        return "it belongs to another user"
    try:
        doc = json.loads((path / layout.ZARR_JSON).read_text(encoding="utf-8"))
        attrs = (doc.get("attributes") or {}).get(layout.ZARR_ATTRS_KEY)
    except (OSError, ValueError, AttributeError):
        return "it holds no Zarr group"
    if not isinstance(attrs, dict) or attrs.get("format") != layout.FORMAT_NAME:
        return "it holds no tilesegment metadata"
    fingerprint = attrs.get(layout.FINGERPRINT_KEY)
    key = layout.block_store_key(atomic.final_of(path), path.name)
    if isinstance(fingerprint, str) and len(key or "") == layout.STORE_KEY_LENGTH \
            and layout.store_key(fingerprint) != key:
        fingerprint = None  # named for one run, holding another's: not that run's store
    writer = attrs.get(layout.WRITER_KEY)
    completion = attrs.get(layout.COMPLETION_KEY)
    return FoundStore(
        path=path,
        fingerprint=fingerprint if isinstance(fingerprint, str) else None,
        writer=writer if isinstance(writer, dict) else None,
        complete=isinstance(completion, dict) and completion.get("complete") is True,
    )


def find_block_stores(final: str | Path) -> list[FoundStore]:
    """Every block store of the output ``final`` that is provably tilesegment's (see
    :func:`inspect_store`), sorted by path."""
    final = Path(final).expanduser().absolute()
    found = (inspect_store(path) for path in candidates(final))
    return [store for store in found if isinstance(store, FoundStore)]


def find_block_store(final: str | Path, fingerprint: str) -> Path | None:
    """The unfinished block store of the output ``final`` written by a run whose plan has
    ``fingerprint`` (recorded inside, compared in full), or None."""
    for store in find_block_stores(final):
        if store.fingerprint == fingerprint and not store.complete:
            return store.path
    return None


def _in_use(store: FoundStore, locked: bool) -> str | None:
    """Why ``store`` may still be written by a live run (None: it may not, remove it)."""
    writer = store.writer
    if writer is None:
        return None if locked else ("it records no writer, and without the output's lock "
                                    "this process cannot tell whether a run still writes it")
    host, pid = writer.get("host"), writer.get("pid")
    if host != socket.gethostname():
        return None if locked else (f"it was made on host {host}, where a run may still "
                                    "write it")
    if pid == os.getpid():
        return None  # this process's, and not among its open outputs: abandoned
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return None
    except (PermissionError, TypeError, ValueError, OverflowError):
        pass
    return f"process {pid} that made it is still running"


def check_free(final: Path, key: str) -> None:
    """OutputError unless the block store named ``key`` of ``final`` may be created: after
    :func:`clear_stale`, whatever is still there is a live run's store of the same
    settings, or something that is not ours."""
    for path in candidates(final):
        if layout.block_store_key(final, path.name) != key:
            continue
        found = inspect_store(path)
        if isinstance(found, str):
            raise OutputError(f"cannot write {final}: {path} is where this run's block store "
                              f"goes, but {found}; move it away")
        raise OutputError(f"another run with the same settings is writing {final} (its "
                          f"block store {path.name} is in use); wait for it to end")


def _warn(message: str) -> None:
    warnings.warn(message, StaleOutputWarning, stacklevel=4)


def clear_stale(final: Path, fingerprint: str | None, finals: Iterable[Path] = ()) -> None:
    """Remove what killed runs left of the output ``final`` (each with one warning line):
    its block stores, and the old outputs left aside at ``final`` and the other ``finals``
    (a GeoTIFF's siblings); see the module docstring. Never raises for what it cannot
    remove: that is left, with a warning."""
    locked = lock.holds(final)
    live = open_store_roots()
    for path in candidates(final):
        if path in live:
            continue  # an output of this process still being written
        store = inspect_store(path)
        if isinstance(store, str):
            _warn(f"left {path} alone: it is named like a block store of {final.name}, "
                  f"but {store}")
            continue
        busy = _in_use(store, locked)
        if busy is not None:
            _warn(f"left the block store {path} in place: {busy}")
            continue
        amount = _remove(path, "the stale block store")
        if amount is None:
            continue
        if fingerprint is not None and store.fingerprint == fingerprint:
            _warn(f"an unfinished run of the same settings was found ({path.name}, "
                  f"{amount}); starting over (resume is not available yet)")
        elif store.complete:
            _warn(f"removed {path} ({amount}): an old output of {final.name} that an "
                  "interrupted replacement left under a hidden name")
        else:
            what = (f"fingerprint {layout.store_key(store.fingerprint)}"
                    if store.fingerprint else "no fingerprint")
            _warn(f"removed {path} ({amount}): the block store of an earlier run onto "
                  f"{final.name} with other settings ({what}) that never finished (killed, "
                  "or the machine stopped)")
    if locked:
        for path in (final, *finals):
            _clear_old(path)


def _remove(path: Path, what: str) -> str | None:
    """Remove ``path`` (ours, checked by the caller); its size in words, or ``None`` after
    one warning when it could not be removed."""
    amount = guard.amount(path)
    try:
        atomic.remove(path)
    except OSError as exc:
        _warn(f"could not remove {what + ' ' if what else ''}{path}: {exc.strerror or exc}")
        return None
    return amount


def _clear_old(final: Path) -> None:
    """Remove the ``.<name>.old-*`` entries beside ``final`` when ``final`` is in place and
    no publication is pending: an old output an interrupted replacement moved aside (a Zarr
    tree), or a GeoTIFF layer's backup."""
    parent = final.parent
    if not atomic.exists(final) or atomic.pending_journals(final) or not parent.is_dir():
        return
    prefix = layout.old_prefix(final)
    for path in sorted(e for e in parent.iterdir() if e.name.startswith(prefix)):
        if path.is_symlink() or path.lstat().st_uid != os.geteuid():
            _warn(f"left {path} alone: it is named like an old copy of {final.name}, but "
                  "is a link or belongs to another user")
            continue
        ours = (guard.is_zarr_output(path) if path.is_dir()
                else path.is_file() and guard.is_tiff_output(path))
        if not ours:
            _warn(f"left {path} alone: it is named like an old copy of {final.name}, but "
                  "is not a tilesegment output")
            continue
        amount = _remove(path, "")
        if amount is None:
            continue
        _warn(f"removed {path} ({amount}): the old {final.name} that an interrupted "
              "replacement left beside the new one")
