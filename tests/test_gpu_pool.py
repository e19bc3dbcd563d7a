"""The GPU worker pool (``--devices``) and what keeps each GPU fed, tested on the CPU.

What can run without a GPU runs for real: the pool's worker processes started with a device
list (the device check bypassed) and asked for their own environment; the batch-halving
loop driven by a model that raises CUDA's own out-of-memory error above a batch size;
precision and ``torch.compile`` through the plan, the fingerprint and a real run. The CUDA
branches of :class:`~tilesegment.infer.Predictor` (pinned buffers, the device lock,
autocast on CUDA) need a GPU and are not run here.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from tests.runs import write_input
from tilesegment import segment
from tilesegment.cli.main import cli
from tilesegment.errors import ModelError, SettingError, SlowPrecisionWarning
from tilesegment.infer import Predictor, halving_calls
from tilesegment.plan import build_plan
from tilesegment.workers import parse_devices

RNG = np.random.default_rng(9)
IMAGE = (RNG.random((3, 48, 56)) * 255).astype(np.uint8)
SMALL = dict(model="unet-tiny", classes=3, tile=32, halo=8, block_size=32)


def test_devices_are_parsed_and_checked():
    assert parse_devices("all", available=3) == (0, 1, 2)
    assert parse_devices("cuda:1,cuda:0", available=2) == (1, 0)
    assert parse_devices(" 0, 2 ", available=3) == (0, 2)
    with pytest.raises(ModelError, match="no CUDA device is available"):
        parse_devices("all", available=0)
    with pytest.raises(ModelError, match="only 2 CUDA device"):
        parse_devices("cuda:2", available=2)
    with pytest.raises(ModelError, match="named twice"):
        parse_devices("cuda:0,cuda:0", available=2)
    with pytest.raises(ModelError, match="not a CUDA device"):
        parse_devices("cpu", available=2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_devices_without_cuda_is_one_line_and_writes_nothing(tmp_path):
    src = write_input(tmp_path / "in.tif")
    result = CliRunner().invoke(cli, ["run", str(src), "-o", str(tmp_path / "o.zarr"),
                                      "--model", "identity", "--devices", "all"])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device is available" in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_pool_workers_get_the_gpus_this_process_sees():
    """Torch's index *i* is the *i*-th entry of this process's own CUDA_VISIBLE_DEVICES."""
    from tilesegment.local_cluster import visible_devices

    assert visible_devices((0, 1), {}) == ("0", "1")
    assert visible_devices((0, 1), {"CUDA_VISIBLE_DEVICES": "2, 3"}) == ("2", "3")
    assert visible_devices((1,), {"CUDA_VISIBLE_DEVICES": "GPU-ab12,GPU-cd34"}) == (
        "GPU-cd34",)


@pytest.mark.parametrize("extra, message", [
    (["--local-cluster", "2"], "--devices and --local-cluster are mutually exclusive"),
    (["--device", "cpu"], "drop --device cpu"),
    (["--scheduler", "tcp://127.0.0.1:1"], "drop --scheduler"),
])
def test_devices_usage_errors(tmp_path, extra, message):
    src = write_input(tmp_path / "in.tif")
    result = CliRunner().invoke(cli, ["run", str(src), "-o", str(tmp_path / "o.zarr"),
                                      "--model", "identity", "--devices", "cuda:0", *extra])
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_plan_of_a_devices_run_needs_no_gpu(tmp_path):
    """``tilesegment plan --devices`` describes the GPU pool's run (computed on CUDA, not
    locally) without starting anything or touching a GPU."""
    import json

    src = write_input(tmp_path / "in.tif")
    result = CliRunner().invoke(cli, ["plan", str(src), "-o", str(tmp_path / "o.zarr"),
                                      "--model", "unet-tiny", "--classes", "3", "--devices",
                                      "all", "--precision", "fp16", "--compile", "--json"])
    assert result.exit_code == 0, result.output
    execution = json.loads(result.stdout)["execution"]
    assert execution["scheduler"] == "gpu pool (all)"
    assert (execution["device"], execution["device_type"]) == ("cuda", "cuda")
    assert (execution["precision"], execution["compile"]) == ("fp16", True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


@pytest.mark.slow
def test_gpu_pool_gives_each_worker_its_own_device():
    """One worker process per device index, each with CUDA_VISIBLE_DEVICES set to its own
    index only, told ``cuda:0``, two threads; on 127.0.0.1 with TLS (the pool started with
    the device check bypassed: this machine may have no GPU)."""
    from tilesegment.local_cluster import GPU_THREADS, start_gpu_pool
    from tilesegment.workers import worker_device

    client = start_gpu_pool((3, 5), use_dask_cuda=False, check=False)
    try:
        seen = client.run(lambda: (os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES"),
                                   worker_device()))
        info = client.scheduler_info()["workers"]
        address = client.scheduler.address
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    assert sorted(v[1] for v in seen.values()) == ["3", "5"]
    assert {v[2] for v in seen.values()} == {"cuda:0"}
    assert len({v[0] for v in seen.values()} | {os.getpid()}) == 3  # own processes
    assert {w["nthreads"] for w in info.values()} == {GPU_THREADS} and GPU_THREADS >= 2
    assert address.startswith("tls://127.0.0.1:")
    assert all(a.startswith("tls://127.0.0.1:") for a in info)


class _OutOfMemoryAbove(nn.Module):
    """A 1×1 convolution that raises CUDA's out-of-memory error for batches above
    ``limit`` and records each batch size it was called with."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 2, 1)
        self.limit, self.calls = limit, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(x))
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return self.conv(x)


