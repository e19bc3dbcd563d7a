"""Where block tasks run: the local threaded scheduler, or a ``distributed`` cluster.

The same list of ``dask.delayed`` tasks runs everywhere; nothing else in the pipeline knows
which scheduler is used. Tasks return small results only.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

LOCAL_SCHEDULERS = ("threads", "synchronous")


def compute(tasks: list, scheduler: Any = None, workers: int = 1, progress: bool = False):
    """Compute ``tasks`` (``dask.delayed``) and return their results in order.

    ``scheduler``: ``None``/``"threads"`` (local threads, ``workers`` of them),
    ``"synchronous"``, a ``distributed.Client``, or a scheduler address ``tcp://host:port``.
    """
    import dask

    if scheduler is None or scheduler in LOCAL_SCHEDULERS:
        name = scheduler or "threads"
        with _local_progress(progress):
            return list(dask.compute(*tasks, scheduler=name, num_workers=workers))
    _drop_cancelled_gather_noise()
    with _client(scheduler) as client:
        futures = client.compute(tasks)
        try:
            if progress:  # distributed draws on stdout; stdout is for results
                from distributed import progress as show

                with contextlib.redirect_stdout(sys.stderr):
                    show(futures)
            return client.gather(futures)
        except BaseException as exc:
            client.cancel(futures)  # stop the other blocks: the run has failed
            _raise_named(exc)
            raise


def _raise_named(exc: BaseException) -> None:
    """A task that killed every worker it ran on (``KilledWorker``) is reported by its
    block's position (:func:`tilesegment.resume.killed_block`)."""
    from tilesegment.resume import killed_block

    named = killed_block(exc)
    if named is not None:
        raise named from None


class _CancelledGatherFilter(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved … AllExit" records: the
    internal tasks of a ``gather`` whose futures were cancelled (a failed or interrupted
    run) log one traceback each when collected, after the run has reported its one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[0] if record.exc_info else None
        return not (exc is not None and exc.__name__ == "AllExit"
                    and exc.__module__.startswith("distributed"))


def _drop_cancelled_gather_noise() -> None:
    log = logging.getLogger("asyncio")
    if not any(isinstance(f, _CancelledGatherFilter) for f in log.filters):
        log.addFilter(_CancelledGatherFilter())


@contextlib.contextmanager
def _local_progress(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    from dask.diagnostics import ProgressBar

    with ProgressBar(out=sys.stderr, minimum=1.0):
        yield


@contextlib.contextmanager
def _client(scheduler: Any) -> Iterator[Any]:
    from distributed import Client

    if isinstance(scheduler, Client):
        yield scheduler
    elif isinstance(scheduler, str) and scheduler.endswith(".json"):
        with Client(scheduler_file=scheduler) as client:
            yield client
    else:
        with Client(scheduler) as client:
            yield client


def start_local_cluster(n_workers: int, threads_per_worker: int = 1,
                        dashboard: bool = False):
    """Start a ``distributed`` cluster of ``n_workers`` processes that no other process can
    enter (TLS with temporary credentials, listening on 127.0.0.1 only, no HTTP server unless
    ``dashboard``, then on 127.0.0.1); its workers compute on the CPU (a pool of GPU
    workers: :func:`start_gpu_pool`). Returns a Client holding the credentials; close it
    and ``client.cluster``."""
    from tilesegment.local_cluster import start

    return start(n_workers, threads_per_worker, dashboard=dashboard)


def start_gpu_pool(devices: tuple[int, ...], dashboard: bool = False):
    """Start one worker process per CUDA device index in ``devices`` (``--devices``), each
    seeing only its own GPU (as ``cuda:0``) and running two block tasks at a time, closed
    like :func:`start_local_cluster`; dask-cuda's ``LocalCUDACluster`` when it is installed.
    Returns a Client; close it and ``client.cluster``."""
    from tilesegment.local_cluster import start_gpu_pool as start

    return start(tuple(devices), dashboard=dashboard)


@contextlib.contextmanager
def local_cluster(n_workers: int, threads_per_worker: int = 1,
                  dashboard: bool = False) -> Iterator[Any]:
    """:func:`start_local_cluster` as a context manager: yields the Client, closes both."""
    client = start_local_cluster(n_workers, threads_per_worker, dashboard=dashboard)
    try:
        yield client
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
