"""Pipeline benchmark: efficiency vs the bare model, pipeline-only throughput, peak memory.

    python benchmarks/bench_pipeline.py            # full run (~12 min, idle 2-core machine)
    python benchmarks/bench_pipeline.py --quick    # smoke test (~2 min, results in /tmp)
    python benchmarks/bench_pipeline.py --replot   # recompute summaries, redraw the figure

Measures, in one run, side by side:

1. **Efficiency**: ``tilesegment run`` (CLI, own process, read → pad → infer → stitch →
   GeoTIFF) with ``unet-small`` (3 classes) in tiles/s, divided by the tiles/s of the same
   torch module called directly on pre-built tensors of the same tile size, (a) in the
   pipeline's own configuration (one Python thread per core, one tile per call, one torch
   thread per calling thread) and (b) in the fastest other configuration (one thread with
   two torch threads, batches of 8, ...). Bare-model rounds bracket every pipeline run, so
   drifts in the machine's speed cancel out.
2. **Pipeline-only throughput** with the ``identity`` model: 512 px RGB tiles/s end to end
   (warm, in-process API), for several halos and both output formats, plus a cold CLI run
   and a cProfile breakdown of where the time goes.
3. **Peak memory** (peak RSS of a fresh ``tilesegment run`` process, from ``wait4``) at two
   raster sizes, GeoTIFF and Zarr output, plus the RSS of a 512² run as the fixed baseline
   (interpreter, torch, GDAL).

Results go to ``benchmarks/results/pipeline.json`` and a figure to
``docs/img/pipeline-benchmark.png``. Other processes on the machine distort timings: the
background CPU load is measured during every timed section and recorded with it, and
``--wait-idle``/``--settle`` wait (bounded) for a quiet machine before each section and
each measurement. Reported results should come from a run whose ``foreign_cpu_cores``
stayed near 0.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import json
import os
import platform
import pstats
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MAKE_SAMPLE = ROOT / "pipelines" / "make_sample.py"
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "pipeline.json"
DEFAULT_FIGURE = ROOT / "docs" / "img" / "pipeline-benchmark.png"
CLK_TCK = os.sysconf("SC_CLK_TCK")

EFFICIENCY_TARGET = 0.95
THROUGHPUT_TARGET = 200.0
MEMORY_GROWTH_TARGET_PCT = 10.0

# (label, python threads, torch threads per thread, tiles per call)
BARE_CONFIGS: tuple[tuple[str, int, int, int], ...] = (
    ("2 thr x 1 torch, batch 1 (pipeline)", 2, 1, 1),
    ("1 thr x 2 torch, batch 1", 1, 2, 1),
    ("1 thr x 2 torch, batch 8", 1, 2, 8),
    ("2 thr x 1 torch, batch 8", 2, 1, 8),
    ("1 thr x 1 torch, batch 1 (one core)", 1, 1, 1),
)
PIPELINE_CONFIG = BARE_CONFIGS[0][0]
SINGLE_CORE_CONFIG = BARE_CONFIGS[-1][0]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- machine and load ---


def _read_cpu_stat() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat (0, 0 where unavailable)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _own_cpu_seconds() -> float:
    """CPU seconds used by this process and its waited-for children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class LoadMeter:
    """Wall time, our CPU and everybody else's CPU over a timed section (in cores)."""

    def __enter__(self) -> LoadMeter:
        self.busy0, _ = _read_cpu_stat()
        self.own0 = _own_cpu_seconds()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        busy1, _ = _read_cpu_stat()
        own = _own_cpu_seconds() - self.own0
        machine = (busy1 - self.busy0) / CLK_TCK
        span = max(self.wall, 1e-9)
        self.own_cores = own / span
        self.machine_cores = machine / span
        self.foreign_cores = max(0.0, machine - own) / span

    def record(self) -> dict[str, float]:
        return {"wall_s": round(self.wall, 4), "own_cpu_cores": round(self.own_cores, 3),
                "machine_busy_cores": round(self.machine_cores, 3),
                "foreign_cpu_cores": round(self.foreign_cores, 3)}


def foreign_load(seconds: float = 1.0) -> float:
    """CPU cores used by other processes during ``seconds`` of our idling."""
    with LoadMeter() as meter:
        time.sleep(seconds)
    return meter.foreign_cores


def wait_for_idle(limit_s: float, threshold: float = 0.3) -> dict[str, Any]:
    """Wait up to ``limit_s`` for three consecutive quiet seconds; return what was seen."""
    started = time.perf_counter()
    quiet, seen = 0, []
    while True:
        load = foreign_load(1.0)
        seen.append(round(load, 2))
        quiet = quiet + 1 if load < threshold else 0
        waited = time.perf_counter() - started
        if quiet >= 3 or waited >= limit_s:
            if quiet < 3:
                log(f"machine still busy after {waited:.0f} s (other processes use "
                    f"{load:.2f} cores); going on, the load is recorded")
            return {"waited_s": round(waited, 1), "idle": quiet >= 3,
                    "foreign_cores_last": seen[-5:]}


