"""CPU benchmark of where the block tasks run: the local threaded scheduler vs
``--local-cluster 1`` vs ``--local-cluster 2``, each a real ``tilesegment run`` process on
the same raster, with its efficiency against the bare model on the same tiles.

    python benchmarks/bench_cluster.py            # ~4 min on 2 cores
    python benchmarks/bench_cluster.py --size 1024 --bare-seconds 10   # quicker

Model: ``unet-small`` (3 classes, random weights, its default tile and halo), a synthetic
RGB GeoTIFF (``pipelines/make_sample.py``). The bare model runs on pre-built
channels_last tensors in the configuration each run uses: 2 threads × 1 torch thread, one
tile per call (the threaded run and two single-threaded worker processes) and 1 thread × 1
torch thread (one worker process). Efficiency = the run's tiles/s by its own clock (the
``wrote … s`` line: plan, model build, cluster start and the blocks) ÷ the bare tiles/s; a
second figure uses the process's wall time (Python start-up and imports too), and a
third CPU time: the bare model's CPU seconds per tile ÷ the run's (its whole process
tree, start-up included), which other processes' load hardly moves. The three
outputs must be byte-identical (checked). Other processes' CPU use is recorded for every
timed section (``foreign_cpu_cores``): the machine is shared.

Results: ``benchmarks/results/cluster.json``; figures in ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import LoadMeter, bare_rate, log, make_sample
from machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "cluster.json"
MODEL, CLASSES = "unet-small", 3
RUNS: tuple[tuple[str, list[str], str], ...] = (
    ("threads (default)", [], "2x1"),
    ("--local-cluster 1", ["--local-cluster", "1"], "1x1"),
    ("--local-cluster 2", ["--local-cluster", "2"], "2x1"),
)
"""(label, extra flags, the bare configuration it is compared with)."""
BARE = {"2x1": (2, 1), "1x1": (1, 1)}  # python threads, torch threads per thread


def run_once(src: Path, out: Path, extra: list[str]) -> dict[str, Any]:
    """One ``tilesegment run`` process: its own seconds, wall time, tile count, load."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "tilesegment.cli.main", "run", str(src), "-o", str(out),
           "--model", MODEL, "--classes", str(CLASSES), "--no-progress", "--overwrite",
           *extra]
    with LoadMeter() as meter:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr}")
    found = re.search(r"(\d+) tiles in (\d+) blocks?, ([\d.]+) s\)", done.stdout)
    tiles, blocks, seconds = int(found[1]), int(found[2]), float(found[3])
    return {"tiles": tiles, "blocks": blocks, "run_seconds": seconds,
            "tiles_per_s": round(tiles / seconds, 4),
            "tiles_per_s_wall": round(tiles / meter.wall, 4),
            # CPU seconds of the run's whole process tree (start-up included) per tile
            "cpu_s_per_tile": round(meter.own_cores * meter.wall / tiles, 5),
            **meter.record()}


def chunk_bytes(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.name != "zarr.json"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=2048, help="raster side in px")
    p.add_argument("--bare-seconds", type=float, default=15.0)
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = p.parse_args()

    import torch

    from tilesegment.grid import TileSpec, grid_shape
    from tilesegment.models import create_model
    from tilesegment.models.registry import get_spec

    spec = get_spec(MODEL, 3, CLASSES)
    tile = spec.default_tile
    halo = spec.default_halo(tile)
    rows, cols = grid_shape((args.size, args.size), TileSpec(tile=tile, halo=halo))
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    results: dict[str, Any] = {
        "date_utc": started, "cpu": cpu_name(), "cores": os.cpu_count(),
        "gpu": "none" if not torch.cuda.is_available() else torch.cuda.get_device_name(0),
        "torch": torch.__version__, "loadavg_start": os.getloadavg(),
        "model": MODEL, "classes": CLASSES, "tile": tile, "halo": halo,
        "raster": f"{args.size}x{args.size} RGB uint8 GeoTIFF", "tiles": rows * cols,
        "bare": {}, "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        work = Path(tmp)
        src = make_sample(work / f"sample-{args.size}.tif", args.size)
        module = create_model(MODEL, 3, CLASSES).eval().to(memory_format=torch.channels_last)
        for name, (threads, torch_threads) in BARE.items():
            log(f"bare {MODEL}, {threads} thread(s) x {torch_threads} torch thread")
            results["bare"][name] = bare_rate(module, tile, threads, torch_threads, 1,
                                              args.bare_seconds)
        outputs = {}
        for label, extra, bare in RUNS:
            out = work / f"out-{len(outputs)}.zarr"
            log(f"tilesegment run {' '.join(extra) or '(threads)'}")
            rec = run_once(src, out, extra)
            base = results["bare"][bare]["tiles_per_s"]
            rec["compared_with_bare"] = bare
            rec["efficiency"] = round(rec["tiles_per_s"] / base, 4)
            rec["efficiency_wall"] = round(rec["tiles_per_s_wall"] / base, 4)
            # robust to other processes' load: the bare model's CPU seconds per tile over
            # the run's (start-up, planning and the cluster's own work included)
            rec["cpu_efficiency"] = round(
                results["bare"][bare]["cpu_s_per_tile"] / rec["cpu_s_per_tile"], 4)
            rec["efficiency_vs_2_cores"] = round(
                rec["tiles_per_s"] / results["bare"]["2x1"]["tiles_per_s"], 4)
            results["runs"][label] = rec
            outputs[label] = chunk_bytes(out)
            log(f"  {rec['tiles_per_s']:.2f} tiles/s, efficiency {rec['efficiency']:.3f}, "
                f"foreign load {rec['foreign_cpu_cores']:.2f} cores")
        first = next(iter(outputs.values()))
        results["outputs_identical"] = all(o == first for o in outputs.values())
    results["loadavg_end"] = os.getloadavg()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
