"""Temporary sibling names and the renames that make an output visible.

Everything is written under ``.<name>.partial-<token>`` next to the final path, so a run
killed midway leaves only a hidden, obviously partial name. Publishing:

- one file or directory where nothing is: a rename that never clobbers (Linux
  ``renameat2(RENAME_NOREPLACE)``, else a hard link for files / ``rename`` for directories);
- a directory over an old one (a Zarr ``--overwrite``): ``renameat2(RENAME_EXCHANGE)`` swaps
  them in one step, so the final path never lacks an output, then the old tree is removed.
  Where the exchange is not available the old one is renamed aside to
  ``.<name>.old-<token>`` first; :func:`recover` (run before every new output at that path)
  puts it back if a run died between the two renames;
- a set of files (a GeoTIFF mask and its siblings), :func:`publish_set`: each old file is
  hard-linked to a ``.old-`` backup and a journal ``.<mask>.publishing.json`` naming
  every move is created (exclusively: one publication at a time) before the first rename.
  A failure rolls the old set back; a run killed in the middle leaves the journal, and
  :func:`recover` completes the publication (every new file was verified before the
  journal was written).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import secrets
import shutil
import socket
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

from tilesegment.errors import OutputError, OutputExistsError
from tilesegment.write.layout import (  # noqa: F401  (re-exported: callers and tests use atomic.*)
    JOURNAL_SUFFIX,
    OLD_MARK,
    PARTIAL_MARK,
    block_store_key,
    final_of,
    journal_path,
    old_path,
    old_prefix,
    partial_path,
)

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def new_token() -> str:
    """A short random token that keeps concurrent runs' temporary names apart."""
    return secrets.token_hex(4)


def exists(path: Path) -> bool:
    """True when anything (file, directory, even a dangling symlink) is at ``path``."""
    return os.path.lexists(path)


def refuse_existing(paths: Iterable[Path]) -> None:
    """Raise :class:`OutputExistsError` for the first of ``paths`` that exists."""
    for path in paths:
        if exists(path):
            raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")


def remove(path: Path, attempts: int = 5) -> None:
    """Remove a file, symlink or directory tree at ``path``; nothing there is fine.

    A tree that is still being written to (a block task in another process, say) can make
    ``rmtree`` fail with "Directory not empty": it is retried ``attempts`` times.
    """
    for attempt in range(attempts):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            return
        except FileNotFoundError:
            return
        except OSError:
            if attempt == attempts - 1 or not path.is_dir():
                raise
            time.sleep(0.01 * 2**attempt)


def remove_prefixed(path: Path) -> None:
    """Remove ``path`` and every sibling whose name starts with ``path.name``.

    This also catches files GDAL drops next to its output (``*.ovr.tmp`` and the like).
    """
    parent = path.parent
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        if entry.name.startswith(path.name):
            remove(entry)


def remove_partials(final: Path, token: str) -> None:
    """Remove every ``.<name>.partial-<token>*`` sibling of ``final``."""
    remove_prefixed(partial_path(final, token))


