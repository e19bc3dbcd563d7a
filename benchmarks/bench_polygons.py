"""Polygon export: throughput (MPx/s of mask) and peak memory of ``tilesegment polygons``
on a large synthetic mask, at two block sizes.

    python benchmarks/bench_polygons.py                      # 16384² px, ~1e5 regions
    python benchmarks/bench_polygons.py --side 4096 --json /tmp/poly.json   # quick

The mask (uint8, 4 classes) is a random class per cell of a ``--cell`` px lattice warped
by sines (winding borders); no class percolates, so ~1e5 regions of a few cells each at
16384² (cell 38). It is generated block by block straight into a Zarr v3 array (only the
lattice and one block in memory), and regions cross block edges everywhere. Each export
is its own process (``python -c`` calling the CLI in-process, then reporting its own
``ru_maxrss``): the peak resident
memory includes Python, NumPy, GDAL and shapely (a baseline measured by the same process
with a 64² mask is reported beside it), and a raster of a quarter of the pixels is
exported at the larger block to show that memory follows the block, not the raster. Both
block sizes must write the same polygons
(the count and the total area are compared). Results: ``benchmarks/results/polygons.json``;
figures in ``docs/performance.md``. The machine is shared: the other processes' CPU use is
recorded with each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import LoadMeter, log
from machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "polygons.json"

CHILD = """
import resource, sys, time
from tilesegment.cli.main import cli
t = time.perf_counter()
try:
    cli(sys.argv[1:], standalone_mode=False)
finally:
    print("SECONDS", time.perf_counter() - t)
    print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def make_mask(path: Path, side: int, cell: int, seed: int = 0, chunk: int = 2048) -> None:
    """Classes 0..3 ``uint8 (side, side)`` written chunk by chunk to Zarr: a random class
    per lattice cell of ``cell`` px, the lattice warped by sines so that borders wind.

    Neighbouring cells of one class form one region; at 1/4 per class (below the square
    lattice's site-percolation threshold, 0.593) no region grows to the raster's size, so
    about ``0.6·(side/cell)²`` regions of a few cells each.
    """
    import zarr

    rng = np.random.default_rng(seed)
    n = side // cell + 2
    lattice = rng.integers(0, 4, (n, n)).astype(np.uint8)
    arr = zarr.create_array(path, shape=(side, side), chunks=(chunk, chunk), dtype="uint8",
                            fill_value=0)
    amp = cell / 6
    for r0 in range(0, side, chunk):
        rows = np.arange(r0, min(r0 + chunk, side), dtype=np.float64)[:, None]
        for c0 in range(0, side, chunk):
            cols = np.arange(c0, min(c0 + chunk, side), dtype=np.float64)[None, :]
            y = rows + amp * np.sin(cols / (cell / 3.1)) + amp
            x = cols + amp * np.sin(rows / (cell / 2.7)) + amp
            i = np.clip((y // cell).astype(np.int64), 0, n - 1)
            j = np.clip((x // cell).astype(np.int64), 0, n - 1)
            arr[r0:r0 + rows.shape[0], c0:c0 + cols.shape[1]] = lattice[i, j]


def export(mask: Path, out: Path, block: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", CHILD, "polygons", str(mask), "-o", str(out), "--block",
           str(block), "--overwrite"]
    with LoadMeter() as meter:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"export failed:\n{done.stdout}\n{done.stderr}")
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines()
                 if line.startswith(("SECONDS", "MAXRSS_KB")))
    return {"block": block, "seconds": float(lines["SECONDS"]),
            "peak_rss_mib": int(lines["MAXRSS_KB"]) / 1024, "load": meter.record()}


def summarise(path: Path) -> dict:
    import pyogrio.raw

    _, _, _, data = pyogrio.raw.read(str(path), read_geometry=False,
                                        columns=["class_id", "area"])[:4]
    return {"polygons": len(data[0]), "total_area_px2": float(data[1].sum()),
            "per_class": np.bincount(data[0]).tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", type=int, default=16384)
    ap.add_argument("--cell", type=int, default=38, help="lattice cell, px")
    ap.add_argument("--blocks", type=int, nargs=2, default=(1024, 4096))
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-poly-") as tmp:
        folder = Path(tmp)
        mask = folder / "mask.zarr"
        t = time.perf_counter()
        make_mask(mask, args.side, args.cell)
        log(f"mask {args.side}² generated in {time.perf_counter() - t:.1f} s")
        tiny = folder / "tiny.zarr"
        make_mask(tiny, 64, 8)
        baseline = export(tiny, folder / "tiny.gpkg", 64)
        log(f"baseline (64² mask): {baseline['peak_rss_mib']:.0f} MiB")
        runs, summaries = [], []
        for block in args.blocks:
            out = folder / f"p{block}.gpkg"
            run = export(mask, out, block)
            run["mpx_per_s"] = args.side**2 / 1e6 / run["seconds"]
            summaries.append(summarise(out))
            run.update(summaries[-1])
            runs.append(run)
            log(f"block {block}: {run['seconds']:.1f} s, {run['mpx_per_s']:.2f} MPx/s, "
                f"peak {run['peak_rss_mib']:.0f} MiB, {run['polygons']} polygons")
        same = all(s == summaries[0] for s in summaries)
        # the same block on a raster of a quarter of the pixels: memory should not move
        half = folder / "half.zarr"
        make_mask(half, args.side // 2, args.cell)
        quarter = export(half, folder / "half.gpkg", args.blocks[1])
        quarter.update(side=args.side // 2, **summarise(folder / "half.gpkg"))
        log(f"{args.side // 2}² at block {args.blocks[1]}: peak "
            f"{quarter['peak_rss_mib']:.0f} MiB, {quarter['polygons']} polygons")
    result = {
        "benchmark": "polygons", "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "mask": {"side": args.side, "cell": args.cell, "classes": 4, "dtype": "uint8",
                 "format": "zarr v3, 2048² chunks"},
        "baseline_64px": baseline, "runs": runs, "same_polygons_all_blocks": same,
        "quarter_raster_same_block": quarter,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.json}")
    if not same:
        raise SystemExit("block sizes gave different polygons")


if __name__ == "__main__":
    main()
