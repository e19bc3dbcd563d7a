"""Never overwrite, nothing visible before finalize, abort cleans up; outputs pickle."""

from __future__ import annotations

import multiprocessing
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from rasterio.crs import CRS

from tilesegment.errors import OutputError, OutputExistsError
from tilesegment.read.base import Georef
from tilesegment.write import Output, OutputMeta, create_output

SHAPE = (97, 131)
BLOCK = (32, 48)
GEOREF = Georef(CRS.from_epsg(32119).to_wkt(), (1.0, 0.0, 6e5, 0.0, -1.0, 2e5), (1.0, 1.0), "m")


def make_meta(save_probabilities: bool = False, save_disagreement: bool = False) -> OutputMeta:
    return OutputMeta(
        shape=SHAPE,
        num_classes=3,
        class_names=("a", "b", "c"),
        class_colors=((255, 0, 0), (0, 255, 0), (0, 0, 255)),
        georef=GEOREF,
        block_shape=BLOCK,
        save_probabilities=save_probabilities,
        save_disagreement=save_disagreement,
    )


def corners() -> list[tuple[int, int]]:
    return [(r, c) for r in range(0, SHAPE[0], BLOCK[0]) for c in range(0, SHAPE[1], BLOCK[1])]


def mask_of(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3, SHAPE).astype(np.uint8)


def disagreement_of(mask: np.ndarray) -> np.ndarray:
    """The disagreement layer ``write_blocks`` writes with ``mask``: 1 on class 1."""
    return (mask == 1).astype(np.uint8)


def write_blocks(out: Output, mask: np.ndarray, todo=None) -> None:
    flags = disagreement_of(mask)
    for r, c in corners() if todo is None else todo:
        sl = np.s_[r : r + BLOCK[0], c : c + BLOCK[1]]
        block = mask[sl]
        probs = np.stack([block == k for k in range(3)]).astype(np.float32)
        out.write_block(
            r,
            c,
            block,
            probs if out.meta.save_probabilities else None,
            disagreement=flags[sl] == 1 if out.meta.save_disagreement else None,
        )


def read_mask(path: Path) -> np.ndarray:
    if path.suffix == ".zarr":
        return zarr.open_group(str(path), mode="r")["mask"][:]
    with rasterio.open(path) as ds:
        return ds.read(1)


def read_disagreement(path: Path) -> np.ndarray:
    if path.suffix == ".zarr":
        return zarr.open_group(str(path), mode="r")["disagreement"][:]
    with rasterio.open(path.with_name(f"{path.stem}.disagreement{path.suffix}")) as ds:
        assert ds.nodata == 255
        return ds.read(1)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def with_pam(*names: str) -> list[str]:
    """``names`` plus the GDAL PAM sidecar (``<mask>.aux.xml``) each GeoTIFF mask has."""
    masks = [n for n in names if n.endswith(".tif") and n.count(".") == 1]
    return sorted([*names, *(f"{n}.aux.xml" for n in masks)])


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (a file or a directory) with its bytes."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): p.read_bytes() for p in files}


def make_old(path: Path) -> dict[str, bytes]:
    """A finished earlier output at ``path``; returns its snapshot."""
    out = create_output(path, make_meta())
    write_blocks(out, mask_of(99))
    out.finalize()
    return snapshot(path)


NAMES = ["out.zarr", "out.tif"]


