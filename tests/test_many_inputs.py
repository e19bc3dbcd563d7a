"""Many inputs in one ``tilesegment run`` (and ``segment_many``): one output per input in
the ``-o`` folder, the model built once, a damaged input that does not stop the others, the
summary table and exit status, globs and ``@lists``, reruns skipped by fingerprint, and
same-stem inputs refused before any work.

The model is ``tests.pool_models:build`` (a seeded 1×1 convolution whose builder appends
its pid to ``$TILESEGMENT_TEST_BUILDS``): builds are counted from outside the code, and the
mask has an independent NumPy reference (argmax of ``W·x + b``; no normalisation, halo 0).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from click.testing import CliRunner, Result
from rasterio.transform import Affine

from tilesegment import segment, segment_many
from tilesegment.cli.main import cli
from tilesegment.errors import SettingError

REPO = Path(__file__).resolve().parents[1]
MODEL = ["--model", "tests.pool_models:build", "--classes", "2", "--tile", "32",
         "--halo", "0", "--block-size", "32", "--no-progress"]
SETTINGS = dict(model="tests.pool_models:build", classes=2, tile=32, halo=0, block_size=32)


def write_scene(path: Path, seed: int, side: int = 64) -> Path:
    """A 3-band uint8 GeoTIFF ``side`` × ``side`` of seeded random values."""
    data = np.random.default_rng(seed).integers(0, 256, (3, side, side), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", height=side, width=side, count=3,
                       dtype="uint8", crs="EPSG:32119",
                       transform=Affine(10, 0, 600_000, 0, -10, 250_000)) as ds:
        ds.write(data)
    return path


def truncated(path: Path, seed: int) -> Path:
    """A GeoTIFF cut to a third of its bytes (its pixel data lies past the end)."""
    write_scene(path, seed)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])
    return path


def reference_mask(path: Path) -> np.ndarray:
    """The mask of ``tests.pool_models:build`` computed with NumPy: argmax over classes of
    the seeded 1×1 convolution of the raw pixel values."""
    import torch

    torch.manual_seed(7)
    conv = torch.nn.Conv2d(3, 2, 1)
    w = conv.weight.detach().numpy().reshape(2, 3).astype(np.float64)
    b = conv.bias.detach().numpy().astype(np.float64)
    with rasterio.open(path) as ds:
        x = ds.read().astype(np.float64)
    logits = np.einsum("kc,chw->khw", w, x) + b[:, None, None]
    return np.argmax(logits, axis=0).astype(np.uint8)


def mask_of(output: Path) -> np.ndarray:
    return np.asarray(zarr.open_group(str(output), mode="r")["mask"][:])


def table(stdout: str) -> dict[str, list[str]]:
    """The summary table's rows by input: [status, blocks, seconds, output, reason...]."""
    lines = stdout.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["input", "status"])
    return {line.split()[0]: line.split()[1:] for line in lines[header + 1:-1]}