def test_out_of_memory_halves_the_batch_and_says_so_once():
    model = _OutOfMemoryAbove(limit=3)
    tiles = np.random.default_rng(1).random((11, 3, 8, 8), dtype=np.float32)

    def call(part: np.ndarray, size: int) -> np.ndarray:
        batch = torch.zeros((size, *part.shape[1:]))
        batch[:len(part)] = torch.from_numpy(part)
        with torch.inference_mode():
            return model(batch)[:len(part)].numpy()

    told: list[tuple[int, int]] = []
    out = np.empty((11, 2, 8, 8), np.float32)
    size = halving_calls(call, tiles, 16, out, lambda old, new: told.append((old, new)))
    assert size == 2 and told == [(16, 8), (8, 4), (4, 2)]
    assert model.calls[:4] == [16, 8, 4, 2] and set(model.calls[4:]) == {2}
    with torch.inference_mode():  # the reference: each tile alone
        expect = np.concatenate([model.conv(torch.from_numpy(t[None])).numpy()
                                 for t in tiles])
    np.testing.assert_allclose(out, expect, rtol=1e-6, atol=1e-6)
    # a later call starts from the size kept: no second halving, no second message
    size = halving_calls(call, tiles, size, out, lambda old, new: told.append((old, new)))
    assert size == 2 and len(told) == 3


def test_out_of_memory_with_one_tile_is_a_clear_error():
    model = _OutOfMemoryAbove(limit=0)
    out = np.empty((2, 2, 8, 8), np.float32)
    with pytest.raises(ModelError, match="CUDA out of memory with one tile per model call"):
        halving_calls(lambda part, size: model(torch.from_numpy(part)).detach().numpy(),
                      np.zeros((2, 3, 8, 8), np.float32), 4, out)


def test_predictor_bf16_autocast_on_cpu_changes_the_floats_not_the_shape():
    torch.manual_seed(2)
    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))
    tiles = np.random.default_rng(3).random((3, 3, 16, 16), dtype=np.float32)
    fp32 = Predictor(module, torch.device("cpu"), 8, 16, 2)(tiles)
    bf16 = Predictor(module, torch.device("cpu"), 8, 16, 2, precision="bf16")(tiles)
    with torch.inference_mode():
        expect = module(torch.from_numpy(tiles)).numpy()
    np.testing.assert_allclose(fp32, expect, rtol=1e-5, atol=1e-5)
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    assert not np.array_equal(bf16, fp32)  # bfloat16 kept 8 bits of mantissa
    np.testing.assert_allclose(bf16, fp32, rtol=0.05, atol=0.05)
    with pytest.raises(SettingError, match="precision 'int8' unknown"):
        Predictor(module, torch.device("cpu"), 8, 16, 2, precision="int8")


def test_predictor_crops_the_core_before_the_copy_back():
    """``crop=(start, size)``: the same floats as the full output's square, and a crop-blend
    block merged from cropped outputs equals one merged from full outputs."""
    from tilesegment.block import merge_window
    from tilesegment.grid import TileSpec
    from tilesegment.read import open_raster
    from tilesegment.split import Splitter

    torch.manual_seed(4)
    module = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))
    tiles = np.random.default_rng(5).random((3, 3, 32, 32), dtype=np.float32)
    predictor = Predictor(module, torch.device("cpu"), 8, 32, 3)
    full = predictor(tiles)
    np.testing.assert_array_equal(predictor(tiles, crop=(8, 16)), full[:, :, 8:24, 8:24])

    class FullOnly:  # the same model, without the crop: every output comes back whole
        batch_size = 8

        def __call__(self, batch: np.ndarray) -> np.ndarray:
            return predictor(batch)

    spec = TileSpec(tile=32, halo=8)
    splitter = Splitter(open_raster(IMAGE), spec, None, None)
    window = (0, 40, 8, 56)
    cropped = merge_window(splitter, predictor, window, 3)
    whole = merge_window(splitter, FullOnly(), window, 3)
    assert cropped.logits.tobytes() == whole.logits.tobytes()