class Settler:
    """Before each timed measurement, wait (up to ``each`` seconds, ``budget`` in all) for
    two quiet seconds: other processes on a small machine distort every timing."""

    def __init__(self, each: float, budget: float) -> None:
        self.each, self.budget, self.spent = each, budget, 0.0

    def __call__(self) -> float:
        """Wait; return the seconds waited."""
        limit = min(self.each, self.budget - self.spent)
        if limit <= 0:
            return 0.0
        started = time.perf_counter()
        quiet = 0
        while quiet < 2 and time.perf_counter() - started < limit:
            quiet = quiet + 1 if foreign_load(1.0) < 0.3 else 0
        waited = time.perf_counter() - started
        self.spent += waited
        return round(waited, 1)


settle = Settler(0.0, 0.0)


def _spin(seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sum(range(1000))
        n += 1
    return n / (time.perf_counter() - t0)


def parallel_capacity(seconds: float = 1.0) -> float:
    """How many cores' worth of pure-Python work 2 processes get vs one (ideal: 2.0)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_spin, [0.05, 0.05]))
        one = _spin(seconds)
        two = sum(pool.map(_spin, [seconds, seconds]))
    return round(two / one, 2)


def cpu_model() -> dict[str, Any]:
    info: dict[str, Any] = {"model_name": platform.processor() or "unknown"}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(
            (k.strip(), v.strip()) for k, v in
            (line.split(":", 1) for line in out.splitlines() if ":" in line))
        info = {"model_name": fields.get("Model name", "unknown"),
                "vendor": fields.get("Vendor ID"), "family": fields.get("CPU family"),
                "model": fields.get("Model"), "hypervisor": fields.get("Hypervisor vendor"),
                "l2": fields.get("L2 cache"), "l3": fields.get("L3 cache")}
    return info


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    import dask
    import numpy as np
    import rasterio
    import torch
    import zarr

    import tilesegment
    from tilesegment.workers import available_cores

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    commit = dirty = None
    package = Path(tilesegment.__file__).resolve().parent
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        if package.is_relative_to(ROOT):  # read-only: does the package differ from HEAD?
            dirty = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--",
                                    "tilesegment"], check=False).returncode != 0
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(), "cores": os.cpu_count(), "cores_available": available_cores(),
        "ram_gib": round(ram, 1), "gpu": bool(torch.cuda.is_available()),
        "python": platform.python_version(), "torch": torch.__version__,
        "torch_threads_default": torch.get_num_threads(), "numpy": np.__version__,
        "rasterio": rasterio.__version__, "gdal": rasterio.__gdal_version__,
        "zarr": zarr.__version__, "dask": dask.__version__,
        "tilesegment": tilesegment.__version__, "repo_head": commit,
        "package_dir": str(package), "package_differs_from_commit": dirty,
        "revision_note": args.revision_note,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "quick": args.quick,
        "loadavg_start": os.getloadavg(),
    }


def cpu_label(meta: dict[str, Any]) -> str:
    cpu = meta["cpu"]
    fam = f", family {cpu.get('family')} model {cpu.get('model')}" if cpu.get("family") else ""
    return (f"{cpu['model_name']}{fam}, {meta['cores']} cores, {meta['ram_gib']:.0f} GiB RAM, "
            f"torch {meta['torch']}, {meta['date'][:10]}")


# --- helpers ---


def make_sample(path: Path, size: int) -> Path:
    """The synthetic RGB GeoTIFF of ``size``² at ``path`` (reused if it already exists)."""
    if path.exists():
        return path
    log(f"writing sample {path.name} ({size}² px)")
    subprocess.run([sys.executable, str(MAKE_SAMPLE), str(path), "--size", str(size)],
                   check=True, capture_output=True)
    return path


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# Peak RSS of a child is its ``ru_maxrss`` from ``wait4``, but Linux starts that figure at
# the RSS of the process that forked it (exec records the old address space's high-water
# mark), and this benchmark holds torch and tensors. So a small launcher process forks the
# ``tilesegment`` process and reports that grandchild's rusage.
LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"maxrss_kib": ru.ru_maxrss, "cpu_s": ru.ru_utime + ru.ru_stime}, f)
sys.exit(os.waitstatus_to_exitcode(status))
"""

SUMMARY = re.compile(r"\((\d+) × (\d+) px, (\d+) tiles? in (\d+) blocks?, ([\d.]+) s\)")


def run_cli(src: Path, out: Path, *extra: str, env: dict[str, str] | None = None
            ) -> dict[str, Any]:
    """``tilesegment run`` in a fresh process: its wall time, RunSummary line, peak RSS, CPU.
    ``env``: extra environment variables for that process."""
    remove(out)
    cmd = [sys.executable, "-m", "tilesegment.cli.main", "run", str(src), "-o", str(out),
           "--no-progress", *extra]
    env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    with tempfile.TemporaryDirectory() as tmp:
        usage_file = Path(tmp) / "usage.json"
        with LoadMeter() as meter:
            proc = subprocess.run([sys.executable, "-c", LAUNCHER, str(usage_file), *cmd],
                                  capture_output=True, env=env, check=False)
        usage = json.loads(usage_file.read_text()) if usage_file.exists() else None
    text, errors = proc.stdout.decode(), proc.stderr.decode()
    if proc.returncode != 0 or usage is None:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{errors[-2000:]}")
    match = SUMMARY.search(text)
    if match is None:
        raise RuntimeError(f"cannot parse the run summary from: {text!r}")
    tiles, blocks, seconds = int(match[3]), int(match[4]), float(match[5])
    return {"command": " ".join(["tilesegment", *cmd[3:]]), "tiles": tiles, "blocks": blocks,
            "summary_s": seconds, "process_wall_s": round(meter.wall, 3),
            "tiles_per_s": round(tiles / seconds, 3),
            "tiles_per_s_process": round(tiles / meter.wall, 3),
            "peak_rss_mib": round(usage["maxrss_kib"] / 1024, 1),
            "child_cpu_cores": round(usage["cpu_s"] / meter.wall, 3),
            "cpu_s_per_tile": round(usage["cpu_s"] / tiles, 5),
            **meter.record()}


@contextlib.contextmanager
def section(name: str, args: argparse.Namespace, results: dict[str, Any]) -> Iterator[None]:
    log(f"== {name}")
    if args.wait_idle > 0:
        results.setdefault("idle_waits", {})[name] = wait_for_idle(args.wait_idle)
    started = time.perf_counter()
    yield
    log(f"== {name} done in {time.perf_counter() - started:.0f} s")


def save(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON-able: {type(value).__name__}")


# --- 1. efficiency: pipeline vs bare model ---


def bare_rate(module: Any, tile: int, threads: int, torch_threads: int, batch: int,
              seconds: float) -> dict[str, Any]:
    """Tiles/s of ``module`` on pre-built channels_last tensors: ``threads`` Python threads,
    each with ``torch_threads`` torch threads, ``batch`` tiles per call, for ``seconds``."""
    import torch

    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn((batch, 3, tile, tile), generator=gen)
              .contiguous(memory_format=torch.channels_last) for _ in range(threads)]
    counts = [0] * threads
    ready = threading.Barrier(threads + 1)
    deadline: list[float] = [0.0]
    ends = [0.0] * threads

    def worker(k: int) -> None:
        torch.set_num_threads(torch_threads)  # per calling thread, as the pipeline does
        x = inputs[k]
        with torch.inference_mode():
            module(x)  # warm-up: oneDNN picks its kernels on the first call
            ready.wait()
            ready.wait()
            while time.perf_counter() < deadline[0]:
                module(x)
                counts[k] += batch
        ends[k] = time.perf_counter()

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    ready.wait()
    with LoadMeter() as meter:
        start = time.perf_counter()
        deadline[0] = start + seconds
        ready.wait()
        for t in pool:
            t.join()
    wall = max(ends) - start
    tiles = sum(counts)
    return {"tiles": tiles, "seconds": round(wall, 3), "tiles_per_s": round(tiles / wall, 4),
            "cpu_s_per_tile": round(meter.own_cores * meter.wall / max(tiles, 1), 5),
            **{k: v for k, v in meter.record().items() if k != "wall_s"}}


def bare_round(module: Any, tile: int, seconds: float) -> dict[str, dict[str, Any]]:
    out = {}
    for label, threads, torch_threads, batch in BARE_CONFIGS:
        waited = settle()
        out[label] = bare_rate(module, tile, threads, torch_threads, batch, seconds)
        out[label]["settle_wait_s"] = waited
        log(f"   bare {label:38s} {out[label]['tiles_per_s']:7.3f} tiles/s "
            f"(others' load {out[label]['foreign_cpu_cores']:.2f} cores)")
    return out


def efficiency(args: argparse.Namespace, work: Path, results: dict[str, Any]) -> None:
    import torch

    from tilesegment.grid import TileSpec, grid_shape
    from tilesegment.models import create_model
    from tilesegment.models.registry import get_spec

    size, model_name, classes = args.eff_size, "unet-small", 3
    spec = get_spec(model_name, 3, classes)
    tile = spec.default_tile
    halo = spec.default_halo(tile)
    n_tiles = grid_shape((size, size), TileSpec(tile=tile, halo=halo))
    n_tiles = n_tiles[0] * n_tiles[1]
    src = make_sample(work / f"sample-{size}.tif", size)
    module = create_model(model_name, 3, classes).eval()
    module = module.to(memory_format=torch.channels_last)
    rec: dict[str, Any] = {
        "model": model_name, "classes": classes, "raster": f"{size}x{size} RGB uint8 GeoTIFF",
        "raster_side": size, "tile": tile, "halo": halo, "core": tile - 2 * halo,
        "tiles_expected": n_tiles, "bare_seconds_per_config": args.bare_seconds,
        "bare_configs": [{"label": c[0], "threads": c[1], "torch_threads": c[2], "batch": c[3]}
                         for c in BARE_CONFIGS],
        "pipeline_command": (f"tilesegment run sample-{size}.tif -o out.tif --model "
                             f"{model_name} --classes {classes} --no-progress"),
        "bare_rounds": [], "pipeline_runs": [],
    }
    results["efficiency"] = rec
    log(f"unet-small on {size}² px: tile {tile}, halo {halo}, core {tile - 2 * halo}, "
        f"{n_tiles} tiles")
    rec["bare_rounds"].append(bare_round(module, tile, args.bare_seconds))
    for i in range(args.eff_repeats):
        waited = settle()
        run = run_cli(src, work / "eff-out.tif", "--model", model_name,
                      "--classes", str(classes))
        run["settle_wait_s"] = waited
        rec["pipeline_runs"].append(run)
        log(f"   pipeline run {i + 1}: {run['tiles']} tiles in {run['summary_s']:.1f} s "
            f"(process {run['process_wall_s']:.1f} s) = {run['tiles_per_s']:.3f} tiles/s, "
            f"CPU {run.get('child_cpu_cores', 0):.2f} cores, "
            f"others' load {run['foreign_cpu_cores']:.2f} cores")
        rec["bare_rounds"].append(bare_round(module, tile, args.bare_seconds))
    remove(work / "eff-out.tif")
    rec["overhead"] = pipeline_overhead(src, work, tile, halo, rec)
    _efficiency_ratios(rec)
    results["efficiency"] = rec


def pipeline_overhead(src: Path, work: Path, tile: int, halo: int,
                      rec: dict[str, Any]) -> dict[str, Any]:
    """What the pipeline costs besides the model: the same run with the ``identity`` model at
    the same tile and halo (read, pad, normalise, cut, stitch, argmax, write; warm, in
    process), plus the whole-raster statistics pass that ``unet-small``'s ``raster``
    normalisation adds (``identity`` normalises with ``none``)."""
    from tilesegment.normalize import raster_statistics
    from tilesegment.read import open_raster

    timed_segment(src, work / "eff-id.tif", model="identity", tile=tile, halo=halo)  # warm-up
    ident = timed_segment(src, work / "eff-id.tif", model="identity", tile=tile, halo=halo)
    remove(work / "eff-id.tif")
    with LoadMeter() as meter:
        raster_statistics(open_raster(str(src)))
    stats = meter.record()
    pipe_s = statistics.median(r["summary_s"] for r in rec["pipeline_runs"])
    out = {"identity_same_geometry": ident, "raster_statistics": stats,
           "non_model_s": round(ident["wall_s"] + stats["wall_s"], 3),
           "non_model_fraction_of_pipeline": round(
               (ident["wall_s"] + stats["wall_s"]) / pipe_s, 4)}
    log(f"   non-model work at the same geometry: identity pipeline {ident['wall_s']:.1f} s "
        f"+ raster statistics {stats['wall_s']:.1f} s = "
        f"{100 * out['non_model_fraction_of_pipeline']:.1f} % of the unet-small run")
    return out


def _efficiency_ratios(rec: dict[str, Any]) -> None:
    """Per pipeline run, its tiles/s over the mean of the bare rounds just before and after."""
    labels = [c[0] for c in BARE_CONFIGS]
    per_run = []
    for i, run in enumerate(rec["pipeline_runs"]):
        before, after = rec["bare_rounds"][i], rec["bare_rounds"][i + 1]
        bare = {lb: (before[lb]["tiles_per_s"] + after[lb]["tiles_per_s"]) / 2 for lb in labels}
        per_run.append({
            "bare_tiles_per_s": {lb: round(v, 4) for lb, v in bare.items()},
            "ratio_summary": {lb: round(run["tiles_per_s"] / v, 4) for lb, v in bare.items()},
            "ratio_process": {lb: round(run["tiles_per_s_process"] / v, 4)
                              for lb, v in bare.items()},
        })
    rec["per_run"] = per_run
    bare_median = {lb: statistics.median(r["bare_tiles_per_s"][lb] for r in per_run)
                   for lb in labels}
    best = max((lb for lb in labels if lb != SINGLE_CORE_CONFIG), key=bare_median.get)
    alternative = max((lb for lb in labels if lb not in (SINGLE_CORE_CONFIG, PIPELINE_CONFIG)),
                      key=bare_median.get)
    rec["bare_tiles_per_s_median"] = {lb: round(v, 4) for lb, v in bare_median.items()}
    rec["best_bare_config"] = best
    rec["best_alternative_bare_config"] = alternative
    rec["pipeline_tiles_per_s_median"] = round(
        statistics.median(r["tiles_per_s"] for r in rec["pipeline_runs"]), 4)
    rec["pipeline_tiles_per_s_process_median"] = round(
        statistics.median(r["tiles_per_s_process"] for r in rec["pipeline_runs"]), 4)
    for key in ("ratio_summary", "ratio_process"):
        rec[f"efficiency_vs_pipeline_config_{key[6:]}"] = round(
            statistics.median(r[key][PIPELINE_CONFIG] for r in per_run), 4)
        rec[f"efficiency_vs_best_{key[6:]}"] = round(
            statistics.median(r[key][best] for r in per_run), 4)
        rec[f"efficiency_vs_best_alternative_{key[6:]}"] = round(
            statistics.median(r[key][alternative] for r in per_run), 4)
    # CPU seconds per tile are far less sensitive to other processes than wall time.
    cpu_bare = statistics.median(
        r[PIPELINE_CONFIG]["cpu_s_per_tile"] for r in rec["bare_rounds"])
    cpu_pipe = statistics.median(r["cpu_s_per_tile"] for r in rec["pipeline_runs"])
    rec["cpu_s_per_tile"] = {"bare_pipeline_config": cpu_bare, "pipeline": cpu_pipe}
    rec["cpu_efficiency_vs_pipeline_config"] = round(cpu_bare / cpu_pipe, 4)
    rec["foreign_cpu_cores_pipeline_runs"] = [r["foreign_cpu_cores"]
                                              for r in rec["pipeline_runs"]]
    rec["target"] = EFFICIENCY_TARGET
    rec["met_vs_pipeline_config"] = rec["efficiency_vs_pipeline_config_summary"] >= (
        EFFICIENCY_TARGET)
    rec["met_vs_best"] = rec["efficiency_vs_best_summary"] >= EFFICIENCY_TARGET
    log(f"   efficiency (RunSummary time) vs pipeline config "
        f"{rec['efficiency_vs_pipeline_config_summary']:.3f}, vs best ({best}) "
        f"{rec['efficiency_vs_best_summary']:.3f}; with process start-up "
        f"{rec['efficiency_vs_pipeline_config_process']:.3f} / "
        f"{rec['efficiency_vs_best_process']:.3f}; vs the best other config ({alternative}) "
        f"{rec['efficiency_vs_best_alternative_summary']:.3f}; CPU-time efficiency "
        f"{rec['cpu_efficiency_vs_pipeline_config']:.3f}")


# --- 2. pipeline-only throughput ---


def timed_segment(src: Path, out: Path, **kw: Any) -> dict[str, Any]:
    import tilesegment

    remove(out)
    with LoadMeter() as meter:
        summary = tilesegment.segment(str(src), str(out), overwrite=True, **kw)
    cpu_s = meter.own_cores * meter.wall
    return {"tiles": summary.tiles, "blocks": summary.blocks, "summary_s": summary.seconds,
            "tiles_per_s": round(summary.tiles / meter.wall, 2),
            "tiles_per_cpu_s": round(summary.tiles / max(cpu_s, 1e-9), 2), **meter.record()}


def throughput(args: argparse.Namespace, work: Path, results: dict[str, Any]) -> None:
    size = args.tp_size
    src = make_sample(work / f"sample-{size}.tif", size)
    cases = [(0, "tif"), (0, "zarr"), *((h, "tif") for h in args.halos if h)]
    rec: dict[str, Any] = {"model": "identity", "tile": 512, "raster_side": size,
                           "raster": f"{size}x{size} RGB uint8 GeoTIFF (DEFLATE, 256² blocks)",
                           "repeats": args.tp_repeats, "target": THROUGHPUT_TARGET,
                           "mode": "warm, in-process tilesegment.segment(); default workers "
                                   "and block size; cases run round-robin", "cases": []}
    results["throughput"] = rec
    # Warm-up: imports, GDAL, first model build; not timed.
    timed_segment(src, work / "tp-warm.tif", model="identity", halo=0)
    # Round-robin over the cases, so that a slow spell of the machine hits all of them.
    all_runs: dict[tuple[int, str], list[dict[str, Any]]] = {c: [] for c in cases}
    for _ in range(args.tp_repeats):
        for halo, fmt in cases:
            waited = settle()
            out = work / f"tp-out.{fmt}"
            all_runs[halo, fmt].append(
                {**timed_segment(src, out, model="identity", halo=halo),
                 "settle_wait_s": waited})
            remove(out)
    for halo, fmt in cases:
        runs = all_runs[halo, fmt]
        rates = [r["tiles_per_s"] for r in runs]
        case = {"halo": halo, "core": 512 - 2 * halo, "output": fmt, "tiles": runs[0]["tiles"],
                "runs": runs, "tiles_per_s_median": statistics.median(rates),
                "tiles_per_s_best": max(rates),
                "foreign_cpu_cores_median": statistics.median(
                    r["foreign_cpu_cores"] for r in runs),
                "own_cpu_cores_median": statistics.median(r["own_cpu_cores"] for r in runs),
                "tiles_per_cpu_s_median": statistics.median(r["tiles_per_cpu_s"] for r in runs)}
        rec["cases"].append(case)
        log(f"   identity halo {halo:3d} -> {fmt:4s}: {case['tiles']} tiles, median "
            f"{case['tiles_per_s_median']:.0f} tiles/s (best {case['tiles_per_s_best']:.0f}), "
            f"own CPU {case['own_cpu_cores_median']:.2f} cores "
            f"({case['tiles_per_cpu_s_median']:.0f} tiles per CPU-second), "
            f"others' load {case['foreign_cpu_cores_median']:.2f} cores")
    remove(work / "tp-warm.tif")
    cold = run_cli(src, work / "tp-cold.tif", "--model", "identity", "--halo", "0")
    remove(work / "tp-cold.tif")
    rec["cold_cli"] = cold
    log(f"   cold CLI (new process, imports included): {cold['tiles']} tiles, "
        f"{cold['tiles_per_s']:.0f} tiles/s by RunSummary, "
        f"{cold['tiles_per_s_process']:.0f} tiles/s by process wall time")
    rec["profile"] = profile_identity(src, work)
    main = rec["cases"][0]
    rec["headline_tiles_per_s"] = main["tiles_per_s_median"]
    rec["met"] = main["tiles_per_s_median"] >= THROUGHPUT_TARGET


PROFILE_KEYS: dict[str, tuple[str, str | tuple[str, ...]]] = {
    "read (GDAL decode)": ("tilesegment/read/geotiff.py", "read"),
    "read_canvas (read + pad)": ("tilesegment/split.py", "read_canvas"),
    "nodata mask": ("tilesegment/normalize.py", ("valid_mask", "missing_values")),
    "normalize (to float32)": ("tilesegment/normalize.py", "normalize"),
    "cut_tiles (np.stack)": ("tilesegment/split.py", "cut_tiles"),
    "Predictor.__call__ (model call)": ("tilesegment/infer.py", "__call__"),
    "merge (CropMerger.add_one)": ("tilesegment/merge/crop.py", "add_one"),
    "to_mask (argmax)": ("tilesegment/block.py", "to_mask"),
    "block write (Zarr scratch)": ("tilesegment/write/base.py", "write_block"),
    "finalize (Zarr -> GeoTIFF)": ("tilesegment/write/base.py", "finalize"),
    "write_block task (all of a block)": ("tilesegment/block.py", "write_block"),
    "segment() total": ("tilesegment/pipeline.py", "segment"),
}


def profile_identity(src: Path, work: Path) -> dict[str, Any]:
    """cProfile of one warm identity run on the synchronous scheduler (one thread), so the
    cumulative times add up: where a single core spends its time per tile. The profiler's
    clock is the process CPU time, so other processes' load does not inflate the figures."""
    import tilesegment

    out = work / "tp-prof.tif"
    remove(out)
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    summary = tilesegment.segment(str(src), str(out), model="identity", halo=0,
                                  scheduler="synchronous", overwrite=True)
    prof.disable()
    remove(out)
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    found: dict[str, float] = {}
    for (filename, _, func), (_, _, _, cum, _) in stats.items():
        path = filename.replace(os.sep, "/")
        for label, (suffix, name) in PROFILE_KEYS.items():
            names = (name,) if isinstance(name, str) else name
            if func in names and path.endswith(suffix):
                found[label] = found.get(label, 0.0) + cum
    top = sorted(((tt, f"{Path(fn).name}:{func}") for (fn, _, func), (_, _, tt, _, _)
                  in stats.items()), reverse=True)[:15]
    tiles = summary.tiles
    rec = {"scheduler": "synchronous (one thread)", "clock": "process CPU time",
           "tiles": tiles, "wall_s": round(summary.seconds, 3),
           "cpu_ms_per_tile": {k: round(1000 * v / tiles, 3) for k, v in found.items()},
           "top_tottime_cpu_s": [[name, round(tt, 3)] for tt, name in top]}
    log("   profile (one thread, CPU ms per tile): " + ", ".join(
        f"{k} {v:.2f}" for k, v in rec["cpu_ms_per_tile"].items()))
    return rec


# --- 3. peak memory ---


def memory(args: argparse.Namespace, work: Path, results: dict[str, Any]) -> None:
    small, large = args.mem_sizes
    rec: dict[str, Any] = {"model": "identity", "halo": 0, "tile": 512,
                           "repeats": args.mem_repeats, "target_growth_pct":
                           MEMORY_GROWTH_TARGET_PCT, "runs": []}
    results["memory"] = rec
    base_src = make_sample(work / "sample-512.tif", 512)
    base = [run_cli(base_src, work / "mem-base.tif", "--model", "identity", "--halo", "0")
            for _ in range(args.mem_repeats)]
    rec["baseline_512_peak_rss_mib"] = max(r["peak_rss_mib"] for r in base)
    log(f"   baseline (512² px, one tile): peak RSS {rec['baseline_512_peak_rss_mib']:.0f} MiB")
    for size in (small, large):
        src = make_sample(work / f"sample-{size}.tif", size)
        for fmt in ("tif", "zarr"):
            runs = [run_cli(src, work / f"mem-out.{fmt}", "--model", "identity", "--halo", "0")
                    for _ in range(args.mem_repeats)]
            peak = max(r["peak_rss_mib"] for r in runs)
            rec["runs"].append({"size": size, "output": fmt, "peak_rss_mib": peak,
                                "peak_rss_mib_each": [r["peak_rss_mib"] for r in runs],
                                "above_baseline_mib": round(
                                    peak - rec["baseline_512_peak_rss_mib"], 1),
                                "tiles": runs[0]["tiles"],
                                "tiles_per_s": runs[0]["tiles_per_s"]})
            log(f"   {size}² -> {fmt:4s}: peak RSS {peak:.0f} MiB (each run: "
                f"{[round(r['peak_rss_mib']) for r in runs]})")
            remove(work / f"mem-out.{fmt}")
    # Contrast: the same runs with another GDAL block-cache size (GDAL_CACHEMAX: MB, or a
    # percentage of RAM; "5%" is GDAL's own default, which tilesegment caps since aa4222e).
    contrast = []
    for size in (small, large):
        src = work / f"sample-{size}.tif"
        for fmt in ("tif", "zarr"):
            runs = [run_cli(src, work / f"mem-out.{fmt}", "--model", "identity", "--halo", "0",
                            env={"GDAL_CACHEMAX": args.gdal_cache})
                    for _ in range(args.mem_repeats)]
            peak = max(r["peak_rss_mib"] for r in runs)
            contrast.append({"size": size, "output": fmt, "peak_rss_mib": peak,
                           "peak_rss_mib_each": [r["peak_rss_mib"] for r in runs]})
            log(f"   {size}² -> {fmt:4s} with GDAL_CACHEMAX={args.gdal_cache}: peak RSS "
                f"{peak:.0f} MiB (each run: {[round(r['peak_rss_mib']) for r in runs]})")
            remove(work / f"mem-out.{fmt}")
    rec["gdal_cachemax_contrast"] = args.gdal_cache
    rec["runs_gdal_cache_contrast"] = contrast
    remove(work / "mem-base.tif")
    growth = {}
    for fmt in ("tif", "zarr"):
        a = next(r for r in rec["runs"] if r["size"] == small and r["output"] == fmt)
        b = next(r for r in rec["runs"] if r["size"] == large and r["output"] == fmt)
        growth[fmt] = {
            "total_pct": round(100 * (b["peak_rss_mib"] / a["peak_rss_mib"] - 1), 2),
            "above_baseline_mib": [a["above_baseline_mib"], b["above_baseline_mib"]]}
        a, b = (next(r for r in contrast if r["size"] == n and r["output"] == fmt)
                for n in (small, large))
        growth[fmt]["gdal_cache_contrast_pct"] = round(
            100 * (b["peak_rss_mib"] / a["peak_rss_mib"] - 1), 2)
    rec["growth"] = growth
    rec["met"] = all(g["total_pct"] <= MEMORY_GROWTH_TARGET_PCT for g in growth.values())
    log("   growth " + ", ".join(
        f"{k}: {v['total_pct']:+.1f} % ({v['gdal_cache_contrast_pct']:+.1f} % with "
        f"GDAL_CACHEMAX={args.gdal_cache})" for k, v in growth.items()))


# --- figure ---


def figure(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.6), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    eff = results.get("efficiency")
    ax = axes[0]
    if eff and eff.get("per_run"):
        labels = [c[0] for c in BARE_CONFIGS]
        values = [eff["bare_tiles_per_s_median"][lb] for lb in labels]
        names = ["bare: " + lb for lb in labels] + ["pipeline: tilesegment run"]
        values.append(eff["pipeline_tiles_per_s_median"])
        colors = ["#9ecae1"] * len(labels) + ["#e6550d"]
        colors[0] = "#3182bd"
        y = range(len(names))
        ax.barh(y, values, color=colors)
        ax.set_yticks(list(y), names, fontsize=8)
        ax.invert_yaxis()
        for yi, v in zip(y, values, strict=True):
            ax.text(v, yi, f" {v:.2f}", va="center", fontsize=8)
        ax.set_xlabel("tiles/s (512² input tiles)")
        ax.set_title(f"1. unet-small, {eff['raster_side']}² px, {eff['tiles_expected']} tiles: "
                     f"efficiency (target {EFFICIENCY_TARGET})\n"
                     f"wall {eff['efficiency_vs_pipeline_config_summary']:.3f} vs same "
                     f"config, {eff['efficiency_vs_best_alternative_summary']:.3f} vs best "
                     f"other; CPU-time {eff['cpu_efficiency_vs_pipeline_config']:.3f}",
                     fontsize=10)
        ax.set_xlim(0, max(values) * 1.2)
    tp = results.get("throughput")
    ax = axes[1]
    if tp:
        names = [f"halo {c['halo']}\n→ {c['output']}" for c in tp["cases"]]
        med = [c["tiles_per_s_median"] for c in tp["cases"]]
        best = [c["tiles_per_s_best"] for c in tp["cases"]]
        names.append("cold CLI\nhalo 0 → tif")
        med.append(tp["cold_cli"]["tiles_per_s_process"])
        best.append(tp["cold_cli"]["tiles_per_s_process"])
        x = range(len(names))
        ax.bar(x, best, color="#c7e9c0", label="best run")
        ax.bar(x, med, color="#31a354", width=0.5, label="median run")
        cores = results["machine"]["cores_available"]
        bound = [cores * c["tiles_per_cpu_s_median"] for c in tp["cases"]]
        ax.plot(range(len(bound)), bound, "k_", ms=28, mew=2,
                label=f"{cores} × tiles per CPU-second")
        ax.axhline(THROUGHPUT_TARGET, color="k", ls="--", lw=1, label="target 200")
        ax.set_xticks(list(x), names, fontsize=8)
        ax.set_ylabel("tiles/s end to end")
        ax.set_ylim(0, max(*best, *bound, THROUGHPUT_TARGET) * 1.35)
        ax.set_title(f"2. identity model, {tp['raster_side']}² px, 512² tiles", fontsize=10)
        ax.legend(fontsize=8, loc="upper right", ncols=2)
    mem = results.get("memory")
    ax = axes[2]
    if mem:
        for fmt, marker in (("tif", "o-"), ("zarr", "s-")):
            rows = [r for r in mem["runs"] if r["output"] == fmt]
            sizes = [r["size"] for r in rows]
            ax.plot(sizes, [r["peak_rss_mib"] for r in rows], marker,
                    label=f"→ {fmt} ({mem['growth'][fmt]['total_pct']:+.1f} %)")
        for fmt, marker in (("tif", "o--"), ("zarr", "s--")):
            rows = [r for r in mem.get("runs_gdal_cache_contrast", []) if r["output"] == fmt]
            if rows:
                ax.plot([r["size"] for r in rows], [r["peak_rss_mib"] for r in rows], marker,
                        alpha=0.6, label=f"→ {fmt}, GDAL_CACHEMAX={mem['gdal_cachemax_contrast']} "
                        f"({mem['growth'][fmt]['gdal_cache_contrast_pct']:+.1f} %)")
        ax.axhline(mem["baseline_512_peak_rss_mib"], color="gray", ls=":",
                   label="512² run (imports only)")
        ax.set_xscale("log", base=2)
        sizes = sorted({r["size"] for r in mem["runs"]})
        ax.set_xticks(sizes, [f"{s}²" for s in sizes])
        every = [*mem["runs"], *mem.get("runs_gdal_cache_contrast", [])]
        ax.set_ylim(0, max(r["peak_rss_mib"] for r in every) * 1.45)
        ax.set_xlabel("raster side (px)")
        ax.set_ylabel("peak RSS of the tilesegment process (MiB)")
        ax.set_title("3. peak memory, identity model", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"tilesegment pipeline benchmark — {cpu_label(results['machine'])}",
                 fontsize=10)
    loads = background_loads(results)
    if loads:
        fig.text(0.5, 0.005, f"CPU used by other processes during the timed runs: median "
                 f"{statistics.median(loads):.2f}, max {max(loads):.2f} cores (of "
                 f"{results['machine']['cores']})", ha="center", fontsize=8, color="#555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log(f"figure: {path}")


def background_loads(results: dict[str, Any]) -> list[float]:
    """``foreign_cpu_cores`` of every timed run in ``results``."""
    found: list[float] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "foreign_cpu_cores" in node:
                found.append(node["foreign_cpu_cores"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for key in ("efficiency", "throughput", "memory"):
        walk(results.get(key))
    return found


# --- main ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    p.add_argument("--replot", action="store_true",
                   help="no measuring: recompute the efficiency summary from the raw runs in "
                        "--json, rewrite it and redraw the figure")
    p.add_argument("--only", nargs="+", choices=["efficiency", "throughput", "memory"],
                   help="run only these sections")
    p.add_argument("--data-dir", type=Path,
                   help="keep and reuse the sample rasters here (default: a temporary "
                        "folder in /tmp, deleted at the end)")
    p.add_argument("--json", type=Path, default=None, help=f"default {DEFAULT_JSON}")
    p.add_argument("--figure", type=Path, default=None, help=f"default {DEFAULT_FIGURE}")
    p.add_argument("--wait-idle", type=float, default=None,
                   help="before each section wait up to this many seconds for other "
                        "processes to go quiet (default 30, quick 0)")
    p.add_argument("--settle", type=float, default=None,
                   help="before each timed measurement wait up to this many seconds for two "
                        "quiet seconds (default 20, quick 0)")
    p.add_argument("--wait-budget", type=float, default=300.0,
                   help="total seconds all --settle waits may take (default 300)")
    p.add_argument("--eff-size", type=int, help="efficiency raster side (default 8192)")
    p.add_argument("--eff-repeats", type=int, help="pipeline runs (default 2)")
    p.add_argument("--bare-seconds", type=float, help="per bare config and round (default 8)")
    p.add_argument("--tp-size", type=int, help="throughput raster side (default 8192)")
    p.add_argument("--tp-repeats", type=int, help="runs per case (default 5)")
    p.add_argument("--halos", type=int, nargs="+", help="halos to try (default 0 32 64)")
    p.add_argument("--mem-sizes", type=int, nargs=2, help="two sides (default 4096 16384)")
    p.add_argument("--mem-repeats", type=int, help="runs per size (default 3)")
    p.add_argument("--revision-note", default=None,
                   help="free text recorded with the results (e.g. which snapshot ran)")
    p.add_argument("--gdal-cache", default="5%",
                   help="GDAL_CACHEMAX of the contrast memory runs: MB or a percentage of RAM "
                        "(default 5%%, GDAL's own default, uncapped by tilesegment)")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {"eff_size": 1536 if quick else 8192, "eff_repeats": 1 if quick else 2,
                "bare_seconds": 3.0 if quick else 8.0, "tp_size": 4096 if quick else 8192,
                "tp_repeats": 2 if quick else 5, "halos": [0, 32] if quick else [0, 32, 64],
                "mem_sizes": [1024, 4096] if quick else [4096, 16384],
                "mem_repeats": 1 if quick else 3, "wait_idle": 0.0 if quick else 30.0,
                "settle": 0.0 if quick else 20.0}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.json is None:
        args.json = (Path(tempfile.gettempdir()) / "pipeline-quick.json" if quick
                     else DEFAULT_JSON)
    if args.figure is None:
        args.figure = (Path(tempfile.gettempdir()) / "pipeline-benchmark-quick.png" if quick
                       else DEFAULT_FIGURE)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        results = json.loads(args.json.read_text())
        if results.get("efficiency", {}).get("pipeline_runs"):
            _efficiency_ratios(results["efficiency"])
            save(results, args.json)
        figure(results, args.figure)
        return 0
    # A plain kill should still remove the temporary rasters (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    global settle
    settle = Settler(args.settle, args.wait_budget)
    started = time.perf_counter()
    work = args.data_dir or Path(tempfile.mkdtemp(prefix="tilesegment-bench-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine_info(args)}
    results["machine"]["parallel_capacity_start"] = parallel_capacity()
    log(f"machine: {cpu_label(results['machine'])}; 2-process capacity "
        f"{results['machine']['parallel_capacity_start']} cores; work dir {work}")
    sections: list[tuple[str, Callable[..., None]]] = [
        ("efficiency", efficiency), ("throughput", throughput), ("memory", memory)]
    try:
        for name, fn in sections:
            if args.only and name not in args.only:
                continue
            with section(name, args, results):
                fn(args, work, results)
            save(results, args.json)
    finally:
        if args.data_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    results["machine"]["parallel_capacity_end"] = parallel_capacity()
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["machine"]["benchmark_wall_s"] = round(time.perf_counter() - started, 1)
    results["machine"]["settle_waits_s"] = round(settle.spent, 1)
    loads = background_loads(results)
    if loads:
        results["machine"]["foreign_cpu_cores_timed_runs"] = {
            "median": statistics.median(loads), "max": max(loads), "n": len(loads)}
    save(results, args.json)
    figure(results, args.figure)
    log(f"results: {args.json} ({results['machine']['benchmark_wall_s']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