def builds(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.fixture
def counted(tmp_path, monkeypatch) -> Path:
    """``$TILESEGMENT_TEST_BUILDS`` for this test (each build of the model adds a line)."""
    path = tmp_path / "builds"
    monkeypatch.setenv("TILESEGMENT_TEST_BUILDS", str(path))
    return path


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def run_cli(args: list, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tilesegment.cli.main", "run",
                           *map(str, args)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_damaged_input_does_not_stop_the_others(tmp_path, counted, monkeypatch):
    a, b = write_scene(tmp_path / "a.tif", 1), write_scene(tmp_path / "b.tif", 2)
    bad = truncated(tmp_path / "bad.tif", 3)
    env = dict(os.environ, PYTHONPATH=str(REPO), TILESEGMENT_TEST_BUILDS=str(counted))
    proc = run_cli([a, bad, b, "-o", tmp_path / "out/", *MODEL], env, tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    rows = table(proc.stdout)
    assert [rows[str(p)][0] for p in (a, bad, b)] == ["done", "failed", "done"]
    assert "truncated" in " ".join(rows[str(bad)][3:])  # the reason, in its row
    assert rows[str(a)][1] == "4"  # 64 × 64 in blocks of 32
    assert proc.stdout.strip().splitlines()[-1] == "3 inputs: 2 done, 0 skipped, 1 failed"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.zarr", "b.zarr"]
    # the model was built once, in the run's one process, for both good inputs
    assert builds(counted) == [builds(counted)[0]]
    # each output is what a single-input run of the same file writes, and the NumPy mask
    monkeypatch.setenv("TILESEGMENT_TEST_BUILDS", str(tmp_path / "single-builds"))
    for source in (a, b):
        single = tmp_path / f"single-{source.stem}.zarr"
        segment(source, single, **SETTINGS)
        many = mask_of(tmp_path / "out" / f"{source.stem}.zarr")
        assert np.array_equal(many, mask_of(single))
        assert np.array_equal(many, reference_mask(source))
    assert not np.array_equal(mask_of(tmp_path / "out/a.zarr"), mask_of(tmp_path / "out/b.zarr"))


def test_glob_and_list_file_select_the_expected_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("scenes/x1.tif", "scenes/x2.tif", "scenes/.hidden.tif", "scenes/deep/x3.tif",
                 "other/y.tif"):
        write_scene(tmp_path / name, 0, side=32)
    (tmp_path / "scenes/notes.txt").write_text("not a raster")
    (tmp_path / "paths.txt").write_text(
        "# inputs of the run\n\nother/y.tif\n  scenes/deep/*.tif  \n# scenes/x1.tif\n")

    def planned(*sources: str) -> list[str]:
        result = invoke("plan", *sources, "-o", "out/", "--model", "identity",
                        "--classes", "3", "--tile", "32", "--halo", "0", "--json")
        assert result.exit_code == 0, result.output
        records = json.loads(result.stdout)
        assert {r["status"] for r in records} == {"run"}
        return [r["input"] for r in records]

    assert planned("scenes/*.tif") == ["scenes/x1.tif", "scenes/x2.tif"]
    assert planned("scenes/**/*.tif") == ["scenes/deep/x3.tif", "scenes/x1.tif",
                                          "scenes/x2.tif"]
    assert planned("@paths.txt") == ["other/y.tif", "scenes/deep/x3.tif"]
    # a path given twice (here also through a pattern) is one input
    assert planned("scenes/x2.tif", "scenes/x*.tif") == ["scenes/x2.tif", "scenes/x1.tif"]
    nothing = invoke("plan", "scenes/*.png", "-o", "out/", "--model", "identity")
    assert nothing.exit_code == 1
    assert nothing.stderr.strip() == "Error: no file matches 'scenes/*.png'"
    assert not (tmp_path / "out").exists()


def _stats(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every file and folder under ``folder``."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in [folder, *folder.rglob("*")]}


def test_rerun_skips_complete_outputs_of_the_same_fingerprint(tmp_path, counted):
    a, b = write_scene(tmp_path / "a.tif", 1), write_scene(tmp_path / "b.tif", 2)
    out = tmp_path / "out"
    first = invoke("run", a, b, "-o", out, *MODEL)
    assert first.exit_code == 0, first.output
    assert [row[0] for row in table(first.stdout).values()] == ["done", "done"]
    before = _stats(out)
    masks = {name: mask_of(out / name) for name in ("a.zarr", "b.zarr")}

    again = invoke("run", a, b, "-o", out, *MODEL)
    assert again.exit_code == 0, again.output
    rows = table(again.stdout)
    assert [rows[str(p)][0] for p in (a, b)] == ["skipped", "skipped"]
    assert again.stdout.strip().splitlines()[-1] == "2 inputs: 0 done, 2 skipped, 0 failed"
    assert _stats(out) == before  # not one file written, replaced or touched
    planned = invoke("plan", a, b, "-o", out, *MODEL, "--json")
    assert [r["status"] for r in json.loads(planned.stdout)] == ["skip", "skip"]

    # a setting that changes the output (the halo): refused for each input, naming
    # --overwrite and what differs; nothing touched
    changed = invoke("run", a, b, "-o", out, *MODEL[:-3], "--halo", "2", "--no-progress")
    assert changed.exit_code == 1, changed.output
    rows = table(changed.stdout)
    assert [rows[str(p)][0] for p in (a, b)] == ["failed", "failed"]
    reason = " ".join(rows[str(a)][3:])
    assert "--overwrite" in reason and "halo 0 → 2" in reason
    assert _stats(out) == before

    # a setting outside the fingerprint (the block size) still skips
    blocks = invoke("run", a, b, "-o", out, *MODEL[:-3], "--block-size", "64",
                    "--no-progress")
    assert [row[0] for row in table(blocks.stdout).values()] == ["skipped", "skipped"]

    replaced = invoke("run", a, b, "-o", out, *MODEL[:-3], "--halo", "2", "--no-progress",
                      "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert [row[0] for row in table(replaced.stdout).values()] == ["done", "done"]
    assert _stats(out)["a.zarr/zarr.json"] != before["a.zarr/zarr.json"]
    # a 1×1 convolution needs no context: the new halo gives the same mask
    assert np.array_equal(mask_of(out / "a.zarr"), masks["a.zarr"])


def test_same_stem_refused_before_any_work(tmp_path, counted):
    a = write_scene(tmp_path / "a.tif", 1)
    other = write_scene(tmp_path / "sub" / "a.tif", 2)
    result = invoke("run", a, other, "-o", tmp_path / "out", *MODEL)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {a} and {other} would both write {tmp_path / 'out' / 'a.zarr'}: rename "
        "one, or run them into different output folders"]
    assert not (tmp_path / "out").exists()
    assert builds(counted) == []  # no model built, no pixel read
    with pytest.raises(SettingError, match="would both write"):
        segment_many([a, other], tmp_path / "out", **SETTINGS)
    assert builds(counted) == []


def test_python_api_reports_each_input(tmp_path, counted):
    a = write_scene(tmp_path / "a.tif", 1)
    bad = truncated(tmp_path / "bad.tif", 3)
    seen = []
    results = segment_many([a, bad], tmp_path / "out", output_format="tif",
                           on_result=lambda r, i, n: seen.append((r.status, i, n)),
                           **SETTINGS)
    assert [(r.status, r.output.name) for r in results] == [("done", "a.tif"),
                                                             ("failed", "bad.tif")]
    assert seen == [("done", 0, 2), ("failed", 1, 2)]
    assert "truncated" in results[1].reason and results[1].summary is None
    assert results[0].blocks == 4 and results[0].summary.blocks == 4
    with rasterio.open(tmp_path / "out" / "a.tif") as ds:
        assert np.array_equal(ds.read(1), reference_mask(a))
    assert len(builds(counted)) == 1


@pytest.mark.slow
def test_cluster_serves_every_input_and_builds_once_per_process(tmp_path):
    """--local-cluster 2 with three inputs: one cluster for all (at most two worker
    processes ever build the model) and no process builds it twice."""
    pytest.importorskip("distributed")
    counted = tmp_path / "builds"
    sources = [write_scene(tmp_path / f"s{i}.tif", i) for i in range(3)]
    env = dict(os.environ, PYTHONPATH=str(REPO), TILESEGMENT_TEST_BUILDS=str(counted))
    proc = run_cli([*sources, "-o", tmp_path / "out/", *MODEL, "--local-cluster", "2"],
                   env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [row[0] for row in table(proc.stdout).values()] == ["done"] * 3
    pids = builds(counted)
    assert len(pids) == len(set(pids)), pids  # nobody built it twice
    assert len(pids) <= 3  # the client once (to probe it), each of two workers once
    for source in sources:
        assert np.array_equal(mask_of(tmp_path / "out" / f"{source.stem}.zarr"),
                              reference_mask(source))


def test_registered_model_built_once_for_all_inputs(tmp_path):
    """A registered model (built by the pool, not by resolving the name): the pool keeps
    it between inputs, and lets it go after the last one."""
    from tilesegment import workers

    sources = [write_scene(tmp_path / f"s{i}.tif", i, side=32) for i in range(3)]
    before = workers.builds
    results = segment_many(sources, tmp_path / "out", model="unet-tiny", classes=2,
                           tile=32, halo=8, seed=3)
    assert [r.status for r in results] == ["done"] * 3
    assert workers.builds == before + 1
    assert workers.pooled_keys() == []  # released once the inputs are done
    # each as a run of its own
    for source in sources:
        alone = segment(source, model="unet-tiny", classes=2, tile=32, halo=8, seed=3)
        assert np.array_equal(mask_of(tmp_path / "out" / f"{source.stem}.zarr"), alone)


def test_ctrl_c_stops_every_input_and_prints_the_table(tmp_path):
    """SIGINT while the first input is mid-block: exit 130, the second input never runs,
    and the table printed so far says so."""
    import signal

    from tests.runs import GATED, Run, gated_env

    first, second = write_scene(tmp_path / "a.tif", 1), write_scene(tmp_path / "b.tif", 2)
    env = gated_env(tmp_path)
    run = Run([first, second, "-o", tmp_path / "out/", *GATED, "--workers", "1"], env,
              tmp_path)
    try:
        run.wait_for(tmp_path / "started")
        run.proc.send_signal(signal.SIGINT)
        code = run.wait()
    finally:
        (tmp_path / "gate").touch()
    assert code == 130, run.stderr
    assert run.stdout.strip().splitlines()[-1] == (
        "2 inputs: 0 done, 0 skipped, 0 failed, 2 not run (interrupted)")
    assert "Traceback" not in run.stderr
    assert not any((tmp_path / "out").glob("*.zarr"))
