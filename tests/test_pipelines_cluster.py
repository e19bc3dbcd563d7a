"""The cluster recipes cannot rot: the SLURM one's job script is generated (nothing
submitted) and its run planned; every command of the scheduler-file shell recipe is parsed
by the real command-line parser of ``dask scheduler``, ``dask worker`` and ``tilesegment``
(and the run planned); the lab-pipeline module is imported, planned and run on a real
in-process ``distributed`` cluster with an existing Client."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.runs import REPO, write_input

PIPELINES = REPO / "pipelines"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _fluorescence(path: Path, side: int = 64) -> Path:
    """A one-band uint16 GeoTIFF: what the recipes' model (``nuclei``) takes."""
    import rasterio
    from rasterio.transform import Affine

    data = np.random.default_rng(1).integers(0, 4000, (1, side, side), dtype=np.uint16)
    with rasterio.open(path, "w", driver="GTiff", height=side, width=side, count=1,
                       dtype="uint16", crs="EPSG:32119",
                       transform=Affine(1, 0, 600_000, 0, -1, 250_000)) as ds:
        ds.write(data)
    return path


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, PIPELINES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_slurm_recipe_job_script_and_plan(tmp_path):
    pytest.importorskip("dask_jobqueue")
    from tilesegment.plan import build_plan

    recipe = _module("slurm_jobqueue")
    # interface "lo": the scheduler this builds (in this process) stays on loopback
    cluster = recipe.make_cluster("gpu", "mylab", interface="lo", shared_dir=str(tmp_path),
                                  walltime="01:30:00", cpus=6)
    try:
        script = cluster.job_script()
        address = cluster.scheduler_address
        http = cluster.scheduler.http_server if hasattr(cluster.scheduler, "http_server") \
            else None
    finally:
        cluster.close()
    assert http is None  # no dashboard, no HTTP server (the recipe's LoopbackScheduler)
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    for wanted in ("-p gpu", "-A mylab", "-t 01:30:00", "--cpus-per-task=6",
                   "--gres=gpu:1"):
        assert any(line.endswith(wanted) for line in directives), (wanted, directives)
    command = script.strip().splitlines()[-1]
    assert "distributed.cli.dask_worker" in command
    args = shlex.split(command)
    assert args[args.index("--nthreads") + 1] == "2"
    assert "--nworkers" not in args or args[args.index("--nworkers") + 1] == "1"
    assert "--tls-key" in args and "--tls-cert" in args  # workers join with TLS
    assert "export TILESEGMENT_DEVICE=cuda:0" in script
    assert address.startswith("tls://127.0.0.1:")

    src = _fluorescence(tmp_path / "in.tif")
    plan = build_plan(src, tmp_path / "out.zarr", scheduler=address, resolve=False,
                      **recipe.SETTINGS)
    assert not plan.execution.local and plan.execution.device_type == "cuda"
    assert plan.model.name == "nuclei" and not (tmp_path / "out.zarr").exists()


def _shell_commands(path: Path, values: dict[str, str]) -> list[list[str]]:
    """The ``dask`` and ``tilesegment`` commands of a shell script, with ``$VAR`` and
    ``"${VAR}"`` replaced from ``values`` and leading ``NAME=value`` assignments dropped."""
    commands = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), line)
        words = shlex.split(line.rstrip("&").strip())
        while words and re.fullmatch(r"\w+=\S*", words[0]):
            words = words[1:]
        if words and words[0] in ("dask", "tilesegment"):
            commands.append(words)
    return commands


def test_scheduler_file_recipe_commands_parse_and_plan(tmp_path):
    from distributed.cli.dask_scheduler import main as dask_scheduler
    from distributed.cli.dask_worker import main as dask_worker

    scheduler_file = tmp_path / "dask-scheduler.json"
    scheduler_file.write_text("{}")  # the run is only planned: nothing connects to it
    src = _fluorescence(tmp_path / "in.tif")
    values = {"INPUT": str(src), "OUTPUT": str(tmp_path / "out.zarr"),
              "SCHEDULER_FILE": str(scheduler_file), "HOST": "127.0.0.1"}
    commands = _shell_commands(PIPELINES / "cluster_scheduler_file.sh", values)
    assert [c[:2] for c in commands] == [["dask", "scheduler"], ["dask", "worker"],
                                         ["tilesegment", "run"]]
    scheduler = dask_scheduler.make_context("scheduler", commands[0][2:]).params
    assert scheduler["scheduler_file"] == str(scheduler_file)
    assert scheduler["host"] == "127.0.0.1" and scheduler["dashboard"] is False
    worker = dask_worker.make_context("worker", commands[1][2:]).params
    assert (worker["n_workers"], worker["nthreads"]) == ("1", 2)
    assert worker["scheduler_file"] == str(scheduler_file) and worker["dashboard"] is False

    args = commands[2][2:]
    done = subprocess.run([sys.executable, "-m", "tilesegment.cli.main", "plan", *args,
                           "--json"], capture_output=True, text=True, env=ENV,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["execution"]["scheduler"] == str(scheduler_file)
    assert plan["execution"]["batch_size"] == 16
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.slow
def test_lab_pipeline_plans_and_runs_with_an_existing_client(tmp_path):
    """The lab's Client (a real in-process cluster) is given to the recipe: every input is
    planned, then segmented; the damaged one is reported, the others match a run on the
    local threads."""
    import zarr
    from distributed import Client, LocalCluster

    from tilesegment import segment

    recipe = _module("lab_pipeline")
    a, b = write_input(tmp_path / "a.tif"), write_input(tmp_path / "b.tif", side=48)
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\0" + b"\0" * 64)
    outdir = tmp_path / "masks"
    small = dict(model="unet-tiny", classes=3, seed=2, tile=32, halo=8, block_size=32)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        plans = recipe.plan_all(client, [_fluorescence(tmp_path / "f.tif")] * 2, outdir)
        assert [p.model.name for p in plans] == ["nuclei", "nuclei"]
        assert all(not p.execution.local for p in plans) and not outdir.exists()
        done = recipe.segment_all(client, [a, bad, b], outdir, **small)
    assert isinstance(done[str(bad)], Exception)
    for source in (a, b):
        summary = done[str(source)]
        assert summary.output == recipe.output_for(source, outdir)
        expect = segment(source, **small)  # local threads, in memory
        got = zarr.open_group(summary.output, mode="r")["mask"][:]
        np.testing.assert_array_equal(got, expect)
