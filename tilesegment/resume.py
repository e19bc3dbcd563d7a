"""Resume, and what a stopped or failed run keeps.

A run writes its blocks into a block store keyed by its plan's fingerprint; each block is
recorded in the store's manifest once durably stored (:mod:`tilesegment.write.manifest`).
When the run is interrupted (Ctrl-C, SIGTERM) or fails (an unreadable block, a model error,
a full disk, a block that kills its worker), :func:`keep_store` keeps that store when it
holds finished blocks and says so; ``segment(..., resume=True)`` (``--resume``) reopens it
and computes only the blocks not recorded (:func:`resume_plan` makes the plan use the
store's block size). Task keys name their block (:func:`block_key`), so a task that kills
every worker it runs on is reported by its position (:func:`killed_block`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tilesegment.errors import BlockFailedError, GeometryError

RESUME_HINT = "rerun the same command with --resume"
_KEY = re.compile(r"block-r(\d+)-c(\d+)-")


def block_key(window: tuple[int, int, int, int], token: str) -> str:
    """The Dask task key of the block task of ``window`` (``(r0, r1, c0, c1)``):
    ``block-r{row0}-c{col0}-<token>``, so a failure names the block."""
    return f"block-r{window[0]}-c{window[2]}-{token}"


def killed_block(exc: BaseException) -> BlockFailedError | None:
    """A :class:`BlockFailedError` naming the block for distributed's ``KilledWorker``
    about a block task (every worker that ran it died); None for anything else."""
    if type(exc).__name__ != "KilledWorker":
        return None
    match = _KEY.search(str(exc.args[0]) if exc.args else str(exc))
    if match is None:
        return None
    row0, col0 = int(match.group(1)), int(match.group(2))
    return BlockFailedError(
        f"the block at row {row0}, col {col0} (px) killed every worker process that ran it "
        "(a crash in the model or a library, or out of memory)")


def resume_plan(plan: Any, rebuild: Callable[[int], Any], block_size: int | None) -> Any:
    """``plan`` with the block shape of the unfinished store it resumes (the block size is
    not in the fingerprint): ``rebuild(side)`` builds the plan again with that block size.
    GeometryError when an explicit ``block_size`` gives other blocks than the store's;
    ``plan`` itself when there is no store of its fingerprint (``create_output`` then says
    what it finds)."""
    from tilesegment.write.stores import find_block_store, store_block_shape

    final = plan.output.path
    store = find_block_store(final, plan.fingerprint) if final is not None else None
    shape = store_block_shape(store) if store is not None else None
    if shape is None or tuple(shape) == tuple(plan.execution.block):
        return plan
    if block_size is not None:
        raise GeometryError(
            f"--resume: --block-size {block_size} gives blocks of "
            f"{plan.execution.block[0]}x{plan.execution.block[1]} px, but the unfinished run "
            f"of {final} has {shape[0]}x{shape[1]}: resume without --block-size (or with "
            f"--block-size {max(shape)})")
    return rebuild(max(shape))


def keep_store(target: Any, exc: BaseException, total: int) -> None:
    """After ``exc`` stopped the run writing ``target``: stop its block tasks, keep the
    block store when blocks are done (else remove everything), and say so: a
    KeyboardInterrupt gets ``kept = (done, total, store)`` for the CLI's line, any other
    exception a note that the run can be resumed once the cause is fixed."""
    from tilesegment.block import request_stop

    request_stop(target.run_id)
    store = target.keep()
    if store is None:
        return
    done = len(target.done_blocks())
    if isinstance(exc, KeyboardInterrupt):
        exc.kept = (done, total, Path(store))  # type: ignore[attr-defined]
        return
    exc.add_note(f"({done} of {total} blocks are done and kept in {Path(store).name}: once "
                 f"this is fixed, {RESUME_HINT} to finish)")


def kept_line(kept: tuple[int, int, Path]) -> str:
    """The CLI's words for what an interrupted run kept. The blocks are counted again: the
    worker processes of a cluster may have recorded a few more until it was closed."""
    from tilesegment.write.manifest import count_done

    done, total, store = kept
    done = max(done, count_done(store))
    return f"{done} of {total} blocks kept in {store.name}; {RESUME_HINT} to finish."
