"""The run plan and its fingerprint: equal for runs that differ only in how they execute
(block size, workers, scheduler, progress, output path, the path naming the input), different
for anything that changes the output's bytes; stable across processes; ``tilesegment plan``
prints the plan without reading a pixel or importing torch, with the fingerprint the run
writes into its provenance."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner

from tilesegment import segment
from tilesegment.cli.main import cli
from tilesegment.plan import RunPlan, build_plan, describe_plan
from tilesegment.write import read_output_meta

REPO = Path(__file__).resolve().parents[1]
BASE = {"model": "unet-tiny", "classes": 3, "tile": 32, "halo": 8, "device": "cpu"}
"""Small settings every case starts from (halo 8 is below unet-tiny's radius: a SeamWarning,
filtered in pyproject.toml)."""


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "img.tif"
    data = np.random.default_rng(4).integers(0, 256, (3, 48, 72), dtype=np.uint8)
    tifffile.imwrite(path, data, photometric="minisblack")
    return path


def run_fingerprint(source, output: Path, **settings) -> str:
    """The fingerprint a real run wrote into its output's provenance (and its summary)."""
    summary = segment(source, output, **{**BASE, **settings})
    prov = read_output_meta(output)["provenance"]
    assert summary.settings["fingerprint"] == prov["fingerprint"]
    return prov["fingerprint"]


def plan_fingerprint(source, output=None, **settings) -> str:
    return build_plan(source, output, **{**BASE, **settings}).fingerprint


# -- equal when only the execution differs ----------------------------------------------------

def test_runs_differing_only_in_execution_share_the_fingerprint(image, tmp_path, monkeypatch):
    reference = run_fingerprint(image, tmp_path / "a.zarr")
    link = tmp_path / "link.tif"
    link.symlink_to(image)
    monkeypatch.chdir(tmp_path)
    variants = {
        "block size": dict(block_size=16),
        "workers": dict(workers=1),
        "synchronous": dict(scheduler="synchronous"),
        "progress": dict(progress=True),
        "batch size on the CPU": dict(batch_size=3),
    }
    for i, (case, settings) in enumerate(variants.items()):
        assert run_fingerprint(image, tmp_path / f"v{i}.zarr", **settings) == reference, case
    assert run_fingerprint(link, tmp_path / "link.zarr") == reference, "symlink"
    assert run_fingerprint("img.tif", Path("rel.zarr")) == reference, "relative path"
    # the masks agree too: the fingerprint promises the same bytes
    first = zarr.open_group(tmp_path / "a.zarr", mode="r")["mask"][:]
    for name in ("v0.zarr", "v2.zarr", "link.zarr"):
        np.testing.assert_array_equal(zarr.open_group(tmp_path / name, mode="r")["mask"][:],
                                      first)
    # the plan alone gives the same, without running
    assert plan_fingerprint(image, tmp_path / "other.zarr", block_size=16) == reference
    assert plan_fingerprint(str(link), tmp_path / "x.zarr", workers=1) == reference


def test_a_distributed_run_has_the_fingerprint_of_a_threaded_one(image, tmp_path):
    from distributed import Client, LocalCluster

    reference = run_fingerprint(image, tmp_path / "a.zarr")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        assert run_fingerprint(image, tmp_path / "d.zarr", scheduler=client) == reference
        assert plan_fingerprint(image, tmp_path / "e.zarr", scheduler=client) == reference


def test_an_overwrite_keeps_the_fingerprint(image, tmp_path):
    out = tmp_path / "a.zarr"
    first = run_fingerprint(image, out)
    assert run_fingerprint(image, out, overwrite=True) == first


# -- different when the output's bytes may differ ---------------------------------------------

def _weights(path: Path, seed: int) -> Path:
    from safetensors.torch import save_file

    from tilesegment.models import create_model

    save_file(create_model("unet-tiny", 3, 3, seed=seed).state_dict(), path)
    return path


