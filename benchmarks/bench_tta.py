"""Test-time augmentation: what it costs and what it buys, on the shipped ``nuclei`` model.

Cost: ``segment()`` of the real ``nuclei.tif`` (512 × 512, tile 256 / halo 56, ``crop``,
CPU) under ``--tta none``, ``flips`` and ``d4``, run in turns (none, flips, d4, none, …)
``REPEATS`` times in one process; the fastest run of each, and the tiles the model saw
(counted by a forward hook: the number of model passes per image tile).

Benefit: nucleus IoU on the held-out right half, through ``tilesegment run`` and
``tilesegment evaluate`` exactly as ``pipelines/evaluate_nuclei.py`` measures the 0.893 of
docs/models.md, for the image as is and its rotated / flipped / rescaled variants.

    python benchmarks/bench_tta.py [DATA_DIR]   # benchmarks/results/tta.json
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "pipelines"))
from evaluate_nuclei import score  # noqa: E402
from machine import cpu_name, stamp  # noqa: E402

from tilesegment import segment  # noqa: E402

MODES = ("none", "flips", "d4")
REPEATS = 3


def timings(image: np.ndarray) -> dict[str, dict]:
    """Fastest seconds of ``REPEATS`` in-process runs per mode, and model passes."""
    from tilesegment.models import create_model

    net = create_model("nuclei", 1).eval()
    seen = {"tiles": 0}
    net.register_forward_hook(lambda m, i, o: seen.__setitem__("tiles", seen["tiles"]
                                                               + len(i[0])))
    best: dict[str, float] = {}
    passes: dict[str, int] = {}
    segment(image, model=net, normalization="raster", device="cpu")  # warm-up
    for _ in range(REPEATS):
        for mode in MODES:
            seen["tiles"] = 0
            t0 = time.perf_counter()
            segment(image, model=net, tile=256, halo=56, normalization="raster", tta=mode,
                    device="cpu")
            best[mode] = min(best.get(mode, np.inf), time.perf_counter() - t0)
            passes[mode] = seen["tiles"]
    return {m: {"seconds": best[m], "model_inputs": passes[m],
                "ratio_to_none": best[m] / best["none"]} for m in MODES}


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/data/nuclei"
    image = tifffile.imread(data / "nuclei.tif")
    cost = timings(image)
    print(json.dumps(cost, indent=1), flush=True)
    iou: dict[str, dict] = {}
    for mode in MODES:
        with tempfile.TemporaryDirectory() as tmp:
            opts = ("--tta", mode) if mode != "none" else ()
            iou[mode] = score(data, "nuclei", Path(tmp), None, opts)
        print(mode, {k: round(v["foreground_iou"], 4) for k, v in iou[mode].items()},
              flush=True)
    result = {"machine": {"cpu": cpu_name(), "python": platform.python_version(),
                          "torch": torch.__version__, "cores": 2,
                          "note": "2-core VM shared with other jobs: seconds are noisy; "
                          "ratios were measured side by side"},
              **stamp(ROOT),
              "model": "nuclei (shipped)", "input": str(data / "nuclei.tif"),
              "cost": cost, "held_out_iou": iou}
    out = ROOT / "benchmarks/results/tta.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
