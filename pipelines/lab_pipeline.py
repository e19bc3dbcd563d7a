"""tilesegment inside a lab's own Dask pipeline: the lab's ``distributed.Client`` (made by
whatever started its cluster: dask-jobqueue, dask-kubernetes, ``dask scheduler``, a
``LocalCluster``) is handed to ``segment()`` as ``scheduler``; nothing else changes.

    python pipelines/lab_pipeline.py tcp://10.0.0.5:8786 scans/*.tif -o masks/

Each input is planned first (every setting checked, nothing read or built), then segmented
on the client's workers; an input that fails is reported and the others go on.

A recipe, not part of the package: ``tests/test_pipelines_cluster.py`` imports it, plans
and runs it on a real in-process cluster, so it cannot rot.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

SETTINGS: dict[str, Any] = {"model": "nuclei", "batch_size": 16}
"""What ``segment()`` and ``build_plan()`` are given besides input, output and scheduler."""


def output_for(source: str | Path, outdir: str | Path) -> Path:
    """Where the mask of ``source`` goes: ``outdir/<stem>.zarr``."""
    return Path(outdir) / f"{Path(source).stem}.zarr"


def plan_all(client: Any, sources: list[str | Path], outdir: str | Path,
             **settings: Any) -> list[Any]:
    """The run plan of every input (the same checks as the run; nothing is written)."""
    from tilesegment.plan import build_plan

    return [build_plan(s, output_for(s, outdir), scheduler=client, resolve=False,
                       **{**SETTINGS, **settings}) for s in sources]


def segment_all(client: Any, sources: list[str | Path], outdir: str | Path,
                **settings: Any) -> dict[str, Any]:
    """Segment every input on ``client``'s workers: input → RunSummary, or the error."""
    from tilesegment import segment
    from tilesegment.errors import TilesegmentError

    Path(outdir).mkdir(parents=True, exist_ok=True)
    done: dict[str, Any] = {}
    for source in sources:
        try:
            done[str(source)] = segment(source, output_for(source, outdir),
                                        scheduler=client, **{**SETTINGS, **settings})
        except TilesegmentError as exc:
            done[str(source)] = exc
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scheduler", help="the lab cluster's address or scheduler file")
    parser.add_argument("sources", nargs="+")
    parser.add_argument("-o", "--outdir", required=True)
    args = parser.parse_args(argv)
    from distributed import Client

    with (Client(scheduler_file=args.scheduler) if args.scheduler.endswith(".json")
          else Client(args.scheduler)) as client:
        plan_all(client, args.sources, args.outdir)
        for source, result in segment_all(client, args.sources, args.outdir).items():
            print(f"{source}: {result if isinstance(result, Exception) else result.output}")


if __name__ == "__main__":
    main()