@pytest.mark.parametrize("name", NAMES)
def test_existing_output_is_refused_and_untouched(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    old = make_old(path)
    with pytest.raises(OutputExistsError) as info:
        create_output(path, make_meta())
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "--overwrite" in message
    assert isinstance(info.value, FileExistsError)
    assert snapshot(path) == old
    assert listing(tmp_path) == with_pam(name)


def test_existing_probabilities_sibling_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out.probabilities.tif").write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="probabilities"):
        create_output(tmp_path / "out.tif", make_meta(save_probabilities=True))
    assert (tmp_path / "out.probabilities.tif").read_bytes() == b"keep me"
    assert listing(tmp_path) == ["out.probabilities.tif"]


def test_existing_disagreement_sibling_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out.disagreement.tif").write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="disagreement"):
        create_output(tmp_path / "out.tif", make_meta(save_disagreement=True))
    assert (tmp_path / "out.disagreement.tif").read_bytes() == b"keep me"
    assert listing(tmp_path) == ["out.disagreement.tif"]
    # with overwrite the sibling is replaced, at finalize
    out = create_output(tmp_path / "out.tif", make_meta(save_disagreement=True), overwrite=True)
    write_blocks(out, mask_of(8))
    assert (tmp_path / "out.disagreement.tif").read_bytes() == b"keep me"
    out.finalize()
    np.testing.assert_array_equal(read_disagreement(tmp_path / "out.tif"),
                                  disagreement_of(mask_of(8)))
    assert listing(tmp_path) == with_pam("out.disagreement.tif", "out.tif")


def test_abort_removes_disagreement_sibling_after_failed_finalize(tmp_path: Path) -> None:
    """The siblings are published before the mask; when the mask cannot be (another run's
    mask appeared meanwhile), the sibling this run published goes too: no partial set."""
    path = tmp_path / "out.tif"
    out = create_output(path, make_meta(save_probabilities=True, save_disagreement=True))
    write_blocks(out, mask_of(9))
    old = make_old(path)  # a mask-only run finished first
    with pytest.raises(OutputExistsError):
        out.finalize()
    # no sibling next to the other run's mask: only our scratch store is left
    names = listing(tmp_path)
    assert "out.disagreement.tif" not in names and "out.probabilities.tif" not in names
    assert [n for n in names if not n.startswith(".out.tif.partial-")] == with_pam("out.tif")
    out.abort()
    assert listing(tmp_path) == with_pam("out.tif")
    assert snapshot(path) == old


@pytest.mark.parametrize("name", NAMES)
def test_aborted_overwrite_keeps_old_output(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    old = make_old(path)
    meta = make_meta(save_probabilities=True, save_disagreement=True)
    out = create_output(path, meta, overwrite=True)
    write_blocks(out, mask_of(1))
    assert snapshot(path) == old  # nothing replaced before finalize
    partials = [n for n in listing(tmp_path) if n not in with_pam(name)]
    assert partials and all(n.startswith(f".{name}.partial-") for n in partials)
    out.abort()
    assert snapshot(path) == old
    assert listing(tmp_path) == with_pam(name)
    with pytest.raises(OutputError, match="aborted"):
        out.finalize()


@pytest.mark.parametrize("name", NAMES)
def test_overwrite_replaces_at_finalize(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    make_old(path)
    new = mask_of(2)
    out = create_output(path, make_meta(), overwrite=True)
    write_blocks(out, new)
    np.testing.assert_array_equal(read_mask(path), mask_of(99))
    out.finalize()
    np.testing.assert_array_equal(read_mask(path), new)
    assert listing(tmp_path) == with_pam(name)  # no partial, no moved-aside old output


@pytest.mark.parametrize("name", NAMES)
def test_nothing_at_final_path_before_finalize(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    out = create_output(path, make_meta())
    write_blocks(out, mask_of(3))
    assert not path.exists()
    assert all(".partial-" in n and n.startswith(".") for n in listing(tmp_path))
    out.abort()
    assert listing(tmp_path) == []
    with pytest.raises(OutputError):
        out.write_block(0, 0, np.zeros(BLOCK, np.uint8))


@pytest.mark.parametrize("name", NAMES)
def test_output_appearing_during_the_run_is_not_clobbered(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    out = create_output(path, make_meta())
    write_blocks(out, mask_of(4))
    old = make_old(path)  # another run finished first
    with pytest.raises(OutputExistsError):
        out.finalize()
    assert snapshot(path) == old
    out.abort()
    assert listing(tmp_path) == with_pam(name)


def test_context_manager(tmp_path: Path) -> None:
    path = tmp_path / "out.zarr"
    with pytest.raises(RuntimeError), create_output(path, make_meta()) as out:
        write_blocks(out, mask_of(5))
        raise RuntimeError("task failed")
    assert listing(tmp_path) == []
    with create_output(path, make_meta()) as out:
        write_blocks(out, mask_of(5))
    np.testing.assert_array_equal(read_mask(path), mask_of(5))


@pytest.mark.parametrize("name", NAMES)
def test_pickled_copy_writes_original_finalizes(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    src = mask_of(6)
    out = create_output(path, make_meta(save_probabilities=True, save_disagreement=True))
    todo = corners()
    write_blocks(out, src, todo[:3])  # the original has opened its arrays
    copy = pickle.loads(pickle.dumps(out))
    assert copy is not out and copy.path == out.path
    write_blocks(copy, src, todo[3:])
    out.finalize()
    np.testing.assert_array_equal(read_mask(path), src)
    np.testing.assert_array_equal(read_disagreement(path), disagreement_of(src))
    # a stale copy cannot write any more, and leaves no stray partial behind
    with pytest.raises(OutputError):
        write_blocks(copy, src, todo[:1])
    assert not any(".partial-" in n for n in listing(tmp_path))


def _task(out: Output, corner: tuple[int, int], seed: int) -> int:
    """A block task in another process: writes its block, returns only the pid."""
    write_blocks(out, mask_of(seed), [corner])
    return os.getpid()


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_process_pool(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    out = create_output(path, make_meta(save_probabilities=True, save_disagreement=True))
    context = multiprocessing.get_context("spawn")  # fresh interpreters, like dask workers
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        pids = list(pool.map(_task, [out] * len(corners()), corners(), [7] * len(corners())))
    assert os.getpid() not in pids
    out.finalize()
    np.testing.assert_array_equal(read_mask(path), mask_of(7))
    np.testing.assert_array_equal(read_disagreement(path), disagreement_of(mask_of(7)))
