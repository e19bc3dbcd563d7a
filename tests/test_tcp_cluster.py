"""A real cluster over TCP on 127.0.0.1, as a user would start one: ``dask scheduler
--scheduler-file F`` and two ``dask worker --scheduler-file F --nworkers 1 --nthreads 2``
processes, then ``tilesegment run --scheduler F``. Its output is byte-identical to the
threaded run of the same settings (every chunk file), and every process is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.runs import REPO, write_input

pytest.importorskip("distributed")

SETTINGS = ["--model", "unet-tiny", "--classes", "3", "--seed", "4", "--tile", "32",
            "--halo", "8", "--block-size", "32", "--save-probabilities", "--no-progress"]


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "dask", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process group this test started (a worker's nanny and its worker),
    then SIGKILL what is left."""
    for proc in reversed(procs):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_for_workers(scheduler_file: Path, n: int, procs: list[subprocess.Popen]) -> None:
    from distributed import Client

    for _ in range(600):
        if scheduler_file.exists():
            break
        if any(p.poll() is not None for p in procs):
            pytest.fail("a dask process ended before the cluster was up")
        time.sleep(0.1)
    with Client(scheduler_file=str(scheduler_file), timeout=30) as client:
        client.wait_for_workers(n, timeout=60)
        assert len(client.scheduler_info()["workers"]) == n


def _chunks(store: Path) -> dict[str, bytes]:
    """Every file of a Zarr store but its metadata documents, by relative path."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.name != "zarr.json"}


def _tilesegment(args: list, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tilesegment.cli.main", "run",
                           *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_run_on_a_tcp_cluster_of_dask_cli_processes_matches_the_threaded_run(tmp_path):
    import zarr

    src = write_input(tmp_path / "in.tif", side=80)
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the workers import this copy
    scheduler_file = tmp_path / "scheduler.json"
    procs = [_start(["scheduler", "--scheduler-file", str(scheduler_file), "--host",
                     "127.0.0.1", "--port", "0", "--no-dashboard"], env,
                    tmp_path / "scheduler.log")]
    try:
        for i in range(2):
            procs.append(_start(["worker", "--scheduler-file", str(scheduler_file),
                                 "--nworkers", "1", "--nthreads", "2", "--host", "127.0.0.1",
                                 "--no-dashboard"], env, tmp_path / f"worker{i}.log"))
        _wait_for_workers(scheduler_file, 2, procs)
        remote = _tilesegment([src, "-o", tmp_path / "remote.zarr", *SETTINGS,
                               "--scheduler", scheduler_file], env)
        worker_pids = _worker_pids(scheduler_file)
    finally:
        _stop(procs)
    assert remote.returncode == 0, remote.stderr
    local = _tilesegment([src, "-o", tmp_path / "local.zarr", *SETTINGS], env)
    assert local.returncode == 0, local.stderr

    assert len(worker_pids) == 2 and os.getpid() not in worker_pids
    a, b = _chunks(tmp_path / "local.zarr"), _chunks(tmp_path / "remote.zarr")
    assert a.keys() == b.keys() and len(a) > 4
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]
    za = zarr.open_group(tmp_path / "local.zarr", mode="r")
    zb = zarr.open_group(tmp_path / "remote.zarr", mode="r")
    for layer in ("mask", "probabilities"):
        assert za[layer][:].tobytes() == zb[layer][:].tobytes()
    assert all(p.poll() is not None for p in procs)


def _worker_pids(scheduler_file: Path) -> set[int]:
    from distributed import Client

    with Client(scheduler_file=str(scheduler_file), timeout=30) as client:
        return set(client.run(os.getpid).values())
