"""Tissue skipping: time saved on the CMU slide, runs with and without it side by side.

    python benchmarks/bench_tissue.py                       # unet-tiny, tile 256, level 0
    python benchmarks/bench_tissue.py --model unet-small --tile 512 --repeats 1

In one process (the model built once, so both arms see a warm pool), alternately:
``segment(slide, out, tissue="none")`` and ``segment(slide, out)`` (``auto``: Otsu on the
slide's saturation), ``--repeats`` times each, writing Zarr. Reported: the median wall time
of each arm, the ratio, the tiles run and skipped, and whether the tile cores that ran are
byte-identical between the arms. Random weights (the time does not depend on them). Results
go to ``benchmarks/results/tissue.json`` with the machine and the background load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import zarr
from machine import cpu_name  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
SLIDE = ROOT.parent / "shared" / "data" / "slide" / "cmu_small_region.svs"
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "tissue.json"


def run(slide: Path, out: Path, tissue: str, args: argparse.Namespace):
    from tilesegment import segment

    shutil.rmtree(out, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        summary = segment(slide, out, model=args.model, classes=2, tile=args.tile,
                          level=args.level, device="cpu", tissue=tissue,
                          block_size=args.block)
        seconds = time.perf_counter() - started
    return seconds, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slide", type=Path, default=SLIDE)
    parser.add_argument("--model", default="unet-tiny")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--level", type=int, default=0)
    parser.add_argument("--block", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {"none": [], "auto": []}
    summaries = {}
    with tempfile.TemporaryDirectory() as tmp:
        outs = {arm: Path(tmp) / f"{arm}.zarr" for arm in times}
        run(args.slide, Path(tmp) / "warm.zarr", "auto", args)  # model pool, imports
        for _ in range(args.repeats):
            for arm in ("none", "auto"):
                seconds, summaries[arm] = run(args.slide, outs[arm], arm, args)
                times[arm].append(seconds)
                print(f"{arm:>5}: {seconds:7.2f} s, {summaries[arm].tiles} tiles run, "
                      f"{summaries[arm].tiles_skipped} skipped", flush=True)
        full = zarr.open_group(outs["none"], mode="r")["mask"][:]
        skip = zarr.open_group(outs["auto"], mode="r")["mask"][:]
        prov = dict(zarr.open_group(outs["auto"], mode="r").attrs["tilesegment"])
    spec = prov["provenance"]
    core = spec["tile"] - 2 * spec["halo"]
    ran_identical = True
    for r in range(0, full.shape[0], core):
        for c in range(0, full.shape[1], core):
            a, b = skip[r:r + core, c:c + core], full[r:r + core, c:c + core]
            if not np.array_equal(a, b) and not (a == 0).all():
                ran_identical = False
    none_s, auto_s = statistics.median(times["none"]), statistics.median(times["auto"])
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "load_before": load_before, "load_after": os.getloadavg(),
        "slide": str(args.slide.name), "shape": list(full.shape), "model": args.model,
        "tile": spec["tile"], "halo": spec["halo"], "core": core,
        "tiles": summaries["none"].tiles,
        "tiles_skipped": summaries["auto"].tiles_skipped,
        "seconds_without": times["none"], "seconds_with": times["auto"],
        "median_without": none_s, "median_with": auto_s,
        "time_ratio": auto_s / none_s,
        "ran_cores_identical": ran_identical,
    }
    print(json.dumps(result, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