def fsync_path(path: Path) -> None:
    """Flush a file's (or a directory's entries') data to disk; errors raise OSError."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux ``renameat2``; False where the call or the flag is not supported here (the
    caller falls back), OSError for any other failure (``dst`` exists, ...)."""
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                     ctypes.c_uint]
    if func(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one step (both must exist); False where not supported."""
    return _renameat2(a, b, _RENAME_EXCHANGE)


def _link_no_clobber(src: Path, dst: Path) -> bool:
    """Move file ``src`` to ``dst`` only if ``dst`` does not exist.

    Returns False when neither ``renameat2`` nor hard links work here (the caller falls
    back to rename).
    """
    try:
        if _renameat2(src, dst, _RENAME_NOREPLACE):
            return True
    except FileExistsError:
        raise OutputExistsError(f"{dst} exists; pass --overwrite to replace it") from None
    if not src.is_file():
        return False
    try:
        os.link(src, dst)
    except FileExistsError:
        raise OutputExistsError(f"{dst} exists; pass --overwrite to replace it") from None
    except OSError:
        return False
    src.unlink()
    return True


def publish(src: Path, dst: Path, *, overwrite: bool) -> None:
    """Rename the finished ``src`` to ``dst``, replacing an old ``dst`` only if ``overwrite``.

    Without ``overwrite`` an output that appeared at ``dst`` while the run was going is not
    clobbered: :class:`OutputExistsError`, and ``src`` stays for the caller to remove.
    A directory replaces a directory by an atomic exchange where the system has one; the
    final path never lacks an output.
    """
    try:
        if not exists(dst):
            if _link_no_clobber(src, dst):
                return
            # A directory rename fails on an existing non-empty directory or file.
            os.rename(src, dst)
            return
        if not overwrite:
            raise OutputExistsError(f"{dst} exists; pass --overwrite to replace it")
        if src.is_file() and dst.is_file() and not dst.is_symlink():
            os.replace(src, dst)  # atomic: readers see the old file or the new, never none
            return
        if exchange(src, dst):
            try:
                remove(src)  # the old output, now under the partial name
            except OSError as exc:  # the new output is in place: only cleanup is left
                warnings.warn(f"{dst} was replaced, but the old output could not be "
                              f"removed from {src}: {exc}", RuntimeWarning, stacklevel=2)
            return
        aside = old_path(dst, new_token())
        os.rename(dst, aside)
        try:
            os.rename(src, dst)
        except BaseException:
            with contextlib.suppress(OSError):
                os.rename(aside, dst)
            raise
        remove(aside)
    except OutputExistsError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot move {src} to {dst}: {exc}") from exc


def publish_set(moves: Sequence[tuple[Path, Path]], *, overwrite: bool, token: str,
                run_id: str, scratch: Path | None = None) -> None:
    """Publish several finished files ``(src, dst)`` as one unit (the last is the mask,
    whose completion record names the others).

    Each old ``dst`` is hard-linked to a backup and a journal is written before the first
    rename. Any failure puts the old files back (and removes new ones where nothing was):
    the set at the final paths is the old one or the new one, never a mix. A process killed
    in the middle leaves the journal for :func:`recover`, which also removes ``scratch``
    (the block store the files were made from: it is keyed by the run's fingerprint, not by
    ``token``).
    """
    if not moves:
        return
    mask = moves[-1][1]
    journal = journal_path(mask)
    recover(mask)  # a publication a dead run left half-done comes first
    entries: list[dict[str, str | None]] = []
    done: list[dict[str, str | None]] = []
    owned = False
    try:
        for src, dst in moves:
            backup: Path | None = None
            if exists(dst):
                if not overwrite:
                    raise OutputExistsError(f"{dst} exists; pass --overwrite to replace it")
                if not dst.is_file() or dst.is_symlink():
                    raise OutputError(f"cannot replace {dst}: not a regular file")
                backup = old_path(dst, token)
                try:
                    os.link(dst, backup)
                except OSError:
                    shutil.copy2(dst, backup)  # no hard links here: a copy to roll back to
            entries.append({"src": str(src), "dst": str(dst),
                            "backup": str(backup) if backup else None})
        record = {"run_id": run_id, "token": token, "pid": os.getpid(),
                  "host": socket.gethostname(), "moves": entries}
        if scratch is not None:
            record["scratch"] = str(scratch)
        _write_journal(journal, record)
        owned = True
        for entry in entries:
            src, dst = Path(str(entry["src"])), Path(str(entry["dst"]))
            if entry["backup"] is None and not exists(dst):
                if not _link_no_clobber(src, dst):
                    os.rename(src, dst)
            elif entry["backup"] is None and not overwrite:
                raise OutputExistsError(f"{dst} exists; pass --overwrite to replace it")
            else:
                os.replace(src, dst)
            done.append(entry)
        with contextlib.suppress(OSError):
            fsync_path(mask.parent)
    except BaseException as exc:
        _roll_back(done)
        for entry in entries:
            if entry["backup"]:
                with contextlib.suppress(OSError):
                    Path(entry["backup"]).unlink()
        if owned:
            with contextlib.suppress(OSError):
                journal.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, OutputError | OutputExistsError):
            raise OutputError(f"cannot publish {mask}: {exc}") from exc
        raise
    with contextlib.suppress(OSError):
        journal.unlink()
    for entry in entries:
        if entry["backup"]:
            with contextlib.suppress(OSError):
                Path(entry["backup"]).unlink()


def _write_journal(path: Path, record: dict) -> None:
    """Create the journal ``path`` with ``record``, whole, only if it does not exist
    (OutputError naming the other run when it does)."""
    tmp = path.with_name(f"{path.name}.{record['token']}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # appears whole, and never over another run's journal
        except FileExistsError:
            raise OutputError(
                f"another run is publishing {path.name[1:-len(JOURNAL_SUFFIX)]} in "
                f"{path.parent} right now (its journal is {path}); run again once it has "
                "finished") from None
        except OSError:  # no hard links here: exclusive create, then the content
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(record, fh)
                fh.flush()
                os.fsync(fh.fileno())
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    with contextlib.suppress(OSError):
        fsync_path(path.parent)


def _roll_back(done: list[dict[str, str | None]]) -> None:
    """Undo published moves, newest first: the old file back, or the new one removed."""
    for entry in reversed(done):
        dst = Path(str(entry["dst"]))
        with contextlib.suppress(OSError):
            if entry["backup"]:
                os.replace(Path(entry["backup"]), dst)
            else:
                dst.unlink()


def _alive(record: dict) -> bool:
    """Whether the process that wrote a journal may still be running (same host only)."""
    if record.get("host") != socket.gethostname():
        return True  # cannot tell: leave it to that host
    try:
        os.kill(int(record.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def pending_journals(final: Path) -> list[Path]:
    """The journal of a set publication at ``final`` that did not finish, if any."""
    journal = journal_path(final)
    return [journal] if journal.is_file() else []


def recover(final: Path) -> list[str]:
    """Finish what a killed run left half-done at ``final``; return what was done.

    - a set publication's journal whose process is gone: every new file still under its
      partial name is renamed into place (all were verified before the journal was
      written), then the backups and the journal are removed;
    - nothing at ``final`` but an old output moved aside (``.<name>.old-*``, the fallback
      of a directory replacement): the old output is put back.
    """
    actions: list[str] = []
    for journal in pending_journals(final):
        try:
            record = json.loads(journal.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if _alive(record):
            continue
        for entry in record.get("moves", []):
            src, dst = Path(entry["src"]), Path(entry["dst"])
            if src.is_file():
                os.replace(src, dst)
                actions.append(f"completed the interrupted publication of {dst}")
        for entry in record.get("moves", []):
            if entry.get("backup"):
                with contextlib.suppress(OSError):
                    Path(entry["backup"]).unlink()
            if record.get("token"):  # the dead run's scratch store and stray temporaries
                with contextlib.suppress(OSError):
                    remove_partials(Path(entry["dst"]), str(record["token"]))
        scratch = Path(str(record.get("scratch") or ""))
        if (record.get("scratch") and scratch.parent == journal.parent
                and block_store_key(final, scratch.name) is not None):
            with contextlib.suppress(OSError):
                remove(scratch)  # a store keyed by the fingerprint, not by the token
        journal.unlink()
    if not exists(final) and final.parent.is_dir():
        prefix = old_prefix(final)
        olds = [p for p in final.parent.iterdir() if p.name.startswith(prefix)]
        if len(olds) == 1 and olds[0].is_dir():
            os.rename(olds[0], final)
            actions.append(f"restored {final} from an interrupted replacement")
    return actions
