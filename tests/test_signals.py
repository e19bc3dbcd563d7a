"""Stop signals: a real ``tilesegment run`` subprocess stopped mid-block (its model held at a
gate), and ``run`` invoked in-process leaving this process's handlers as it found them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.runs import GATED, REPO, Run, gated_env, write_input
from tilesegment.cli.main import cli

STOP = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def outputs_left(folder: Path, name: str) -> list[str]:
    """Every entry of ``folder`` belonging to the output ``name`` (hidden ones included)."""
    return sorted(p.name for p in folder.iterdir()
                  if p.name == name or p.name.startswith(f".{name}")
                  or p.name.startswith(Path(name).stem + "."))


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "name"), [(signal.SIGHUP, "out.tif"),
                                              (signal.SIGTERM, "out.zarr")])
def test_stop_signal_mid_run_removes_the_partial(tmp_path, signum, name):
    src = write_input(tmp_path / "in.tif")
    env = gated_env(tmp_path)
    run = Run([src, "-o", tmp_path / name, *GATED, "--workers", "1", "--save-probabilities"],
              env, tmp_path)
    try:
        run.wait_for(tmp_path / "started")  # mid-block, partial files on disk
        assert any(".partial-" in n for n in outputs_left(tmp_path, name))
        run.proc.send_signal(signum)
        code = run.wait()
    finally:
        (tmp_path / "gate").touch()
    assert code == 128 + signum
    lines = run.stderr.strip().splitlines()
    sig = signal.Signals(signum).name
    assert lines == [f"Interrupted by {sig}: partial output removed."], run.stderr
    assert run.stdout == ""
    assert outputs_left(tmp_path, name) == []  # no partial, no lock file, no output


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGINT])
def test_stop_signal_to_a_local_cluster_job_is_one_line(tmp_path, signum):
    """A closed terminal (SIGHUP) or Ctrl-C signals the whole job: the run's cluster
    processes too. Still one line, nothing left, no process left behind."""
    import psutil

    src = write_input(tmp_path / "in.tif")
    env = gated_env(tmp_path)
    run = Run([src, "-o", tmp_path / "out.zarr", *GATED, "--local-cluster", "2"], env,
              tmp_path, new_session=True)
    try:
        run.wait_for(tmp_path / "started")
        group = [run.pid, *(p.pid for p in psutil.Process(run.pid).children(recursive=True))]
        assert len(group) >= 3  # the run and its two workers at least
        os.killpg(run.pid, signum)
        code = run.wait()
    finally:
        (tmp_path / "gate").touch()
    assert code == 128 + signum
    sig = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
    assert run.stderr.strip().splitlines() == [f"Interrupted{sig}: partial output removed."]
    assert outputs_left(tmp_path, "out.zarr") == []
    left = []
    for pid in group[1:]:
        try:
            proc = psutil.Process(pid)
            proc.wait(timeout=30)
        except psutil.NoSuchProcess:
            continue
        except psutil.TimeoutExpired:
            left.append(pid)
            proc.kill()
    assert left == []


@pytest.mark.slow
def test_second_ctrl_c_exits_at_once_without_traceback(tmp_path):
    src = write_input(tmp_path / "in.tif")
    env = gated_env(tmp_path)
    run = Run([src, "-o", tmp_path / "out.zarr", *GATED, "--workers", "1"], env, tmp_path)
    try:
        run.wait_for(tmp_path / "started")
        run.proc.send_signal(signal.SIGINT)
        # The block thread is still held at the gate: Python would wait for it at exit,
        # where a second Ctrl-C used to print a threading traceback.
        run.proc.send_signal(signal.SIGINT)
        code = run.wait(timeout=60)  # the gate stays shut: ending means not waiting
    finally:
        (tmp_path / "gate").touch()
    assert code == 130
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) in (1, 2), run.stderr
    assert lines[0] in ("Interrupted: partial output removed.",
                        "SIGINT again: stopped at once (a hidden .<output>.partial-* may be "
                        "left: --resume finishes it)")


SECOND_SIGNAL = """
import time
from tilesegment.cli.run import _stop_signals_handled
with _stop_signals_handled():
    try:
        print("running", flush=True)
        time.sleep(60)
    finally:
        print("cleaning up", flush=True)
        time.sleep(60)
"""


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGHUP])
def test_second_signal_during_cleanup_ends_the_process_at_once(second):
    proc = subprocess.Popen([sys.executable, "-c", SECOND_SIGNAL], text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == "running\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline() == "cleaning up\n"  # the first signal unwinds
    proc.send_signal(second)
    try:
        _, err = proc.communicate(timeout=30)  # the cleanup would take 60 s
    finally:
        proc.kill()
    assert proc.returncode == 128 + second
    name = signal.Signals(second).name
    assert err.splitlines() == [f"{name} again: stopped at once (a hidden "
                                ".<output>.partial-* may be left: --resume finishes it)"]


def _sentinel(signum, frame) -> None:  # pragma: no cover - never called
    pass


@pytest.mark.parametrize("fails", [False, True])
def test_run_restores_the_signal_handlers(tmp_path, fails):
    src = write_input(tmp_path / "in.tif")
    saved = {sig: signal.getsignal(sig) for sig in STOP}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _sentinel)
        before = {sig: signal.getsignal(sig) for sig in STOP}
        args = ["run", str(src), "-o", str(tmp_path / "out.zarr"), "--model", "identity",
                "--classes", "3" if not fails else "4", "--tile", "32", "--halo", "0"]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == (1 if fails else 0), result.output
        assert {sig: signal.getsignal(sig) for sig in STOP} == before
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("command", [["info", "x.tif"], ["evaluate", "x.tif", "y.tif"]])
def test_ctrl_c_outside_run_does_not_claim_an_output_was_removed(monkeypatch, command):
    """Only `run` writes: Ctrl-C during `info` or `evaluate` says "Interrupted." alone."""
    import tilesegment.evaluation
    import tilesegment.read

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tilesegment.read, "open_raster", ctrl_c)
    monkeypatch.setattr(tilesegment.evaluation, "evaluate", ctrl_c)
    with CliRunner().isolated_filesystem():
        for name in ("x.tif", "y.tif"):
            Path(name).write_bytes(b"")
        result = CliRunner().invoke(cli, command)
    assert result.exit_code == 130
    assert result.output.strip().splitlines()[-1] == "Interrupted."
