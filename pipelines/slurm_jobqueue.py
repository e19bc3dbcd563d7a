"""Segment rasters on a SLURM cluster: dask-jobqueue submits GPU jobs, each one Dask worker
(one GPU, two block tasks in flight), and ``tilesegment.segment`` runs the blocks on them.

    pip install dask-jobqueue
    python pipelines/slurm_jobqueue.py slide.svs -o slide-mask.zarr \
        --queue gpu --account mylab --jobs 4 --interface ib0 --shared-dir ~/.dask-tls

Run it on the login node (or in a small job of its own): it starts the Dask scheduler in
this process, on the network interface you name (``--interface``: the compute nodes must
reach it; nothing listens there unless you name it), with TLS and temporary credentials
written to ``--shared-dir`` (a folder the compute nodes read, for their certificates). Each
job asks SLURM for one GPU (``--gres=gpu:1``); SLURM's ``CUDA_VISIBLE_DEVICES`` makes it the
job's ``cuda:0``, which the worker is told. ``--print-job-script`` prints the job script and
submits nothing.

A recipe, not part of the package: ``tests/test_pipelines_cluster.py`` builds its job script
and plans its run so it cannot rot.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

SETTINGS: dict[str, Any] = {"model": "nuclei", "device": "cuda", "batch_size": 16,
                            "precision": "fp32"}
"""What ``segment()`` is given besides the input, output and scheduler."""


def make_cluster(queue: str, account: str | None, interface: str, shared_dir: str,
                 walltime: str = "04:00:00", memory: str = "32GB", cpus: int = 8,
                 gpus_per_job: int = 1):
    """A ``SLURMCluster`` of GPU jobs (none submitted yet: ``cluster.scale(jobs=N)``)."""
    from dask_jobqueue import SLURMCluster

    from tilesegment.local_cluster import LoopbackScheduler  # no HTTP server without a dashboard

    return SLURMCluster(
        queue=queue, account=account, walltime=walltime, memory=memory,
        cores=2, processes=1,  # one worker per job: 2 threads, two blocks in flight
        job_cpu=cpus,  # cores for reading and decoding beside the GPU
        job_extra_directives=[f"--gres=gpu:{gpus_per_job}"],
        job_script_prologue=["export TILESEGMENT_DEVICE=cuda:0"],
        interface=interface, security=True, shared_temp_directory=shared_dir,
        scheduler_cls=LoopbackScheduler, scheduler_options={"dashboard_address": None})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--queue", required=True, help="SLURM partition with GPUs")
    parser.add_argument("--account", help="SLURM account")
    parser.add_argument("--jobs", type=int, default=2, help="GPU jobs (= Dask workers)")
    parser.add_argument("--interface", required=True,
                        help="network interface the compute nodes reach (e.g. ib0)")
    parser.add_argument("--shared-dir", required=True,
                        help="folder on a shared file system for the TLS credentials")
    parser.add_argument("--walltime", default="04:00:00")
    parser.add_argument("--print-job-script", action="store_true",
                        help="print the job script, submit nothing")
    args = parser.parse_args(argv)

    cluster = make_cluster(args.queue, args.account, args.interface,
                           str(Path(args.shared_dir).expanduser()), walltime=args.walltime)
    try:
        if args.print_job_script:
            print(cluster.job_script())
            return
        from distributed import Client

        from tilesegment import segment

        cluster.scale(jobs=args.jobs)
        with Client(cluster) as client:
            client.wait_for_workers(1)
            summary = segment(args.source, args.output, scheduler=client, progress=True,
                              **SETTINGS)
        print(f"wrote {summary.output} ({summary.blocks} blocks, {summary.seconds:.0f} s)")
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
