"""OME-Zarr label pyramid: what building the coarser levels costs next to writing level 0.

    python benchmarks/bench_ome_zarr.py                 # 8192² px mask, block 1024
    python benchmarks/bench_ome_zarr.py --side 4096 --json /tmp/ome.json   # quick

One synthetic class mask (``--classes`` classes: coarse blobs plus 5 % salt noise, so
the 2x2 windows hold real ties) is written block by block, through the library, twice:

1. into a plain ``.zarr`` output: the block writes, then ``finalize`` (a rename);
2. into an ``.ome.zarr`` output: the same block writes, then ``finalize``, which copies
   level 0 and builds every coarser level by 2x2 mode (``write/ome_zarr_output.py``).

Each output is written in a fresh process. Wall time and the peak resident memory above
the process's baseline are sampled (every 5 ms, from ``/proc/self/statm``) for the block
writes and for ``finalize`` separately. The figures of merit are the ratio of the pyramid
build (``finalize`` of the OME-Zarr output) to the base level's block writes, in time and
memory; the memory should stay at a few block windows whatever the raster size. Results
go to ``benchmarks/results/ome_zarr.json`` with the machine and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from machine import cpu_name  # benchmarks/machine.py, beside this script

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class Peak:
    """Peak RSS above the value at entry, sampled by a thread."""

    def __enter__(self) -> Peak:
        self.base = rss()
        self.peak = self.base
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        self.t0 = time.perf_counter()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, rss())
        self.mib = (self.peak - self.base) / 2**20


def make_mask(side: int, classes: int, seed: int = 0) -> np.ndarray:
    """``(side, side)`` uint8: 64-px blobs of random classes plus 5 % salt."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, classes, (side // 64 + 1, side // 64 + 1), dtype=np.uint8)
    mask = np.repeat(np.repeat(coarse, 64, 0), 64, 1)[:side, :side].copy()
    salt = rng.random((side, side)) < 0.05
    mask[salt] = rng.integers(0, classes, int(salt.sum()), dtype=np.uint8)
    return mask


def one(kind: str, side: int, block: int, classes: int, folder: Path) -> dict:
    """Write the mask into ``folder/out<kind>`` (in this process); the two phases' figures."""
    from tilesegment.read.base import Georef
    from tilesegment.write import OutputMeta, create_output

    mask = make_mask(side, classes)
    meta = OutputMeta(shape=(side, side), num_classes=classes,
                      class_names=tuple(f"c{i}" for i in range(classes)),
                      class_colors=tuple((i, i, i) for i in range(classes)),
                      georef=Georef(pixel_size=(0.5, 0.5), unit="um"),
                      block_shape=(block, block))
    out = create_output(folder / f"out{kind}", meta)
    with Peak() as blocks:
        for r in range(0, side, block):
            for c in range(0, side, block):
                out.write_block(r, c, mask[r:r + block, c:c + block])
    with Peak() as final:
        out.finalize()
    return {"blocks_s": blocks.seconds, "blocks_peak_mib": blocks.mib,
            "finalize_s": final.seconds, "finalize_peak_mib": final.mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=8192)
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--json", type=Path,
                        default=Path(__file__).parent / "results" / "ome_zarr.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, folder = args.child.split(":", 1)
        print(json.dumps(one(kind, args.side, args.block, args.classes, Path(folder))))
        return
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in (".zarr", ".ome.zarr"):
            done = subprocess.run(
                [sys.executable, __file__, "--side", str(args.side), "--block",
                 str(args.block), "--classes", str(args.classes), "--child", f"{kind}:{tmp}"],
                check=True, capture_output=True, text=True)
            figures[kind] = json.loads(done.stdout.strip().splitlines()[-1])
            print(kind, figures[kind], flush=True)
    ome, plain = figures[".ome.zarr"], figures[".zarr"]
    record = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "load_average": os.getloadavg()},
        "side": args.side, "block": args.block, "classes": args.classes,
        "zarr": plain, "ome_zarr": ome,
        "pyramid_over_base_time": ome["finalize_s"] / ome["blocks_s"],
        "pyramid_over_base_peak_memory": ome["finalize_peak_mib"] / max(ome["blocks_peak_mib"],
                                                                        1e-9),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
