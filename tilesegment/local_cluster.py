"""The ``distributed`` cluster tilesegment starts itself (``--local-cluster N``), closed to
every other process.

- **TLS with temporary credentials** (``Security.temporary()``: a key and a self-signed
  certificate made in memory for this run, never written to disk). The scheduler, the
  nannies and the workers require a client certificate signed by it, so a process without
  the run's credentials cannot connect, let alone submit code that runs as this user.
- **Loopback only**: every comm listens on ``tls://127.0.0.1``.
- **No HTTP server** unless a dashboard is asked for. ``distributed`` starts one in the
  scheduler (port 8787, ``/health``, ``/metrics``, ``/json``, …) and one in each worker even
  with ``dashboard_address=None``: that argument only drops the Bokeh pages. The classes
  below do not start them at all. With ``dashboard=True`` only the scheduler serves one,
  on 127.0.0.1.

This module imports ``distributed`` at import time: import it only to start a cluster.
Worker processes import it too (the worker class travels by name).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from distributed import Client, Nanny, Scheduler, SpecCluster, Worker, WorkerPlugin
from distributed.http.routing import RoutingApplication
from distributed.security import Security
from distributed.worker_memory import parse_memory_limit

from tilesegment.workers import (
    DEVICE_ENV,
    ModelRecipe,
    configure,
    cuda_device_count,
    get_predictor,
    with_content_key,
)

HOST = "127.0.0.1"
DASHBOARD_PORT = 8787
_log = logging.getLogger(__name__)


def _routes_only(node: Any, routes: list) -> None:
    # What start_http_server sets besides the server itself: the routing application,
    # which later code (close, the jupyter hook) may look at. Nothing listens.
    node.http_application = RoutingApplication(routes)


class LoopbackScheduler(Scheduler):
    """A scheduler that starts its HTTP server only when given a dashboard address."""

    def start_http_server(self, routes, dashboard_address, default_port=0,
                          ssl_options=None) -> None:
        if dashboard_address is None:
            _routes_only(self, routes)
            return
        super().start_http_server(routes, dashboard_address, default_port, ssl_options)


class QuietWorker(Worker):
    """A worker without an HTTP server (its metrics reach the scheduler over its comm) that
    leaves Ctrl-C and a closed terminal to the run: SIGINT and SIGHUP reach every process of
    the job, and the run, not a dying worker, stops and closes the cluster (a worker's asyncio
    runner would turn SIGINT into a KeyboardInterrupt traceback)."""

    def __init__(self, *args, **kwargs) -> None:
        if threading.current_thread() is threading.main_thread():  # its own process
            for sig in (signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
        super().__init__(*args, **kwargs)

    def start_http_server(self, routes, dashboard_address, default_port=0,
                          ssl_options=None) -> None:
        _routes_only(self, routes)


class ModelPoolPlugin(WorkerPlugin):
    """Sets up each worker's model pool when it starts (``client.register_plugin``):
    its device and pool bound (``workers.configure``; ``None`` keeps a setting) and,
    optionally, builds ``recipes`` into the pool at once so the first block task finds
    them. Recipes get their content key here, in the client."""

    name = "tilesegment-model-pool"

    def __init__(self, device: str | None = None, max_models: int | None = None,
                 recipes: tuple[ModelRecipe, ...] = ()) -> None:
        self.device, self.max_models = device, max_models
        self.recipes = tuple(r if r.key else with_content_key(r) for r in recipes)

    def setup(self, worker: Worker) -> None:
        configure(device=self.device, max_models=self.max_models)
        for recipe in self.recipes:
            get_predictor(recipe)


GPU_THREADS = 2
"""Threads of a GPU worker: two block tasks in flight per GPU, so reading and merging one
block overlaps the model calls of the other (the calls themselves take turns, see
:func:`tilesegment.infer.device_lock`)."""


def start(n_workers: int, threads_per_worker: int = 1, dashboard: bool = False) -> Client:
    """Start a cluster of ``n_workers`` CPU worker processes (each under a nanny, named
    0..n-1, told ``cpu`` in its environment) with ``threads_per_worker`` threads each;
    return a Client holding the run's credentials (``client.cluster`` is the cluster)."""
    env = {i: {DEVICE_ENV: "cpu"} for i in range(n_workers)}
    return _closed_cluster(env, threads_per_worker, dashboard)


