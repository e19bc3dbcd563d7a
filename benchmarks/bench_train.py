"""Training throughput of ``tilesegment.train``: tiles per second, end to end.

    python benchmarks/bench_train.py                 # unet-tiny, tile 256, batch 8
    python benchmarks/bench_train.py --quick         # fewer steps, for a smoke test
    python benchmarks/bench_train.py --device cuda   # on a GPU (named in the results)

Trains on a synthetic 1-band 1024×1024 raster of bright discs on noise (or ``--image`` /
``--truth``, e.g. the nuclei image with ``--instances``) with ``val_fraction=0`` so that
the timed seconds are the training loop only: tiles drawn and augmented through the
splitter (flip, rot90), the forward and backward pass, AdamW. One warm-up epoch of 2 steps
is run first and not counted. Reported for each torch thread count asked (``--threads``,
default 1 and all cores): seconds per step and tiles/s, with the machine's CPU, cores and
GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name  # benchmarks/machine.py, beside this script

from tilesegment.train import train


def synthetic(side: int = 1024, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``float32 (1, side, side)`` discs (+1) on N(0, 0.3) noise, labels ``uint8``."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 0.3, (side, side)).astype(np.float32)
    labels = np.zeros((side, side), np.uint8)
    yy, xx = np.ogrid[:side, :side]
    for _ in range(side * side // 900):
        cy, cx, r = rng.integers(0, side), rng.integers(0, side), rng.integers(4, 12)
        y0, y1, x0, x1 = max(cy - r, 0), cy + r + 1, max(cx - r, 0), cx + r + 1
        disc = (yy[y0:y1] - cy) ** 2 + (xx[:, x0:x1] - cx) ** 2 < r * r
        labels[y0:y1, x0:x1][disc] = 1
    image[labels == 1] += 1.0
    return image[None], labels


def measure(images, truths, model: str, tile: int, batch: int, steps: int, device: str,
            threads: int, instances: bool = False) -> dict:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        opts = dict(model=model, tile=tile, batch_size=batch, val_fraction=0.0,
                    device=device, augment="flip,rot90", overwrite=True,
                    instances=instances)
        train(images, truths, output=Path(tmp, "w.safetensors"), epochs=1,
              steps_per_epoch=2, **opts)  # warm-up
        started = time.perf_counter()
        summary = train(images, truths, output=Path(tmp, "m.safetensors"), epochs=1,
                        steps_per_epoch=steps, **opts)
        wall = time.perf_counter() - started
    seconds = summary.seconds
    return {"model": model, "tile": tile, "batch_size": batch, "steps": steps,
            "device": device, "torch_threads": threads,
            "seconds_per_step": round(seconds / steps, 4),
            "tiles_per_s": round(steps * batch / seconds, 2),
            "wall_seconds_incl_setup": round(wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet-tiny")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, nargs="*")
    parser.add_argument("--image", type=Path)
    parser.add_argument("--truth", type=Path)
    parser.add_argument("--instances", action="store_true",
                        help="the truth holds instance ids (the nuclei labels)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "train.json")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    if args.image:
        images, truths, data = [str(args.image)], [str(args.truth)], str(args.image.name)
    else:
        image, labels = synthetic()
        images, truths, data = [image], [labels], "synthetic 1024×1024 discs on noise"
    steps = 3 if args.quick else args.steps
    rows = []
    for threads in args.threads or sorted({1, cores}):
        row = measure(images, truths, args.model, args.tile, args.batch_size, steps,
                      args.device, threads, args.instances)
        rows.append(row)
        print(f"{args.model} tile {args.tile} batch {args.batch_size} {args.device} "
              f"threads {threads}: {row['tiles_per_s']:.2f} tiles/s "
              f"({row['seconds_per_step']:.3f} s/step)", flush=True)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    result = {
        "machine": {"cpu": cpu_name(), "cores": cores, "torch": torch.__version__,
                    "gpu": gpu, "date": datetime.now(UTC).isoformat(timespec="seconds"),
                    "load_average": [round(x, 2) for x in os.getloadavg()]},
        "data": data, "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
