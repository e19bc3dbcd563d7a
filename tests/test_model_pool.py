"""The model pool: keyed by content, so a long-lived ``distributed`` worker builds the same
model once across runs, builds again when weights bytes or classes change, and keeps at
most ``max_models`` models. Builds are counted on the worker (``workers.builds`` read with
``client.run``) and, for a function model, by the lines its builder appends to a file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tilesegment import segment, workers

RNG = np.random.default_rng(5)
IMAGE = (RNG.random((3, 70, 90)) * 255).astype(np.uint8)
COMMON = dict(tile=32, halo=8, block_size=40, normalization="raster", returns="logits")


def _weights(path, classes: int, seed: int):
    """A unet-tiny weights file: seeded random tensors (a ``torch.save``'d state_dict)."""
    import torch

    from tilesegment.models.registry import create_model

    torch.save(create_model("unet-tiny", 3, classes, seed).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """A real LocalCluster with ONE long-lived worker process (processes=True)."""
    distributed = pytest.importorskip("distributed")
    builds = tmp_path_factory.mktemp("pool") / "builds"
    old = os.environ.get("TILESEGMENT_TEST_BUILDS")
    os.environ["TILESEGMENT_TEST_BUILDS"] = str(builds)  # inherited by the worker
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                                       dashboard_address=None)
    try:
        with distributed.Client(cluster) as c:
            yield c
    finally:
        cluster.close()
        if old is None:
            os.environ.pop("TILESEGMENT_TEST_BUILDS", None)
        else:
            os.environ["TILESEGMENT_TEST_BUILDS"] = old


def _builds(client) -> int:
    return next(iter(client.run(lambda: workers.builds).values()))


def _pool(client) -> list[str]:
    return next(iter(client.run(workers.pooled_keys).values()))


def test_six_runs_of_a_registered_model_build_it_once(client, tmp_path):
    weights = _weights(tmp_path / "w.pt", 3, seed=1)
    reference = segment(IMAGE, model="unet-tiny", weights=weights, classes=3, **COMMON)
    before = _builds(client)
    for _ in range(6):
        out = segment(IMAGE, model="unet-tiny", weights=weights, classes=3,
                      scheduler=client, **COMMON)
        assert np.array_equal(out, reference)  # the threaded run's exact values
    assert _builds(client) == before + 1
    # the same bytes under another name are the same model: not built again
    copy = shutil.copy(weights, tmp_path / "copy.pt")
    segment(IMAGE, model="unet-tiny", weights=copy, classes=3, scheduler=client, **COMMON)
    assert _builds(client) == before + 1


def test_six_runs_of_a_function_model_build_it_once_on_the_worker(client):
    builds = os.environ["TILESEGMENT_TEST_BUILDS"]
    worker_pid = str(next(iter(client.run(os.getpid).values())))
    reference = segment(IMAGE, model="tests.pool_models:build", classes=2, **COMMON)
    for _ in range(6):
        out = segment(IMAGE, model="tests.pool_models:build", classes=2, scheduler=client,
                      **COMMON)
        assert np.array_equal(out, reference)
    lines = Path(builds).read_text().split()
    assert lines.count(worker_pid) == 1
    assert len(lines) > 1  # the client built it too (once per run): counted, not pooled


def test_changed_weights_bytes_or_classes_build_again(client, tmp_path):
    path = _weights(tmp_path / "w.pt", 3, seed=2)
    segment(IMAGE, model="unet-tiny", weights=path, classes=3, scheduler=client, **COMMON)
    before = _builds(client)
    first = segment(IMAGE, model="unet-tiny", weights=path, classes=3, scheduler=client,
                    **COMMON)
    assert _builds(client) == before
    _weights(path, 3, seed=3)  # same path, different bytes
    second = segment(IMAGE, model="unet-tiny", weights=path, classes=3, scheduler=client,
                     **COMMON)
    assert _builds(client) == before + 1
    assert not np.array_equal(first, second)  # the new weights were used, not the pooled
    segment(IMAGE, model="unet-tiny", classes=4, seed=2, scheduler=client, **COMMON)
    assert _builds(client) == before + 2


def test_pool_keeps_at_most_max_models(client):
    client.run(workers.configure, max_models=2)
    try:
        keys = []
        for classes in (2, 3, 5):  # N + 1 distinct models
            segment(IMAGE, model="unet-tiny", classes=classes, seed=9, scheduler=client,
                    **COMMON)
            keys.append(_pool(client)[-1])
        assert len(set(keys)) == 3
        assert _pool(client) == keys[1:]  # the first is gone, the others kept
        before = _builds(client)
        segment(IMAGE, model="unet-tiny", classes=3, seed=9, scheduler=client, **COMMON)
        assert _builds(client) == before  # still pooled
        segment(IMAGE, model="unet-tiny", classes=2, seed=9, scheduler=client, **COMMON)
        assert _builds(client) == before + 1  # evicted, so built again
    finally:
        client.run(workers.configure, max_models=workers.MAX_MODELS)



def test_written_output_bytes_match_the_threaded_run(client, tmp_path):
    import zarr

    settings = dict(model="unet-tiny", classes=3, seed=4, tile=32, halo=8, block_size=40,
                    save_probabilities=True)
    a = segment(IMAGE, tmp_path / "a.zarr", **settings)
    for name in ("b.zarr", "c.zarr"):  # the second reuses the worker's model
        b = segment(IMAGE, tmp_path / name, scheduler=client, **settings)
        za, zb = zarr.open_group(a.output, mode="r"), zarr.open_group(b.output, mode="r")
        for layer in ("mask", "probabilities"):
            assert za[layer][:].tobytes() == zb[layer][:].tobytes()


def test_content_key_follows_content_not_paths(tmp_path):
    """Keys computed in the client: equal for the same bytes, different for any change."""
    from tilesegment.workers import ModelRecipe, content_key

    a = _weights(tmp_path / "a.pt", 3, seed=1)
    b = shutil.copy(a, tmp_path / "b.pt")
    c = _weights(tmp_path / "c.pt", 3, seed=2)

    def key(**kw):
        base = dict(in_channels=3, num_classes=3, out_side=16, name="unet-tiny")
        return content_key(ModelRecipe(**{**base, **kw}))

    assert key(weights=str(a)) == key(weights=str(b)) == key(weights=str(b), seed=5)
    assert key(weights=str(a)) != key(weights=str(c))
    assert key() != key(seed=1)  # random weights: the seed matters
    assert key() != key(num_classes=4) != key(in_channels=4)
    assert key() == key(device="cpu", batch_size=3, out_side=8)  # not content


def test_a_workers_device_is_given_not_guessed(monkeypatch):
    """``auto``/``cuda`` mean this process's own device when it was given one; an explicit
    device in the run wins."""
    from tilesegment.workers import DEVICE_ENV, _device_for

    monkeypatch.delenv(DEVICE_ENV, raising=False)
    monkeypatch.setitem(workers._SETTINGS, "device", None)
    assert _device_for("auto") == "auto"
    monkeypatch.setenv(DEVICE_ENV, "cuda:1")
    assert (_device_for("auto"), _device_for("cuda"), _device_for("cpu")) == (
        "cuda:1", "cuda:1", "cpu")
    workers.configure(device="cpu")
    assert (_device_for("auto"), _device_for("cuda"), _device_for("cuda:0")) == (
        "cpu", "cuda", "cuda:0")


@pytest.mark.slow
def test_local_cluster_workers_are_told_their_device():
    """``--local-cluster N`` means N CPU worker processes, GPUs or not (``--devices``
    starts the GPU pool: tests/test_gpu_pool.py)."""
    from tilesegment.execute import local_cluster
    from tilesegment.workers import DEVICE_ENV

    with local_cluster(2) as client:
        told = client.run(lambda: (workers.worker_device(), os.environ.get(DEVICE_ENV)))
    assert sorted(told.values()) == [("cpu", "cpu"), ("cpu", "cpu")]
    assert DEVICE_ENV == "TILESEGMENT_DEVICE"


def test_worker_plugin_sets_the_pool_up_and_prebuilds(client, tmp_path):
    """``ModelPoolPlugin`` configures the worker and builds a model when registered; the
    run that follows finds it in the pool."""
    from tilesegment.local_cluster import ModelPoolPlugin
    from tilesegment.workers import ModelRecipe

    weights = _weights(tmp_path / "p.pt", 3, seed=6)
    recipe = ModelRecipe(in_channels=3, num_classes=3, out_side=16, name="unet-tiny",
                         weights=str(weights))
    before = _builds(client)
    client.register_plugin(ModelPoolPlugin(device="cpu", max_models=3, recipes=(recipe,)))
    try:
        assert _builds(client) == before + 1
        assert next(iter(client.run(workers.max_models).values())) == 3
        segment(IMAGE, model="unet-tiny", weights=weights, classes=3, scheduler=client,
                **COMMON)
        assert _builds(client) == before + 1
    finally:
        client.unregister_worker_plugin(ModelPoolPlugin.name)

