"""The output does not depend on block size, batch size, worker count or scheduler."""

from __future__ import annotations

import numpy as np
import pytest

from tilesegment import segment

RNG = np.random.default_rng(11)
IMAGE = (RNG.random((3, 203, 157)) * 255).astype(np.uint8)
COMMON = dict(model="unet-tiny", classes=4, tile=64, halo=16, normalization="raster")


@pytest.fixture(scope="module")
def reference():
    return segment(IMAGE, block_size=96, batch_size=4, workers=1, returns="logits", **COMMON)


@pytest.mark.parametrize("blend", ["crop", "gaussian"])
@pytest.mark.parametrize("block,batch,workers", [(32, 1, 2), (71, 3, 3), (1000, 16, 1)])
def test_arrays_identical_across_blocking(blend, block, batch, workers):
    base = segment(IMAGE, block_size=96, batch_size=4, workers=1, blend=blend,
                   returns="logits", **COMMON)
    other = segment(IMAGE, block_size=block, batch_size=batch, workers=workers, blend=blend,
                    returns="logits", **COMMON)
    assert np.array_equal(base, other)


def test_zarr_bytes_identical_across_chunking(tmp_path, reference):
    import zarr

    a = segment(IMAGE, tmp_path / "a.zarr", block_size=48, save_probabilities=True, **COMMON)
    b = segment(IMAGE, tmp_path / "b.zarr", block_size=100, batch_size=2, workers=3,
                save_probabilities=True, **COMMON)
    za, zb = zarr.open_group(a.output, mode="r"), zarr.open_group(b.output, mode="r")
    assert za["mask"].chunks != zb["mask"].chunks
    assert np.array_equal(za["mask"][:], zb["mask"][:])
    assert np.array_equal(za["probabilities"][:], zb["probabilities"][:])
    assert np.array_equal(za["mask"][:], reference.argmax(0).astype(np.uint8))


@pytest.mark.slow
def test_distributed_cluster_gives_identical_output(tmp_path, reference):
    """A real distributed cluster of two worker processes: the one ``--local-cluster``
    starts (TLS, loopback only)."""
    from tilesegment.execute import local_cluster

    with local_cluster(2) as client:
        out = segment(IMAGE, scheduler=client, block_size=64, returns="logits", **COMMON)
        summary = segment(IMAGE, tmp_path / "d.zarr", scheduler=client, block_size=64,
                          **COMMON)
    assert np.array_equal(out, reference)
    import zarr

    mask = zarr.open_group(summary.output, mode="r")["mask"][:]
    assert np.array_equal(mask, reference.argmax(0).astype(np.uint8))


def test_model_is_built_once_per_process():
    from tilesegment import workers

    before, cached = workers.builds, len(workers._CACHE)
    segment(IMAGE, block_size=40, workers=3, **COMMON)  # 24 blocks on 3 threads
    assert workers.builds == before + 1
    assert len(workers._CACHE) == cached  # released after the run