def test_everything_that_changes_the_output_changes_the_fingerprint(image, tmp_path):
    from tilesegment.models.crf import CRFParams

    w1, w2 = _weights(tmp_path / "w1.safetensors", 1), _weights(tmp_path / "w2.safetensors", 2)
    cases = {
        "base": {},
        "weights 1": dict(weights=w1),
        "weights 2": dict(weights=w2),
        "halo": dict(halo=0),
        "pad mode": dict(pad_mode="edge"),
        "pad value": dict(pad_mode="constant", pad_value=7.0),
        "normalisation": dict(normalization="none"),
        "explicit normalisation": dict(normalization=((100.0,), (50.0,))),
        "classes": dict(classes=2),
        "seed": dict(seed=1),
        "tile": dict(tile=40),
        "blend": dict(blend="gaussian"),
        "probabilities": dict(save_probabilities=True),
        "disagreement": dict(blend="gaussian", save_disagreement=True),
        "model": dict(model="unet-small", halo=0),
    }
    try:
        import pydensecrf2  # noqa: F401
        cases["crf"] = dict(crf=CRFParams(iterations=2))
        cases["crf params"] = dict(crf=CRFParams(iterations=3))
    except ImportError:
        pass
    prints = {case: plan_fingerprint(image, tmp_path / "o.zarr", **settings)
              for case, settings in cases.items()}
    prints["geotiff"] = plan_fingerprint(image, tmp_path / "o.tif")
    prints["cog"] = plan_fingerprint(image, tmp_path / "o.tif", cog=True)
    prints["in memory"] = plan_fingerprint(image, None)
    prints["in memory, probabilities"] = plan_fingerprint(image, None, returns="probabilities")
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, tifffile.imread(image)[::-1].copy(), photometric="minisblack")
    prints["other input"] = plan_fingerprint(other, tmp_path / "o.zarr")
    twins = [case for case, fp in prints.items()
             if list(prints.values()).count(fp) > 1]
    assert not twins, twins
    # and from real runs: the weights and the halo
    assert (run_fingerprint(image, tmp_path / "r1.zarr", weights=w1)
            != run_fingerprint(image, tmp_path / "r2.zarr", weights=w2))
    assert (run_fingerprint(image, tmp_path / "h1.zarr")
            != run_fingerprint(image, tmp_path / "h2.zarr", halo=0))


def test_changing_the_input_file_changes_the_fingerprint(image, tmp_path):
    before = plan_fingerprint(image, tmp_path / "o.zarr")
    data = tifffile.imread(image)
    data[0, 0, 0] ^= 1
    tifffile.imwrite(image, data, photometric="minisblack")
    os.utime(image, ns=(1, 1))  # another mtime, whatever the clock's resolution
    assert plan_fingerprint(image, tmp_path / "o.zarr") != before


def test_in_memory_arrays_are_fingerprinted_by_content(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, (3, 40, 40), dtype=np.uint8)
    same = plan_fingerprint(data.copy())
    assert plan_fingerprint(data) == same
    changed = data.copy()
    changed[1, 2, 3] ^= 1
    assert plan_fingerprint(changed) != same
    assert plan_fingerprint(data.astype(np.uint16)) != same
    import dask.array as da

    lazy = da.from_array(data, chunks=(3, 20, 20))
    assert plan_fingerprint(lazy) == plan_fingerprint(da.from_array(data, chunks=(3, 20, 20)))
    assert plan_fingerprint(lazy) != plan_fingerprint(da.from_array(changed, chunks=(3, 20, 20)))


def test_the_fingerprint_is_stable_across_processes(image, tmp_path):
    here = plan_fingerprint(image, tmp_path / "o.zarr")
    code = ("import sys, json; from tilesegment.plan import build_plan; "
            "print(build_plan(sys.argv[1], sys.argv[2], **json.loads(sys.argv[3]))"
            ".fingerprint)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "123"}
    other = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(image),
                            str(tmp_path / "o.zarr"), json.dumps(BASE)], capture_output=True,
                           text=True, check=True, env=env, cwd=tmp_path).stdout.strip()
    assert other == here


# -- the plan itself --------------------------------------------------------------------------

