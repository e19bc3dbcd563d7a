"""Resume after a crash, interrupts and faults, with real ``tilesegment run`` processes.

The model (``tests.resume_models:build``) logs the top-left pixel of every tile it is called
on to a file (``$TS_CALL_LOG``), and the input carries each pixel's position in its first two
bands: which blocks a run computed is read from OUTSIDE the code under test. The manifest
(``<store>/done/<row0>.<col0>.json``) is read as plain files. Outputs are compared with an
undisturbed threaded run: the decoded mask and, for Zarr, every chunk file byte for byte.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.runs import REPO, Run

SIDE, BLOCK = 256, 32
BLOCKS = {(r, c) for r in range(0, SIDE, BLOCK) for c in range(0, SIDE, BLOCK)}  # 64
WATCHED = ["--model", "tests.resume_models:build", "--classes", "2", "--tile", "32",
           "--halo", "0", "--block-size", str(BLOCK), "--normalize", "none", "--no-progress"]
CRASH_AT = (96, 64)  # the block holding the marker pixel of the crash test


def write_positions(path: Path, crash: bool = False) -> Path:
    """A float32 3-band GeoTIFF ``SIDE``²: band 0 the row, band 1 the column of each pixel,
    band 2 noise (with ``crash``, one pixel of block :data:`CRASH_AT` holds the model's
    crash value)."""
    import rasterio
    from rasterio.transform import Affine

    from tests.resume_models import CRASH

    rows, cols = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    noise = np.random.default_rng(0).uniform(1, 255, (SIDE, SIDE)).astype(np.float32)
    if crash:
        noise[CRASH_AT[0] + 5, CRASH_AT[1] + 7] = CRASH
    with rasterio.open(path, "w", driver="GTiff", height=SIDE, width=SIDE, count=3,
                       dtype="float32", crs="EPSG:32119", tiled=True, blockxsize=64,
                       blockysize=64, transform=Affine(10, 0, 600_000, 0, -10, 250_000)) as ds:
        ds.write(np.stack([rows, cols, noise]))
    return path


def env_for(log: Path, sleep: float = 0.0, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), TS_CALL_LOG=str(log),
               TS_CALL_SLEEP=str(sleep), **extra)
    env.pop("TILESEGMENT_TEST_BUILDS", None)
    return env


def called(log: Path) -> list[tuple[int, int, int]]:
    """``(row, col, pid)`` of every tile the model was called on."""
    if not log.exists():
        return []
    return [tuple(map(int, line.split())) for line in log.read_text().splitlines()
            if len(line.split()) == 3]


def wait_for_calls(run: Run, log: Path, n: int) -> None:
    """Wait until the model has been called on ``n`` tiles; fail if the run ends first."""
    import time

    for _ in range(6000):
        if len(called(log)) >= n:
            return
        if run.proc.poll() is not None:
            pytest.fail(f"the run ended first: {run.proc.returncode} {run.stderr}")
        time.sleep(0.02)
    pytest.fail(f"the model was never called {n} times: {run.stderr}")


def store_of(folder: Path, name: str) -> Path:
    stores = [p for p in folder.iterdir() if p.name.startswith(f".{name}.partial-")
              and p.is_dir()]
    assert len(stores) == 1, sorted(p.name for p in folder.iterdir())
    return stores[0]


def manifest(store: Path) -> set[tuple[int, int]]:
    """The blocks the store's manifest records, read as file names."""
    done = store / "done"
    if not done.is_dir():
        return set()
    return {tuple(map(int, p.name.removesuffix(".json").split(".")))
            for p in done.iterdir() if not p.name.startswith(".")}


