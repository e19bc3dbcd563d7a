"""The block stores of unfinished outputs: finding them, and clearing what a killed run left.

A run writes its blocks into a hidden store beside the output,
``.<name>.partial-<key>`` (``<key>.scratch.zarr`` for a GeoTIFF), ``<key>`` the first 16
hex digits of the run plan's fingerprint (a random token for a run without one); the store
records the full fingerprint and its writer (pid, host) in its metadata
(:data:`~tilesegment.write.layout.FINGERPRINT_KEY`, :data:`~tilesegment.write.layout.
WRITER_KEY`), the plan's settings (:data:`~tilesegment.write.layout.SETTINGS_KEY`) and a
manifest of the blocks durably stored (:mod:`~tilesegment.write.manifest`). A failed or
interrupted run keeps its store when it holds finished blocks (else removes it); a run
killed outright (SIGKILL, a power loss) leaves it. The next run onto the same output
(:func:`clear_stale`, called by ``create_output``):

- an unfinished store with a fingerprint and at least one block done (its writer gone) is
  refused without ``resume`` or ``overwrite`` (one line naming both); ``overwrite`` removes
  it; ``resume`` reopens the one of the same fingerprint, and refuses one of other
  settings, listing those that differ (``halo: 16 → 24``);
- an unfinished store with no block done, or without a fingerprint (it cannot be resumed),
  is removed, with a :class:`StaleOutputWarning` naming it;
- an old output an interrupted Zarr replacement left aside (``.<name>.old-<token>``), and
  GeoTIFFs a killed run staged before publishing (``.<name>.partial-<token>.tif*``), are
  removed when no publication is pending, under the output's lock only.

Only what is provably tilesegment's is removed: a directory named by this layout, owned by
this user, holding a Zarr group with tilesegment's metadata, whose writer is gone (a process
of this host that no longer runs, or, while this process holds the output's lock, any other
run: every run takes that lock). Anything else that looks like one is left, with a warning.
:func:`find_block_store` is what a resuming run calls to learn the store's block size.
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

from tilesegment.errors import OutputError, ResumeWarning, StaleOutputWarning
from tilesegment.write import atomic, guard, layout, lock, manifest
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


SETTINGS_KEY = layout.SETTINGS_KEY


def _warn(message: str) -> None:
    warnings.warn(message, StaleOutputWarning, stacklevel=4)


def clear_stale(final: Path, fingerprint: str | None, finals: Iterable[Path] = (), *,
                overwrite: bool = False, resume: bool = False,
                settings: dict[str, Any] | None = None) -> FoundStore | None:
    """Deal with what killed or stopped runs left of the output ``final``; see the module
    docstring. Returns the unfinished store of ``fingerprint`` to resume (only with
    ``resume``), else None.

    An unfinished store with a fingerprint and a block done (a resumable run whose writer is
    gone) is kept for ``resume`` when its fingerprint is ``fingerprint`` (with ``overwrite``
    too: the run was replacing an output), else removed with ``overwrite``, and otherwise
    refused (:class:`~tilesegment.errors.UnfinishedOutputError`: with ``resume`` listing
    the ``settings`` that differ, without it naming ``--resume`` and ``--overwrite``).
    Other leftovers (complete old outputs, stores without a fingerprint or with no block
    done, old trees, a GeoTIFF's staged files) are removed with one warning line each.
    Never raises for what it cannot remove: that is left, with a warning."""
    locked = lock.holds(final)
    live = open_store_roots()
    unfinished: list[FoundStore] = []
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
        resumable = store.fingerprint is not None and not store.complete
        wanted = resume and fingerprint is not None and store.fingerprint == fingerprint
        if resumable and (wanted or not overwrite) and manifest.count_done(path):
            unfinished.append(store)
            continue
        amount = _remove(path, "the stale block store")
        if amount is None:
            continue
        if store.complete:
            _warn(f"removed {path} ({amount}): an old output of {final.name} that an "
                  "interrupted replacement left under a hidden name")
        elif resumable and not overwrite:
            _warn(f"removed {path} ({amount}): an unfinished run onto {final.name} that "
                  "had stored no block yet (nothing to resume)")
        elif store.fingerprint is not None:
            _warn(f"removed {path} ({amount}): the unfinished run there "
                  f"({_progress(store.path)}) was discarded (--overwrite)")
        else:
            _warn(f"removed {path} ({amount}): the block store of an earlier run onto "
                  f"{final.name} without a fingerprint (it cannot be resumed) that never "
                  "finished (killed, or the machine stopped)")
    if locked:
        for path in (final, *finals):
            _clear_old(path)
            _clear_staged(path)
            _clear_pyramids(path)
    return _choose(final, unfinished, fingerprint, resume, settings)


def _progress(root: Path) -> str:
    """``12 of 64 blocks done`` for the block store at ``root``."""
    total = _total_blocks(root)
    done = manifest.count_done(root)
    return f"{done} of {total} blocks done" if total else f"{done} blocks done"


store_record = manifest.store_record


def _total_blocks(root: Path) -> int | None:
    attrs = store_record(root)
    try:
        (h, w), (bh, bw) = attrs["shape"], attrs["block_shape"]
        return -(-int(h) // int(bh)) * -(-int(w) // int(bw))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def store_block_shape(root: Path) -> tuple[int, int] | None:
    """The block (chunk) shape the block store at ``root`` was made with."""
    shape = store_record(root).get("block_shape")
    if isinstance(shape, list) and len(shape) == 2:
        return int(shape[0]), int(shape[1])
    return None


def settings_diff(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[str]:
    """``name: old → new`` for each setting (a flat dict, see
    :func:`~tilesegment.plan.fingerprint.flat_fields`) that differs; a dotted name is
    shortened to its last part where that is unambiguous."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return []
    keys = sorted(set(old) | set(new))
    last = [k.rsplit(".", 1)[-1] for k in keys]
    out = []
    for key, short in zip(keys, last, strict=True):
        if old.get(key) != new.get(key):
            name = short if last.count(short) == 1 else key
            out.append(f"{name}: {_show(old.get(key))} → {_show(new.get(key))}")
    return out


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def _choose(final: Path, unfinished: list[FoundStore], fingerprint: str | None,
            resume: bool, settings: dict[str, Any] | None) -> FoundStore | None:
    """The store to resume, or the refusal (see :func:`clear_stale`)."""
    from tilesegment.errors import UnfinishedOutputError

    same = [s for s in unfinished if fingerprint is not None and s.fingerprint == fingerprint]
    if resume and same:
        return same[0]
    if not unfinished:
        if resume:
            warnings.warn(f"--resume: no unfinished run of {final} found; running from the "
                          "start", ResumeWarning, stacklevel=4)
        return None
    store = unfinished[0]
    if not resume:
        raise UnfinishedOutputError(
            f"{final} has an unfinished run ({store.path.name}, {_progress(store.path)}): "
            "pass --resume to finish it, or --overwrite to discard it and start over")
    differ = settings_diff(store_record(store.path).get(SETTINGS_KEY), settings)
    what = "; ".join(differ) if differ else (
        f"fingerprint {layout.store_key(store.fingerprint or '')} → "
        f"{layout.store_key(fingerprint or '')}")
    raise UnfinishedOutputError(
        f"cannot resume {final}: the unfinished run there ({store.path.name}, "
        f"{_progress(store.path)}) has other settings: {what}; run with those settings, or "
        "pass --overwrite instead of --resume to discard it and start over")


def _clear_staged(final: Path) -> None:
    """Remove the GeoTIFFs a killed run staged beside ``final`` before publishing
    (``.<name>.partial-<token>.tif``, its ``.tiled`` stage for a COG, GDAL's ``.ovr.tmp``
    and the like): regular files of this user, named so, that are TIFFs (or empty, as a
    write cut short leaves them), when no publication is pending. Under the output's lock
    only (the run that staged them is then gone)."""
    parent = final.parent
    if atomic.pending_journals(final) or not parent.is_dir():
        return
    prefix = f".{final.name}{layout.PARTIAL_MARK}"
    for path in sorted(e for e in parent.iterdir() if e.name.startswith(prefix)):
        token, _, rest = path.name[len(prefix):].partition(".")
        if not rest.startswith("tif") or not token or not set(token) <= set("0123456789abcdef"):
            continue
        if path.is_symlink() or not path.is_file() or path.lstat().st_uid != os.geteuid():
            _warn(f"left {path} alone: it is named like a staged GeoTIFF of {final.name}, "
                  "but is not a regular file of yours")
            continue
        if not _tiff_or_empty(path):
            _warn(f"left {path} alone: it is named like a staged GeoTIFF of {final.name}, "
                  "but is not a TIFF")
            continue
        amount = _remove(path, "")
        if amount is not None:
            _warn(f"removed {path} ({amount}): a GeoTIFF an interrupted run staged before "
                  "publishing it")


def _clear_pyramids(final: Path) -> None:
    """Remove the OME-Zarr pyramids a run killed during ``finalize`` left half-built beside
    ``final`` (``.<name>.partial-<token>.pyramid``): directories of this user holding a
    Zarr group (or nothing yet). Under the output's lock only."""
    parent = final.parent
    if not parent.is_dir():
        return
    prefix = f".{final.name}{layout.PARTIAL_MARK}"
    for path in sorted(e for e in parent.iterdir() if e.name.startswith(prefix)):
        token, _, rest = path.name[len(prefix):].partition(".")
        if f".{rest}" != layout.PYRAMID_SUFFIX or not token \
                or not set(token) <= set("0123456789abcdef"):
            continue
        if path.is_symlink() or not path.is_dir() or path.lstat().st_uid != os.geteuid() \
                or any(e.name != layout.ZARR_JSON and not e.name.isdigit()
                       for e in path.iterdir()):
            _warn(f"left {path} alone: it is named like a pyramid an interrupted run was "
                  f"building for {final.name}, but does not hold only that")
            continue
        amount = _remove(path, "")
        if amount is not None:
            _warn(f"removed {path} ({amount}): an OME-Zarr pyramid an interrupted run was "
                  "building")


def _tiff_or_empty(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(4)
    return head in (b"", b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


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