def test_the_plan_is_frozen_and_completed_by_replace(image, tmp_path):
    plan = build_plan(image, tmp_path / "o.zarr", **BASE)
    assert isinstance(plan, RunPlan)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.geometry.halo = 3  # type: ignore[misc]
    assert plan.normalization.mode == "raster" and plan.normalization.mean is None
    from tilesegment.plan import complete_plan

    done = complete_plan(plan)
    data = tifffile.imread(image).astype(np.float64)
    np.testing.assert_allclose(done.normalization.mean, data.mean(axis=(1, 2)), rtol=1e-9)
    np.testing.assert_allclose(done.normalization.std, data.std(axis=(1, 2)), rtol=1e-6)
    assert done.fingerprint == plan.fingerprint
    assert plan.execution.tiles == -(-48 // 16) * -(-72 // 16)
    assert plan.geometry.halo_reason == "given"
    assert build_plan(image, None, model="unet-tiny").geometry.halo_reason == "seamless default"


# -- tilesegment plan -------------------------------------------------------------------------

ARGS = ["--model", "unet-tiny", "--classes", "3", "--tile", "32", "--halo", "8",
        "--device", "cpu"]


def test_plan_command_prints_the_plan_and_the_runs_fingerprint(image, tmp_path):
    out = tmp_path / "mask.zarr"
    result = invoke("plan", image, "-o", out, *ARGS, "--block-size", "32")
    assert result.exit_code == 0, result.output
    text = result.stdout
    for phrase in (str(image), "3 × 48 × 72", "uint8", "unet-tiny (registered), 3 classes",
                   "RANDOM weights (seed 0)", "tile         32, halo 8 (given), shrink 0, "
                   "core 16", "15 in 6 blocks of 32 × 32 px", "per block task",
                   "computed from the raster at run time", str(out), "layers       mask"):
        assert phrase in text, (phrase, text)
    assert not out.exists()
    described = json.loads(invoke("plan", image, "-o", out, *ARGS, "--json").stdout)
    assert described["geometry"]["core"] == 16 and described["model"]["classes"] == 3
    assert described["execution"]["task_memory_bytes"] > 0
    assert f"fingerprint  {described['fingerprint']}" in text  # block size is not in it
    result = invoke("run", image, "-o", out, *ARGS)
    assert result.exit_code == 0, result.output
    assert read_output_meta(out)["provenance"]["fingerprint"] == described["fingerprint"]


def test_plan_command_fails_as_run_does(image, tmp_path):
    out = tmp_path / "mask.zarr"
    assert invoke("run", image, "-o", out, *ARGS).exit_code == 0
    for args in ([image, "-o", out, *ARGS],  # exists, no --overwrite
                 [image, "-o", tmp_path / "m.png", *ARGS],  # unknown extension
                 [image, "-o", tmp_path / "m.zarr", "--model", "unet-tinny"],
                 [image, "-o", tmp_path / "m.zarr", *ARGS, "--halo", "20"]):
        planned, ran = invoke("plan", *args), invoke("run", *args)
        assert planned.exit_code == ran.exit_code == 1, (planned.output, ran.output)
        assert planned.stderr.strip().splitlines()[-1] == ran.stderr.strip().splitlines()[-1]
        assert planned.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert "did you mean 'unet-tiny'" in invoke(
        "plan", image, "-o", tmp_path / "m.zarr", "--model", "unet-tinny").stderr


def test_plan_command_reads_no_pixel(tmp_path):
    """A Zarr input whose chunks are garbage: the run fails reading them, the plan does not
    read them at all."""
    store = tmp_path / "img.zarr"
    data = np.random.default_rng(2).random((3, 64, 64), dtype=np.float32)
    zarr.create_array(str(store), data=data, chunks=(3, 32, 32))
    chunks = [p for p in store.rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert chunks
    for chunk in chunks:
        chunk.write_bytes(b"not a chunk")
    args = [store, "-o", tmp_path / "m.zarr", *ARGS, "--normalize", "raster"]
    result = invoke("plan", *args)
    assert result.exit_code == 0, result.output
    assert "fingerprint" in result.stdout
    ran = invoke("run", *args)
    assert ran.exit_code == 1 and "Error:" in ran.stderr  # the pixels are unreadable


def test_plan_command_does_not_import_torch(image, tmp_path):
    code = ("import sys; from tilesegment.cli.main import cli\n"
            "try:\n    cli(sys.argv[1:], standalone_mode=False)\n"
            "finally:\n    print('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code, "plan", str(image), "-o",
                             str(tmp_path / "m.zarr"), *ARGS], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "NO TORCH", result.stdout
    assert "fingerprint" in result.stdout


def test_describe_plan_is_json(image, tmp_path):
    described = describe_plan(build_plan(image, tmp_path / "o.tif", **BASE))
    assert json.loads(json.dumps(described)) == described
    assert described["output"]["kind"] == "geotiff"


def test_a_checkpoint_is_planned_from_its_card_with_the_runs_fingerprint(image, tmp_path):
    """The card's halo 52 is off unet-tiny's pooling grid: moved onto it, and said why."""
    from tilesegment.models import create_model
    from tilesegment.models.checkpoint import save_checkpoint

    path = tmp_path / "tiny.safetensors"
    save_checkpoint(create_model("unet-tiny", 3, 2, seed=7), path, dict(
        architecture="unet-tiny", in_channels=3, num_classes=2,
        class_names=["background", "tissue"], class_colors=[[0, 0, 0], [200, 30, 60]],
        normalization={"mode": "fixed", "mean": [120.0, 110.0, 100.0],
                       "std": [50.0, 50.0, 50.0]}, tile=128, halo=52))
    out = tmp_path / "m.zarr"
    args = [image, "-o", out, "--model", path, "--device", "cpu"]
    described = json.loads(invoke("plan", *args, "--json").stdout)
    assert described["model"]["kind"] == "checkpoint"
    assert described["model"]["random_weights"] is False
    assert described["geometry"]["halo"] == 56
    assert described["geometry"]["halo_reason"] == "checkpoint card, moved onto the pooling grid"
    assert described["normalization"]["mean"] == [120.0, 110.0, 100.0]
    import hashlib

    assert described["model"]["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert invoke("run", *args).exit_code == 0
    assert read_output_meta(out)["provenance"]["fingerprint"] == described["fingerprint"]
    assert "RANDOM" not in invoke("plan", *args[:2], tmp_path / "n.zarr", *args[3:]).stdout