def test_precision_and_compile_enter_the_plan_and_the_fingerprint():
    base = build_plan(IMAGE, **SMALL, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bf16 = build_plan(IMAGE, **SMALL, device="cpu", precision="bf16")
    assert any(issubclass(w.category, SlowPrecisionWarning) for w in caught)
    compiled = build_plan(IMAGE, **SMALL, device="cpu", compile=True)
    assert (base.execution.precision, bf16.execution.precision) == ("fp32", "bf16")
    assert compiled.execution.compile and not base.execution.compile
    assert len({base.fingerprint, bf16.fingerprint, compiled.fingerprint}) == 3
    assert build_plan(IMAGE, **SMALL, device="cpu").fingerprint == base.fingerprint
    with pytest.raises(SettingError, match="fp16 needs a CUDA device"):
        build_plan(IMAGE, **SMALL, device="cpu", precision="fp16")
    with pytest.raises(SettingError, match="precision must be one of"):
        build_plan(IMAGE, **SMALL, device="cpu", precision="half")


def test_bf16_run_on_cpu_differs_from_fp32_only_in_a_few_pixels():
    """A real run under bf16 autocast: same shape, mostly the same classes, not identical
    logits (so the precision really reached the model calls)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlowPrecisionWarning)
        bf16 = segment(IMAGE, **SMALL, device="cpu", precision="bf16", returns="logits")
    fp32 = segment(IMAGE, **SMALL, device="cpu", returns="logits")
    assert bf16.shape == fp32.shape and not np.array_equal(bf16, fp32)
    assert (bf16.argmax(0) == fp32.argmax(0)).mean() > 0.95


def test_compile_is_made_once_per_model_and_shared_by_predictors():
    """``compile=True`` wraps the pooled module once; predictors of other batch sizes of
    the same model share the wrapper (it is not called here: see the slow test)."""
    from tilesegment import workers

    recipe = workers.with_content_key(workers.ModelRecipe(
        in_channels=3, num_classes=3, out_side=16, name="unet-tiny", seed=1, device="cpu",
        compile=True))
    try:
        a = workers.get_predictor(recipe)
        b = workers.get_predictor(workers.dataclasses.replace(recipe, batch_size=3))
        plain = workers.get_predictor(workers.dataclasses.replace(recipe, compile=False))
    finally:
        workers.release(recipe.key, pinned=False)
    assert a is not b and a.forward is b.forward
    assert a.forward is not a.module and plain.forward is plain.module
    assert type(a.forward).__name__ == "OptimizedModule"


@pytest.mark.slow
def test_compiled_run_on_cpu_matches_the_plain_run():
    compiled = segment(IMAGE, **SMALL, device="cpu", compile=True, returns="logits")
    plain = segment(IMAGE, **SMALL, device="cpu", returns="logits")
    np.testing.assert_allclose(compiled, plain, rtol=1e-4, atol=1e-4)


# --- on a CUDA machine only (skipped here: no GPU was at hand when these were written) ---

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda_only
def test_cuda_predictor_pinned_path_matches_the_module_and_halves_on_oom():
    """The pinned, non-blocking path gives the module's own outputs (same batch shape),
    crops on the device, and a model that runs out of memory above 2 tiles per call is
    halved to 2, with one BatchHalvedWarning."""
    from tilesegment.errors import BatchHalvedWarning

    dev = torch.device("cuda:0")
    torch.manual_seed(6)
    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))
    tiles = np.random.default_rng(7).random((5, 3, 32, 32), dtype=np.float32)
    predictor = Predictor(module, dev, 8, 32, 3)
    got = predictor(tiles)
    batch = torch.zeros((8, 3, 32, 32))
    batch[:5] = torch.from_numpy(tiles)
    with torch.inference_mode():
        expect = module(batch.to(dev).contiguous(memory_format=torch.channels_last))
    np.testing.assert_array_equal(got, expect[:5].cpu().numpy())
    np.testing.assert_array_equal(predictor(tiles, crop=(4, 24)), got[:, :, 4:28, 4:28])

    limited = _OutOfMemoryAbove(limit=2)
    halving = Predictor(limited, dev, 8, 8, 2)
    small = np.random.default_rng(8).random((5, 3, 8, 8), dtype=np.float32)
    with pytest.warns(BatchHalvedWarning) as caught:
        out = halving(small)
        halving(small)
    assert halving.call_size == 2 and len(caught) == 1
    with torch.inference_mode():
        ref = limited.conv(torch.from_numpy(small).to(dev)).cpu().numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@cuda_only
@pytest.mark.slow
def test_devices_run_matches_the_in_process_cuda_run(tmp_path):
    """``--devices cuda:0`` (a worker process seeing only that GPU) writes the bytes of an
    in-process run on ``cuda`` with the same batch size."""
    import zarr

    src = write_input(tmp_path / "in.tif", side=96)
    args = ["--model", "unet-tiny", "--classes", "3", "--seed", "3", "--tile", "32",
            "--halo", "8", "--block-size", "32", "--batch-size", "4", "--no-progress"]
    pool = CliRunner().invoke(cli, ["run", str(src), "-o", str(tmp_path / "pool.zarr"),
                                    *args, "--devices", "cuda:0"])
    assert pool.exit_code == 0, pool.output
    here = CliRunner().invoke(cli, ["run", str(src), "-o", str(tmp_path / "here.zarr"),
                                    *args, "--device", "cuda"])
    assert here.exit_code == 0, here.output
    a = zarr.open_group(tmp_path / "pool.zarr", mode="r")["mask"][:]
    b = zarr.open_group(tmp_path / "here.zarr", mode="r")["mask"][:]
    assert a.tobytes() == b.tobytes()