def start_gpu_pool(devices: tuple[int, ...], dashboard: bool = False,
                   use_dask_cuda: bool | None = None, check: bool = True) -> Client:
    """Start one worker process per CUDA device index in ``devices``, each seeing only its
    own GPU as ``cuda:0``, with :data:`GPU_THREADS` threads; return the Client.

    With dask-cuda importable (``use_dask_cuda=None``) its ``LocalCUDACluster`` starts the
    workers (its CPU affinity per GPU), on 127.0.0.1 with TLS; else this module's own closed
    cluster gives worker *i* ``CUDA_VISIBLE_DEVICES=devices[i]``. ``check=False`` skips the
    check that the devices exist (the tests start the pool on a CPU machine to see each
    worker's environment)."""
    if check:
        gpus = cuda_device_count()
        missing = [d for d in devices if d >= gpus]
        if missing:
            from tilesegment.errors import ModelError

            raise ModelError(f"CUDA device(s) {missing} asked for, but {gpus} are present")
    if use_dask_cuda is None:
        import importlib.util

        use_dask_cuda = importlib.util.find_spec("dask_cuda") is not None
    physical = visible_devices(devices)
    if use_dask_cuda:
        client = _dask_cuda_pool(physical, dashboard)
    else:
        env = {i: {"CUDA_VISIBLE_DEVICES": d, DEVICE_ENV: "cuda:0"}
               for i, d in enumerate(physical)}
        client = _closed_cluster(env, GPU_THREADS, dashboard)
    return client


def visible_devices(devices: tuple[int, ...], environ: dict | None = None) -> tuple[str, ...]:
    """The ``CUDA_VISIBLE_DEVICES`` entries of torch's device indices ``devices`` in this
    process: when this process itself sees a subset (``CUDA_VISIBLE_DEVICES=2,3``), its
    ``cuda:0`` is the GPU listed first, so a worker for index 0 must be given ``2``."""
    environ = os.environ if environ is None else environ
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None or not listed.strip():
        return tuple(str(d) for d in devices)
    entries = [e.strip() for e in listed.split(",") if e.strip()]
    return tuple(entries[d] if d < len(entries) else str(d) for d in devices)


def _dask_cuda_pool(devices: tuple[str, ...], dashboard: bool) -> Client:
    """dask-cuda's cluster: worker *i* sees ``devices`` rotated to start at its own (its
    ``cuda:0``); the pool plugin tells each worker so."""
    from dask_cuda import LocalCUDACluster

    security = Security.temporary()
    cluster = LocalCUDACluster(
        CUDA_VISIBLE_DEVICES=",".join(devices), n_workers=len(devices),
        threads_per_worker=GPU_THREADS, host=HOST, protocol="tls://", security=security,
        dashboard_address=f"{HOST}:{DASHBOARD_PORT}" if dashboard else None,
        worker_class=QuietWorker, silence_logs=logging.CRITICAL, name="tilesegment")
    try:
        client = Client(cluster, security=security)
        client.register_plugin(ModelPoolPlugin(device="cuda:0"))
        return client
    except BaseException:
        cluster.close()
        raise


def _closed_cluster(env: dict[int, dict[str, str]], threads_per_worker: int,
                    dashboard: bool) -> Client:
    """One worker process per key of ``env`` (its environment), closed to other processes
    (see the module's docstring)."""
    security = Security.temporary()
    scheduler = {"cls": LoopbackScheduler, "options": {
        "host": HOST, "port": 0, "protocol": "tls://", "security": security,
        "dashboard": dashboard,
        "dashboard_address": f"{HOST}:{DASHBOARD_PORT}" if dashboard else None,
    }}
    n_workers = len(env)
    options = {
        "host": HOST, "protocol": "tls://", "security": security,
        "nthreads": threads_per_worker, "worker_class": QuietWorker,
        "dashboard": False, "dashboard_address": None,
        "memory_limit": parse_memory_limit("auto", 1, n_workers, logger=_log),
        # a failing block is reported once, by the client, as one line
        "silence_logs": logging.CRITICAL,
    }
    workers = {i: {"cls": Nanny, "options": {**options, "env": dict(env[i])}} for i in env}
    cluster = SpecCluster(scheduler=scheduler, workers=workers,
                          security=security, silence_logs=logging.CRITICAL,
                          name="tilesegment")
    try:
        return Client(cluster, security=security)
    except BaseException:
        cluster.close()
        raise
