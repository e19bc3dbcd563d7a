"""One run per output: the lock beside the output (``write/lock.py``) seen from outside.

Other holders are real processes (a ``python -c`` holding the lock, a real ``tilesegment
run`` held mid-block by a gated model); a killed holder is killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from tests.runs import GATED, REPO, Run, gated_env, write_input
from tilesegment.cli.main import cli
from tilesegment.errors import OutputError, OutputLockedError
from tilesegment.pipeline import segment
from tilesegment.write import lock

IDENTITY = ["--model", "identity", "--classes", "3", "--tile", "32", "--halo", "0"]
HOLD = ("import sys, time; from tilesegment.write.lock import acquire; acquire(sys.argv[1]); "
        "print('held', flush=True); time.sleep(120)")


def hold_lock(output: Path) -> subprocess.Popen:
    """Another process holding the lock of ``output`` (until killed)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(output)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line == "held\n", proc.stderr.read()
    return proc


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_lock_held_by_another_process_refuses_segment_and_dies_with_it(tmp_path):
    src = write_input(tmp_path / "in.tif")
    out = tmp_path / "out.zarr"
    holder = hold_lock(out)
    try:
        info = os.stat(lock.lock_path(out), follow_symlinks=False)
        assert stat.S_IMODE(info.st_mode) == 0o600
        with pytest.raises(OutputLockedError, match=f"another run \\(pid {holder.pid}\\)"):
            segment(src, out, model="identity", classes=3, tile=32, halo=0)
        assert not out.exists()
        assert hidden(tmp_path) == [".out.zarr.lock"]  # the holder's, nothing of ours
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup: the kernel drops the flock
        holder.wait()
    assert lock.lock_path(out).exists()  # stale file left by the killed holder...
    summary = segment(src, out, model="identity", classes=3, tile=32, halo=0)  # ...no block
    mask = zarr.open_group(out, mode="r")["mask"][:]
    import rasterio

    with rasterio.open(src) as ds:
        assert np.array_equal(mask, ds.read().argmax(0).astype(np.uint8))
    assert summary.output == out
    assert hidden(tmp_path) == []  # the stale lock file is gone too


def test_cli_refuses_a_locked_output_in_one_line(tmp_path):
    src = write_input(tmp_path / "in.tif")
    out = tmp_path / "out.tif"
    holder = hold_lock(out)
    try:
        for extra in ([], ["--overwrite"], ["--local-cluster", "2"]):
            result = CliRunner().invoke(cli, ["run", str(src), "-o", str(out), *IDENTITY,
                                              *extra])
            assert result.exit_code == 1, result.output
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
            assert f"another run (pid {holder.pid})" in lines[0]
            assert "Traceback" not in result.output
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.tif.lock", "in.tif"]


def test_lock_is_reentrant_in_its_thread_only(tmp_path):
    out = tmp_path / "sub" / "dir" / "out.zarr"
    with lock.output_lock(out):
        assert lock.is_locked(out)
        with lock.output_lock(out):  # the CLI, then segment(), in one thread
            assert lock.is_locked(out)
        assert lock.is_locked(out)
        errors = []

        def other() -> None:
            try:
                lock.acquire(out)
            except OutputLockedError as exc:
                errors.append(exc)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert len(errors) == 1 and "another run in this process" in str(errors[0])
    assert not lock.is_locked(out)
    assert not (tmp_path / "sub").exists()  # the folders made for the lock were empty


def test_lock_refuses_a_planted_symlink(tmp_path):
    out = tmp_path / "out.zarr"
    target = tmp_path / "victim.txt"
    target.write_text("precious")
    os.symlink(target, lock.lock_path(out))
    with pytest.raises(OutputError, match="symbolic link"):
        lock.acquire(out)
    assert target.read_text() == "precious"
    assert os.path.islink(lock.lock_path(out))
    dangling = tmp_path / "missing.txt"
    out2 = tmp_path / "out2.zarr"
    os.symlink(dangling, lock.lock_path(out2))
    with pytest.raises(OutputError, match="symbolic link"):
        lock.acquire(out2)
    assert not dangling.exists()  # not created through the link


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file another user owns")
def test_lock_refuses_a_file_owned_by_another_user(tmp_path):
    out = tmp_path / "out.zarr"
    path = lock.lock_path(out)
    path.write_text("")
    os.chown(path, 65534, 65534)
    with pytest.raises(OutputError, match="not a lock file of this user"):
        lock.acquire(out)
    assert path.stat().st_uid == 65534


@pytest.mark.slow
def test_second_run_is_refused_before_it_computes_and_the_first_completes(tmp_path):
    src = write_input(tmp_path / "in.tif")
    out = tmp_path / "out.zarr"
    env = gated_env(tmp_path)
    first = Run([src, "-o", out, *GATED, "--workers", "1"], env, tmp_path, "first")
    try:
        first.wait_for(tmp_path / "started")  # the first is computing a block
        second = Run([src, "-o", out, *GATED, "--workers", "1", "--overwrite"], env,
                     tmp_path, "second")
        assert second.wait() == 1
        assert first.proc.poll() is None  # still held at its gate: it has not finished
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert lines[0].startswith("Error: ") and f"pid {first.pid}" in lines[0]
        # the second built no model (only the first appears) and made no partial
        builds = (tmp_path / "builds").read_text().split()
        assert builds and set(builds) == {str(first.pid)}
        partials = [n for n in hidden(tmp_path) if ".partial-" in n]
        assert len(partials) == 1, hidden(tmp_path)
    finally:
        (tmp_path / "gate").touch()
    assert first.wait() == 0, first.stderr
    assert first.stdout.startswith(f"wrote {out}")
    assert zarr.open_group(out, mode="r")["mask"].shape == (64, 64)
    assert hidden(tmp_path) == []


@pytest.mark.slow
def test_a_run_killed_with_sigkill_does_not_block_the_next(tmp_path):
    src = write_input(tmp_path / "in.tif")
    out = tmp_path / "out.tif"
    env = gated_env(tmp_path)
    first = Run([src, "-o", out, *GATED, "--workers", "1"], env, tmp_path, "first")
    first.wait_for(tmp_path / "started")
    first.proc.send_signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    assert lock.lock_path(out).exists()  # left behind, but nobody holds it
    (tmp_path / "gate").touch()
    second = Run([src, "-o", out, *GATED, "--workers", "1"], env, tmp_path, "second")
    assert second.wait() == 0, second.stderr
    assert second.stdout.startswith(f"wrote {out}")
    assert not lock.lock_path(out).exists()
