"""Model zoo figures: parameters, GFLOPs and CPU throughput at 512×512, receptive radius.

    python benchmarks/bench_models.py            # all models, writes benchmarks/results/
    python benchmarks/bench_models.py --quick    # one timing repeat, for a smoke test

For each registered model (3 bands, 21 classes; ``identity``: 3 → 3): parameters counted
with torch; FLOPs of one 512×512 tile with ``torch.utils.flop_counter`` (a multiply-add is
2 FLOPs); CPU time per 512×512 tile, batch 1, channels_last, inference_mode, torch threads =
all cores, best of ``--repeats`` after one warm-up; the spec's receptive radius (measured
by probing, checked by the tests). Machine facts are recorded with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from machine import cpu_name  # benchmarks/machine.py, beside this script
from torch.utils.flop_counter import FlopCounterMode

from tilesegment.models import create_model, get_spec, list_models

SIDE = 512


def measure(name: str, repeats: int) -> dict:
    classes = None if name == "identity" else 21
    spec = get_spec(name, 3, classes)
    model = create_model(name, 3, classes).eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(1, 3, SIDE, SIDE)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    flops = counter.get_total_flops()
    model = model.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        model(xc)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(xc)
            times.append(time.perf_counter() - t0)
    best = min(times)
    return {
        "name": name, "parameters": params, "gflops_512": round(flops / 1e9, 2),
        "receptive_radius": None if spec.global_context else spec.receptive_radius,
        "global_context": spec.global_context, "output_stride": spec.tile_rule.output_stride,
        "default_tile": spec.default_tile, "default_halo": spec.default_halo(spec.default_tile),
        "cpu_seconds_per_tile": round(best, 4), "cpu_tiles_per_s": round(1 / best, 3),
        "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pattern", default="*")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "models.json")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    rows = []
    for name in list_models(args.pattern):
        row = measure(name, repeats)
        rows.append(row)
        print(f"{name:<30} {row['parameters']:>12,} params {row['gflops_512']:>9.1f} GFLOPs "
              f"{row['cpu_tiles_per_s']:>8.2f} tiles/s  radius {row['receptive_radius']}",
              flush=True)
    result = {
        "machine": {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "date": datetime.now(UTC).isoformat(timespec="seconds"),
                    "gpu": torch.cuda.is_available()},
        "tile": SIDE, "models": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