def run_cli(args: list, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tilesegment.cli.main", "run",
                           *map(str, args)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def read_mask(path: Path) -> np.ndarray:
    if path.suffix == ".zarr":
        import zarr

        return zarr.open_group(path, mode="r")["mask"][:]
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(1)


def chunk_bytes(path: Path) -> dict[str, bytes]:
    """Every chunk file of a Zarr output's layers (metadata documents left out: they
    name the run)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != "zarr.json"}


def assert_same_output(got: Path, want: Path) -> None:
    assert np.array_equal(read_mask(got), read_mask(want))
    if got.suffix == ".zarr":
        assert chunk_bytes(got) == chunk_bytes(want)


def reference(tmp_path: Path, src: Path, name: str, extra: tuple = ()) -> Path:
    ref = tmp_path / "ref" / name
    ref.parent.mkdir(exist_ok=True)
    done = run_cli([src, "-o", ref, *WATCHED, *extra], env_for(tmp_path / "ref.log"),
                   tmp_path)
    assert done.returncode == 0, done.stderr
    return ref


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("Warning:")]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["out.zarr", "out.tif"])
def test_sigkill_then_resume_computes_only_the_missing_blocks(tmp_path, name):
    src = write_positions(tmp_path / "in.tif")
    out = tmp_path / name
    first_log = tmp_path / "first.log"
    first = Run([src, "-o", out, *WATCHED, "--workers", "2"], env_for(first_log, 0.05),
                tmp_path, "first")
    wait_for_calls(first, first_log, 24)
    first.proc.send_signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    store = store_of(tmp_path, name)
    done_before = manifest(store)
    assert 0 < len(done_before) < len(BLOCKS)
    # every recorded block was computed by the killed run (from its own log)
    assert done_before <= {(r, c) for r, c, _ in called(first_log)}
    assert not out.exists()

    again = run_cli([src, "-o", out, *WATCHED], env_for(tmp_path / "x.log"), tmp_path)
    assert again.returncode == 1
    lines = error_lines(again.stderr)
    assert len(lines) == 1 and "--resume" in lines[0] and "--overwrite" in lines[0], lines
    assert "Traceback" not in again.stderr
    other = [*WATCHED]
    other[other.index("--halo") + 1] = "8"
    changed = run_cli([src, "-o", out, *other, "--resume"], env_for(tmp_path / "x.log"),
                      tmp_path)
    assert changed.returncode == 1
    lines = error_lines(changed.stderr)
    assert len(lines) == 1 and "halo: 0 → 8" in lines[0], lines
    assert not (tmp_path / "x.log").exists()  # refused before any model call
    assert manifest(store) == done_before

    resume_log = tmp_path / "resume.log"
    resumed = run_cli([src, "-o", out, *WATCHED, "--resume"], env_for(resume_log),
                      tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    computed = {(r, c) for r, c, _ in called(resume_log)}
    assert not computed & done_before  # no tile of a finished block ran again
    assert computed | done_before == BLOCKS
    assert len(called(resume_log)) == len(computed)  # each missing block once
    assert f"{len(BLOCKS)} tiles in {len(BLOCKS)} blocks" in resumed.stdout
    assert_same_output(out, reference(tmp_path, src, name))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "name"), [(signal.SIGINT, "out.zarr"),
                                              (signal.SIGTERM, "out.tif")])
def test_stop_signal_keeps_finished_blocks_and_resume_completes(tmp_path, signum, name):
    src = write_positions(tmp_path / "in.tif")
    out = tmp_path / name
    log = tmp_path / "first.log"
    # slow calls: a block task takes ~2 s, so stopping within seconds means stopping
    # running tasks between their batches of tiles, not waiting for them
    first = Run([src, "-o", out, *WATCHED, "--workers", "2", "--tile", "16",
                 "--batch-size", "1"], env_for(log, 0.4), tmp_path, "first")
    wait_for_calls(first, log, 20)
    first.proc.send_signal(signum)
    assert first.wait(timeout=30) == 128 + signum
    store = store_of(tmp_path, name)
    kept = manifest(store)
    assert 0 < len(kept) < len(BLOCKS)
    how = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
    assert first.stderr.strip().splitlines() == [
        f"Interrupted{how}: {len(kept)} of {len(BLOCKS)} blocks kept in {store.name}; "
        "rerun the same command with --resume to finish."]
    assert not out.exists()
    resume_log = tmp_path / "resume.log"
    resumed = run_cli([src, "-o", out, *WATCHED, "--tile", "16", "--batch-size", "1",
                       "--resume"], env_for(resume_log), tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert not {(r // BLOCK * BLOCK, c // BLOCK * BLOCK)
                for r, c, _ in called(resume_log)} & kept
    assert_same_output(out, reference(tmp_path, src, name, ("--tile", "16")))


@pytest.mark.slow
def test_a_block_that_kills_its_worker_is_named_and_the_others_are_kept(tmp_path):
    src = write_positions(tmp_path / "in.tif", crash=True)
    out = tmp_path / "out.zarr"
    # one failure allowed (distributed's default is 3): the same verdict, sooner
    env = env_for(tmp_path / "calls.log",
                  DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="1")
    done = run_cli([src, "-o", out, *WATCHED, "--local-cluster", "2"], env, tmp_path)
    assert done.returncode == 1, done.stderr
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert f"the block at row {CRASH_AT[0]}, col {CRASH_AT[1]} (px)" in lines[0]
    assert "--resume" in lines[0]
    store = store_of(tmp_path, "out.zarr")
    kept = manifest(store)
    assert kept and CRASH_AT not in kept
    # counted while the cluster still ran: its workers may have recorded a few more since
    said = re.search(rf"(\d+) of {len(BLOCKS)} blocks are done", lines[0])
    assert said is not None and 0 < int(said.group(1)) <= len(kept), lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_a_worker_killed_mid_run_changes_nothing(tmp_path):
    import psutil

    src = write_positions(tmp_path / "in.tif")
    out = tmp_path / "out.zarr"
    log = tmp_path / "calls.log"
    run = Run([src, "-o", out, *WATCHED, "--local-cluster", "2"], env_for(log, 0.05),
              tmp_path)
    wait_for_calls(run, log, 10)
    workers = {pid for _, _, pid in called(log)} - {run.pid}
    family = {p.pid for p in psutil.Process(run.pid).children(recursive=True)}
    victim = sorted(workers & family)[0]  # a worker process of this run, mid-run
    os.kill(victim, signal.SIGKILL)
    assert run.wait(timeout=180) == 0, run.stderr
    assert "Traceback" not in run.stderr
    after = {pid for _, _, pid in called(log)}
    assert victim in after and len(after - {victim}) >= 1
    assert_same_output(out, reference(tmp_path, src, "out.zarr"))


@pytest.mark.slow
def test_disk_full_keeps_the_finished_blocks_and_resumes_once_freed(tmp_path, small_disk):
    """A Zarr output (1.4 MB with probabilities) onto a 4 MB disk a filler leaves ~0.6 MB
    of: one error line, nothing at the final path; the filler removed, ``--resume``
    completes it, identical to a run with room."""
    import rasterio
    from rasterio.transform import Affine

    side = 800
    src = tmp_path / "scene.tif"
    data = np.random.default_rng(1).integers(0, 256, (3, side, side), dtype=np.uint8)
    with rasterio.open(src, "w", driver="GTiff", height=side, width=side, count=3,
                       dtype="uint8", crs="EPSG:32119",
                       transform=Affine(1, 0, 5000, 0, -1, 9000)) as ds:
        ds.write(data)
    args = ["--model", "identity", "--classes", "3", "--tile", "128", "--halo", "0",
            "--block-size", "128", "--no-progress", "--save-probabilities"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    free = os.statvfs(small_disk)
    filler = small_disk / "filler.bin"
    filler.write_bytes(b"\1" * (free.f_bavail * free.f_frsize - 600_000))
    out = small_disk / "out.zarr"
    done = run_cli([src, "-o", out, *args], env, tmp_path)
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and "No space left on device" in lines[0], done.stderr
    assert "wrote" not in done.stdout and not out.exists()
    store = store_of(small_disk, "out.zarr")
    kept = manifest(store)
    assert 0 < len(kept) < 49 and "--resume" in lines[0]
    filler.unlink()
    resumed = run_cli([src, "-o", out, *args, "--resume"], env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    ref = tmp_path / "ref.zarr"
    assert run_cli([src, "-o", ref, *args], env, tmp_path).returncode == 0
    assert_same_output(out, ref)
    assert sorted(p.name for p in small_disk.iterdir()) == ["out.zarr"]


def test_a_failed_block_keeps_the_others_and_resume_in_python_finishes(tmp_path, monkeypatch):
    """``segment()`` in-process: a model error in one block keeps the finished blocks (the
    error says so); ``resume=True`` with another explicit block size is refused naming
    both; with the error fixed it computes only the missing blocks, and the result and the
    summary's counts equal an undisturbed run's."""
    import rasterio

    from tests.resume_models import FAULT
    from tilesegment import segment
    from tilesegment.errors import GeometryError

    src = write_positions(tmp_path / "in.tif")
    with rasterio.open(src, "r+") as ds:
        band = ds.read(3)
        band[200, 210] = FAULT  # block (192, 192)
        ds.write(band, 3)
    settings = dict(model="tests.resume_models:build", classes=2, tile=32, halo=0,
                    block_size=BLOCK, normalization="none", workers=1)
    out = tmp_path / "out.zarr"
    log = tmp_path / "calls.log"
    monkeypatch.setenv("TS_CALL_LOG", str(log))
    monkeypatch.setenv("TS_FAULT", "1")
    with pytest.raises(RuntimeError, match="model fault") as failed:
        segment(src, out, **settings)
    store = store_of(tmp_path, "out.zarr")
    kept = manifest(store)
    assert kept and (192, 192) not in kept and not out.exists()
    note = " ".join(getattr(failed.value, "__notes__", []))
    assert f"{len(kept)} of {len(BLOCKS)} blocks are done" in note and "--resume" in note
    with pytest.raises(GeometryError, match=r"--block-size 64 .*32x32.*--block-size 32"):
        segment(src, out, **{**settings, "block_size": 64}, resume=True)
    monkeypatch.delenv("TS_FAULT")
    log.unlink()
    summary = segment(src, out, **{**settings, "block_size": None}, resume=True)
    assert {(r, c) for r, c, _ in called(log)} == BLOCKS - kept
    assert summary.blocks == len(BLOCKS) and summary.tiles == len(BLOCKS)
    want = segment(src, None, **settings)
    assert np.array_equal(read_mask(out), want)
    assert summary.class_counts.tolist() == np.bincount(want.ravel(), minlength=2).tolist()


def test_staged_geotiffs_of_a_killed_run_are_swept_under_the_lock(tmp_path):
    """What a run killed while writing its GeoTIFFs leaves (the staged layer, a COG's
    ``.tiled`` stage, GDAL's ``.ovr.tmp``) is removed by the next run onto that output;
    a file of the same pattern that is not a TIFF is left, with a warning."""
    import warnings

    from tilesegment.errors import StaleOutputWarning
    from tilesegment.write import lock, stores

    final = tmp_path / "out.tif"
    tiff = b"II*\0" + b"\0" * 100
    left_by_a_kill = [tmp_path / ".out.tif.partial-0a1b2c3d.tif",
                      tmp_path / ".out.tif.partial-0a1b2c3d.tif.tiled",
                      tmp_path / ".out.tif.partial-0a1b2c3d.tif.ovr.tmp",
                      tmp_path / ".out.probabilities.tif.partial-0a1b2c3d.tif"]
    for path in left_by_a_kill:
        path.write_bytes(tiff if not path.name.endswith(".tmp") else b"")
    mine = tmp_path / ".out.tif.partial-0a1b2c3d.tif.notes"
    mine.write_text("my notes")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        stores.clear_stale(final, None, [tmp_path / "out.probabilities.tif"])
    assert all(path.exists() for path in left_by_a_kill)  # not under the lock: untouched
    with lock.output_lock(final), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        stores.clear_stale(final, None, [tmp_path / "out.probabilities.tif"])
    messages = [str(w.message) for w in record if issubclass(w.category, StaleOutputWarning)]
    assert not any(path.exists() for path in left_by_a_kill)
    assert len([m for m in messages if m.startswith("removed")]) == 4, messages
    assert [m for m in messages if m.startswith("left")] == [
        f"left {mine} alone: it is named like a staged GeoTIFF of out.tif, but is not a TIFF"]
    assert mine.read_text() == "my notes"
