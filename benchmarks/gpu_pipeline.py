"""GPU benchmark, prepared for when a GPU machine is at hand: end-to-end tiles/s and output
MPx/s of ``tilesegment`` on a 16384 × 16384 raster for a 32-channel U-Net and DeepLabV3-
ResNet50, in fp32 and bf16, each with its efficiency against the bare model on the same
device (same tiles, same batch, same precision), GPU utilisation and peak GPU and host
memory. Results (with the device's name) go to ``benchmarks/results/gpu.json``.

    python benchmarks/gpu_pipeline.py                       # the full benchmark
    python benchmarks/gpu_pipeline.py --size 4096           # quicker
    python benchmarks/gpu_pipeline.py --pool                # also through --devices all
    python benchmarks/gpu_pipeline.py --device cpu --size 512 --models unet32 \\
        --precisions fp32 --json /tmp/dry.json              # the script itself, on a CPU

What is timed:

- **bare**: the model alone on device-resident random tiles (channels_last), ``--batch``
  tiles per call under the same autocast, as many tiles as the run computes (at most
  ``--bare-tiles``), synchronised before and after: the ceiling.
- **run**: ``tilesegment.segment(raster, out.zarr, device="cuda", batch_size=B,
  precision=P)`` in this process (local threads: one per core, the model calls taking
  turns on the GPU, reading and merging beside them); tiles/s and MPx/s by the run's own
  clock (plan, model build, blocks, finalising the output). A warm-up run on a small raster
  comes first (cuDNN autotuning and CUDA context creation are not counted).
- **pool** (``--pool``): the same through ``start_gpu_pool`` (one worker process per GPU,
  what ``--devices all`` starts); its memory figures are not sampled (other processes).
- **utilisation / memory**: ``nvidia-smi`` sampled every 0.2 s during the run (mean and
  max utilisation, max memory used on the device), ``torch.cuda.max_memory_allocated``
  in this process, and this process's peak RSS (psutil, sampled).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import log, make_sample
from machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "gpu.json"
CLASSES = 3


def model_for(name: str) -> dict[str, Any]:
    """``segment()`` model settings for a benchmark model name."""
    if name == "unet32":  # depth 4, 32 channels at the top, same padding
        from tilesegment.models.unet import UNet

        return {"model": UNet(3, CLASSES, depth=4, width=32, padding="same"),
                "classes": CLASSES, "tile": 512, "halo": 96}
    return {"model": name, "classes": CLASSES}


class Sampler:
    """Samples GPU utilisation and memory (nvidia-smi) and this process's RSS."""

    def __init__(self, every: float = 0.2) -> None:
        self.every, self.util, self.gpu_mem, self.rss = every, [], [], []
        self._stop = threading.Event()
        self._smi = shutil.which("nvidia-smi")

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            self.rss.append(me.memory_info().rss)
            if self._smi:
                out = subprocess.run(
                    [self._smi, "--query-gpu=utilization.gpu,memory.used",
                     "--format=csv,noheader,nounits"], capture_output=True, text=True)
                rows = [r.split(",") for r in out.stdout.strip().splitlines() if r]
                if rows:
                    self.util.append(max(float(r[0]) for r in rows))
                    self.gpu_mem.append(max(float(r[1]) for r in rows))
            time.sleep(self.every)

    def record(self) -> dict[str, Any]:
        return {
            "gpu_util_mean_pct": round(sum(self.util) / len(self.util), 1) if self.util
            else None,
            "gpu_util_max_pct": max(self.util) if self.util else None,
            "gpu_memory_used_max_mib": max(self.gpu_mem) if self.gpu_mem else None,
            "host_rss_max_mib": round(max(self.rss) / 2**20, 1) if self.rss else None,
        }


