"""One run per output: an exclusive ``flock`` on a hidden file beside the output.

A run that writes ``<dir>/<name>`` first locks ``<dir>/.<name>.lock`` and holds it until it
ends; a second run onto the same path is refused at once, before it builds a model or reads
a pixel. The kernel drops a ``flock`` when its process dies, so a run killed with SIGKILL
leaves at most a stale file that the next run locks and removes, never a lock that blocks.

The lock file is opened with ``O_NOFOLLOW`` and mode 0600 and must be a regular file owned
by this user: a symlink or a file planted by someone else is refused, not followed.
The lock is re-entrant within one thread (the CLI takes it before starting a cluster, then
``segment`` takes it again); another thread of the same process is refused like another
process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tilesegment.errors import OutputError, OutputLockedError
from tilesegment.write import layout
from tilesegment.write.layout import LOCK_SUFFIX

_ATTEMPTS = 20


def lock_path(output: str | Path) -> Path:
    """``<dir>/.<name>.lock``: the lock file of the output ``<dir>/<name>``."""
    final = Path(output).expanduser().absolute()
    return layout.lock_path(final)


@dataclass
class _Held:
    fd: int
    thread: int
    count: int = 1
    created_dirs: list[Path] = field(default_factory=list)


_held: dict[Path, _Held] = {}
_registry = threading.Lock()


def acquire(output: str | Path) -> Path:
    """Lock the output ``output`` for this run; return the lock file's path.

    Raises :class:`OutputLockedError` when another run (another process, or another thread
    of this one) holds it, :class:`OutputError` when the lock file cannot be made safely.
    Missing parent directories are created (and removed again by :func:`release` while
    still empty).
    """
    path = lock_path(output)
    with _registry:
        held = _held.get(path)
        if held is not None:
            if held.thread == threading.get_ident():
                held.count += 1
                return path
            raise OutputLockedError(_busy(path, os.getpid(), same_process=True))
        created = _make_parents(path.parent)
        try:
            fd = _lock(path)
        except BaseException:
            _remove_empty(created)
            raise
        _held[path] = _Held(fd, threading.get_ident(), created_dirs=created)
    return path


def release(output: str | Path) -> None:
    """Undo one :func:`acquire` of ``output``; the last one removes the lock file and
    unlocks. Releasing a lock not held is a no-op."""
    path = lock_path(output)
    with _registry:
        held = _held.get(path)
        if held is None or held.thread != threading.get_ident():
            return
        held.count -= 1
        if held.count:
            return
        del _held[path]
        # Unlink before unlocking: a run waiting on this inode then sees it is gone and
        # locks a fresh file instead (see _lock).
        with contextlib.suppress(OSError):
            if _same_file(os.fstat(held.fd), path):
                os.unlink(path)
        os.close(held.fd)
        _remove_empty(held.created_dirs)


@contextlib.contextmanager
def output_lock(output: str | Path | None) -> Iterator[None]:
    """Hold the lock of ``output`` (nothing when ``output`` is None) for the ``with`` body."""
    if output is None:
        yield
        return
    acquire(output)
    try:
        yield
    finally:
        release(output)


def holds(output: str | Path) -> bool:
    """True when this process holds the lock of ``output`` (no other run writes it)."""
    with _registry:
        return lock_path(output) in _held


def is_locked(output: str | Path) -> bool:
    """True when some process holds the lock of ``output`` (a diagnostic for tests)."""
    path = lock_path(output)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _lock(path: Path) -> int:
    """Open, check and ``flock`` the lock file; return its descriptor."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OutputError(f"{path} is a symbolic link, not a lock file: refusing to "
                                  "follow it (remove it if it is not yours)") from None
            raise OutputError(f"cannot create the lock file {path}: "
                              f"{exc.strerror or exc}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                raise OutputError(f"{path} is not a lock file of this user: refusing to use "
                                  "it (remove it if no run is writing the output)")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OutputLockedError(_busy(path, _read_pid(fd))) from None
            # The holder before us may have unlinked this file just before unlocking it:
            # then the lock to take is the file now at the path, if any.
            try:
                current = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                current = None
            if current is None or not _same(info, current):
                os.close(fd)
                continue
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
    raise OutputLockedError(f"cannot lock {path}: it keeps being replaced by other runs")


def _busy(path: Path, pid: int | None, same_process: bool = False) -> str:
    output = path.with_name(path.name[1 : -len(LOCK_SUFFIX)])
    who = ("another run in this process" if same_process
           else f"another run (pid {pid})" if pid else "another run")
    return (f"{output} is being written by {who} (lock {path.name}): wait for it to end "
            "or choose another output")


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _same_file(info: os.stat_result, path: Path) -> bool:
    return _same(info, os.stat(path, follow_symlinks=False))


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, deepest first."""
    missing = []
    for parent in (folder, *folder.parents):
        if os.path.lexists(parent):
            break
        missing.append(parent)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {folder}: "
                          f"{exc.strerror or exc}") from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; stops mattering once one is not empty
        try:
            folder.rmdir()
        except OSError:
            return
