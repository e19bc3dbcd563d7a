"""Temporary sibling names and the one rename that makes an output visible.

Everything is written under ``.<name>.partial-<token>`` next to the final path, so a run
killed midway leaves only a hidden, obviously partial name; :func:`publish` moves it to the
final name in one rename (``os.replace`` for a file over a file; for a directory, or to
replace a directory, the old one is first moved aside to ``.<name>.old-<token>`` and is
put back if the rename fails).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from tilesegment.errors import OutputError, OutputExistsError

PARTIAL_MARK = ".partial-"
OLD_MARK = ".old-"


def new_token() -> str:
    """A short random token that keeps concurrent runs' temporary names apart."""
    return secrets.token_hex(4)


def partial_path(final: Path, token: str, suffix: str = "") -> Path:
    """``<dir>/.<name>.partial-<token><suffix>``: a temporary sibling of ``final``."""
    return final.with_name(f".{final.name}{PARTIAL_MARK}{token}{suffix}")


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


def _link_no_clobber(src: Path, dst: Path) -> bool:
    """Move file ``src`` to ``dst`` only if ``dst`` does not exist (hard link + unlink).

    Returns False when hard links are not supported here (the caller falls back to rename).
    """
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
    """
    try:
        if not exists(dst):
            if src.is_file() and _link_no_clobber(src, dst):
                return
            # A directory rename fails on an existing non-empty directory or file.
            os.rename(src, dst)
            return
        if not overwrite:
            raise OutputExistsError(f"{dst} exists; pass --overwrite to replace it")
        if src.is_file() and dst.is_file() and not dst.is_symlink():
            os.replace(src, dst)  # atomic: readers see the old file or the new, never none
            return
        aside = dst.with_name(f".{dst.name}{OLD_MARK}{new_token()}")
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