def bare(module: Any, device: str, tile: int, batch: int, precision: str,
         n_tiles: int) -> dict[str, Any]:
    """Tiles/s of the model alone on ``device``-resident tiles, ``batch`` per call."""
    import torch

    from tilesegment.infer import PRECISIONS

    dev = torch.device(device)
    module = module.eval().to(dev, memory_format=torch.channels_last)
    x = torch.randn((batch, 3, tile, tile), device=dev).contiguous(
        memory_format=torch.channels_last)
    dtype = PRECISIONS[precision]
    calls = max(1, -(-n_tiles // batch))

    def step() -> None:
        if dtype is None:
            module(x)
        else:
            with torch.autocast(device_type=dev.type, dtype=dtype):
                module(x)

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(3):  # warm-up: kernel choice, autotuning
            step()
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            step()
        sync()
        seconds = time.perf_counter() - t0
    return {"tiles": calls * batch, "seconds": round(seconds, 3),
            "tiles_per_s": round(calls * batch / seconds, 3)}


def timed_run(src: Path, out: Path, settings: dict[str, Any],
              scheduler: Any = None) -> dict[str, Any]:
    import torch

    from tilesegment import segment

    cuda = settings["device"] == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with Sampler() as sampler:
        summary = segment(src, out, overwrite=True, scheduler=scheduler, **settings)
    h, w = summary.shape
    rec = {"tiles": summary.tiles, "blocks": summary.blocks,
           "seconds": round(summary.seconds, 3),
           "tiles_per_s": round(summary.tiles / summary.seconds, 3),
           "mpx_per_s": round(h * w / 1e6 / summary.seconds, 3), **sampler.record()}
    if cuda and scheduler is None:
        rec["torch_max_memory_allocated_mib"] = round(
            torch.cuda.max_memory_allocated() / 2**20, 1)
    return rec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=16384)
    p.add_argument("--models", default="unet32,deeplabv3_resnet50")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--bare-tiles", type=int, default=2048)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu: try the script itself on a machine without a GPU")
    p.add_argument("--pool", action="store_true", help="also run through the GPU pool")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = p.parse_args()

    import torch

    from tilesegment.errors import RandomWeightsWarning, SeamWarning, SlowPrecisionWarning

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: nothing to measure (use --device cpu to try the "
                         "script itself)")
    import warnings

    for category in (SlowPrecisionWarning, RandomWeightsWarning, SeamWarning):
        warnings.simplefilter("ignore", category)  # random weights: timing only
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else None
    results: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "device": gpu or "cpu (dry run of the script, not a GPU figure)",
        "gpus": torch.cuda.device_count() if args.device == "cuda" else 0,
        "cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "raster": f"{args.size}x{args.size} RGB uint8 GeoTIFF",
        "batch": args.batch, "loadavg_start": os.getloadavg(), "results": [],
    }
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        src = make_sample(work / f"sample-{args.size}.tif", args.size)
        small = make_sample(work / "sample-1024.tif", 1024)
        for name in args.models.split(","):
            for precision in args.precisions.split(","):
                settings = {**model_for(name), "device": args.device,
                            "batch_size": args.batch, "precision": precision}
                log(f"{name} {precision}: warm-up")
                timed_run(small, work / "warm.zarr", settings)
                log(f"{name} {precision}: run")
                run = timed_run(src, work / "out.zarr", settings)
                log(f"  {run['tiles_per_s']} tiles/s, {run['mpx_per_s']} MPx/s")
                module = settings["model"]
                if isinstance(module, str):
                    from tilesegment.models import create_model

                    module = create_model(module, 3, CLASSES)
                from tilesegment.plan import build_plan

                tile = build_plan(src, **{k: v for k, v in settings.items()
                                          if k != "precision"}).geometry.tile
                base = bare(module, args.device, tile, args.batch, precision,
                            min(run["tiles"], args.bare_tiles))
                rec = {"model": name, "precision": precision, "tile": tile,
                       "bare": base, "run": run,
                       "efficiency": round(run["tiles_per_s"] / base["tiles_per_s"], 4)}
                if args.pool and args.device == "cuda":
                    rec["pool"] = pool_run(src, work, settings, base)
                results["results"].append(rec)
                log(f"  bare {base['tiles_per_s']} tiles/s: efficiency {rec['efficiency']}")
                del module
                if args.device == "cuda":
                    torch.cuda.empty_cache()
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    results["loadavg_end"] = os.getloadavg()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {args.json}")


def pool_run(src: Path, work: Path, settings: dict[str, Any],
             base: dict[str, Any]) -> dict[str, Any]:
    """The same run through one worker process per GPU (``--devices all``)."""
    import torch

    from tilesegment.execute import start_gpu_pool

    client = start_gpu_pool(tuple(range(torch.cuda.device_count())))
    try:
        timed_run(src.parent / "sample-1024.tif", work / "warm.zarr", settings, client)
        rec = timed_run(src, work / "pool.zarr", settings, client)
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    rec["efficiency_per_gpu"] = round(
        rec["tiles_per_s"] / torch.cuda.device_count() / base["tiles_per_s"], 4)
    return rec


if __name__ == "__main__":
    main()
