"""``tilesegment run`` as a real subprocess, stopped mid-run at a known point.

The model ``gated:build`` (written to the test's folder) is a 1×1 convolution whose first
forward on real data creates ``started`` and then waits until ``gate`` exists: a run can be
held mid-block for as long as a test needs, with no timing guess. Each process that builds
the model appends its pid to ``builds``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

SLOW_MODEL = '''
import os, time
import torch
from torch import nn


class Gated(nn.Module):
    """A 1x1 convolution whose forward on real data waits for the file $GATE."""

    def __init__(self, c, k):
        super().__init__()
        self.conv = nn.Conv2d(c, k, 1)

    def forward(self, x):
        if bool(x.abs().sum() > 0):  # not the zero tile the model is probed with
            open(os.environ["STARTED"], "a").close()
            for _ in range(1200):
                if os.path.exists(os.environ["GATE"]):
                    break
                time.sleep(0.05)
        return self.conv(x)


def build(in_channels, num_classes):
    with open(os.environ["BUILDS"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    return Gated(in_channels, num_classes)
'''


def gated_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a ``tilesegment run`` subprocess whose model ``gated:build`` waits
    in its first real forward until ``tmp_path/gate`` exists (``tmp_path/started`` then
    exists), and records in ``tmp_path/builds`` each process that builds it."""
    (tmp_path / "gated.py").write_text(SLOW_MODEL)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(tmp_path)])
    env.update(GATE=str(tmp_path / "gate"), STARTED=str(tmp_path / "started"),
               BUILDS=str(tmp_path / "builds"))
    return env


GATED = ["--model", "gated:build", "--classes", "2", "--tile", "32", "--halo", "0",
         "--block-size", "32", "--no-progress"]


class Run:
    """A ``tilesegment run`` subprocess; its stdout and stderr go to files (a pipe could
    fill up, or be held open by the cluster's worker processes)."""

    def __init__(self, args: list, env: dict, folder: Path, name: str = "run",
                 new_session: bool = False) -> None:
        self.out_path, self.err_path = folder / f"{name}.out", folder / f"{name}.err"
        with self.out_path.open("w") as out, self.err_path.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tilesegment.cli.main", "run", *map(str, args)],
                env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                start_new_session=new_session)
        self.pid = self.proc.pid

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the run did not end within {timeout} s: {self.stderr}")

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait_for(self, path: Path) -> None:
        """Wait until ``path`` exists; fail if the run ends first."""
        for _ in range(2400):
            if path.exists():
                return
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended first: {self.proc.returncode} {self.stderr}")
            time.sleep(0.05)
        self.proc.kill()
        pytest.fail(f"{path} never appeared: {self.stderr}")


def write_input(path: Path, side: int = 64) -> Path:
    """A 3-band uint8 GeoTIFF ``side`` × ``side`` of random values 1..255."""
    import rasterio
    from rasterio.transform import Affine

    data = np.random.default_rng(0).integers(1, 256, (3, side, side), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", height=side, width=side, count=3,
                       dtype="uint8", crs="EPSG:32119",
                       transform=Affine(10, 0, 600_000, 0, -10, 250_000)) as ds:
        ds.write(data)
    return path
