"""Resume overhead: a run killed (SIGKILL) half-way, then ``--resume``, against an
undisturbed run of the same input and settings.

    python benchmarks/bench_resume.py            # 4096² px, ~3 min on 2 idle cores
    python benchmarks/bench_resume.py --side 2048 --json /tmp/resume.json   # quick

What it does, all through the CLI (each run its own process, as a user would):

1. an undisturbed ``tilesegment run`` (the shipped ``nuclei`` model, its defaults) on the
   repository's CC0 nuclei image mirrored out to ``side × side`` px: wall time ``T``;
2. the same run onto another output, killed with SIGKILL at ``T/2``;
3. ``--resume`` onto that output: wall time ``R``, and its output compared byte-for-byte
   with the undisturbed one.

The figures of merit are ``R / (T/2)``, and ``R`` over the undisturbed time of the blocks
the manifest had not recorded (``T · left/total``): 1.0 means resuming costs no more than
the work that was left; above 1 is the overhead (process start, model load, reading the
manifest, the blocks that were running when the kill came and are redone). Results go to
``benchmarks/results/resume.json`` with the machine and the background load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import tifffile
from machine import cpu_name  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "nuclei" / "nuclei.tif"
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "resume.json"


def make_input(path: Path, side: int) -> None:
    """The 512² nuclei image mirrored (symmetric) out to ``side × side``, uint16, tiled."""
    image = tifffile.imread(SAMPLE)
    reps = -(-side // image.shape[0])
    big = np.pad(image, [(0, image.shape[0] * (reps - 1))] * 2, mode="symmetric")[:side, :side]
    tifffile.imwrite(path, big, tile=(256, 256), compression="zlib")


def tree_digest(path: Path) -> str:
    """sha256 over a Zarr tree's files (relative names and bytes), or one file's bytes."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if f.name == "zarr.json" and f.parent == path:
            continue  # the root's attributes hold the run's own times
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def loadavg() -> float:
    return os.getloadavg()[0]


def run(args: list[str], kill_after: float | None = None) -> tuple[float, int]:
    """Wall seconds and exit status of ``tilesegment ARGS`` (killed after ``kill_after``)."""
    cmd = [sys.executable, "-m", "tilesegment.cli.main", *args, "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    err = proc.communicate()[1]
    seconds = time.perf_counter() - t0
    if kill_after is None and proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {err.decode()[-500:]}")
    return seconds, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=4096)
    ap.add_argument("--block-size", type=int, default=512)
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    try:
        src = work / "input.tif"
        make_input(src, a.side)
        common = [str(src), "--block-size", str(a.block_size)]
        load0 = loadavg()
        full, _ = run(["run", *common, "-o", str(work / "full.zarr")])
        killed_at = full / 2
        _, status = run(["run", *common, "-o", str(work / "resumed.zarr")], kill_after=killed_at)
        stores = [p for p in work.iterdir() if ".partial-" in p.name]
        done = sum(len(list((p / "done").glob("*.json"))) for p in stores)  # the manifest
        blocks = (-(-a.side // a.block_size)) ** 2
        resume, _ = run(["run", *common, "-o", str(work / "resumed.zarr"), "--resume"])
        identical = tree_digest(work / "full.zarr") == tree_digest(work / "resumed.zarr")
        result = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                        "python": platform.python_version()},
            "input": f"{a.side}x{a.side} uint16 (examples/nuclei mirrored), model nuclei",
            "block_size": a.block_size,
            "undisturbed_s": round(full, 2),
            "killed_after_s": round(killed_at, 2),
            "killed_status": status,
            "stores_left": [p.name for p in stores],
            "blocks_done_at_kill": done,
            "blocks_total": blocks,
            "resume_s": round(resume, 2),
            "resume_over_half": round(resume / (full / 2), 3),
            "resume_over_left": round(resume / (full * (blocks - done) / blocks), 3),
            "identical_bytes": identical,
            "loadavg_1min": [round(load0, 2), round(loadavg(), 2)],
        }
        print(json.dumps(result, indent=2))
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
