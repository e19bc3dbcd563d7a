"""The block store of an unfinished output: named by the run plan's fingerprint, found again
by it, and what a killed run left cleared by the next one (never anything that is not ours).

Leftovers are made for real: ``create_output`` in a child process that writes a block and
dies without finalizing (``os._exit``, as a SIGKILL would leave it), or a ``tilesegment
run`` killed with SIGKILL mid-block.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.runs import GATED, REPO, Run, gated_env, write_input
from tilesegment.errors import (
    OutputError,
    ResumeWarning,
    StaleOutputWarning,
    UnfinishedOutputError,
)
from tilesegment.read.base import Georef
from tilesegment.write import OutputMeta, create_output, layout, lock, read_output_meta
from tilesegment.write.stores import find_block_store, find_block_stores

FP_A = "a1" * 32
FP_B = "b2" * 32
SHAPE, BLOCK, K = (40, 60), (20, 30), 3
GEOREF = Georef(crs_wkt='LOCAL_CS["test"]', transform=(1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
                pixel_size=(1.0, 1.0), unit="m")
CORNERS = [(r, c) for r in range(0, SHAPE[0], BLOCK[0]) for c in range(0, SHAPE[1], BLOCK[1])]


def make_meta(save_probabilities: bool = False) -> OutputMeta:
    return OutputMeta(shape=SHAPE, num_classes=K, class_names=("a", "b", "c"),
                      class_colors=((0, 0, 0), (0, 0, 255), (0, 128, 0)), georef=GEOREF,
                      block_shape=BLOCK, save_probabilities=save_probabilities,
                      provenance={"test": True})


def source(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, K, SHAPE).astype(np.uint8)


def probs_of(mask: np.ndarray) -> np.ndarray:
    return np.stack([(mask == k).astype(np.float32) for k in range(K)])


def write_all(out, mask: np.ndarray, probabilities: bool = False) -> None:
    for r, c in CORNERS:
        block = mask[r:r + BLOCK[0], c:c + BLOCK[1]]
        out.write_block(r, c, block, probs_of(block) if probabilities else None)


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def read_mask(path: Path) -> np.ndarray:
    if path.suffix == ".zarr":
        import zarr

        return zarr.open_group(path, mode="r")["mask"][:]
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(1)


def store_attrs(store: Path) -> dict:
    doc = json.loads((store / "zarr.json").read_text())
    return doc["attributes"]["tilesegment"]


LEFTOVER = textwrap.dedent("""
    import os, sys
    import numpy as np
    from tilesegment.read.base import Georef
    from tilesegment.write import OutputMeta, create_output
    path, fingerprint, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    meta = OutputMeta(shape=(40, 60), num_classes=3, class_names=("a", "b", "c"),
                      class_colors=((0, 0, 0), (0, 0, 255), (0, 128, 0)),
                      georef=Georef(crs_wkt='LOCAL_CS["test"]',
                                    transform=(1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
                                    pixel_size=(1.0, 1.0), unit="m"),
                      block_shape=(20, 30), provenance={"test": True})
    out = create_output(path, meta, fingerprint=None if fingerprint == "-" else fingerprint)
    out.write_block(0, 0, np.ones((20, 30), np.uint8))
    print(out.store.root, flush=True)
    if mode == "hold":  # stay alive (a run still writing) until stdin closes
        sys.stdin.read()
    os._exit(0)  # no finalize, no abort: what SIGKILL or a power loss leaves
""")


def leftover(path: Path, fingerprint: str | None, hold: bool = False):
    """A block store of ``path`` left by a child process that died without finalizing
    (``hold``: the child stays alive; returns ``(store, process)``)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", LEFTOVER, str(path), fingerprint or "-",
            "hold" if hold else "die"]
    if hold:
        proc = subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        return Path(proc.stdout.readline().strip()), proc
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


def stale_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, StaleOutputWarning)]


@pytest.mark.parametrize(("name", "suffix"), [("out.zarr", ""), ("out.tif", ".scratch.zarr")])
def test_the_store_of_an_unfinished_output_is_named_by_its_fingerprint(tmp_path, name,
                                                                       suffix):
    final = tmp_path / name
    out = create_output(final, make_meta(), fingerprint=FP_A.upper())
    store = tmp_path / f".{name}.partial-{FP_A[:16]}{suffix}"
    assert hidden(tmp_path) == [store.name]
    attrs = store_attrs(store)
    assert attrs["fingerprint"] == FP_A  # the full one, inside
    assert attrs["writer"]["pid"] == os.getpid()
    assert find_block_store(final, FP_A) == store
    assert find_block_store(final, FP_B) is None
    assert [s.path for s in find_block_stores(final)] == [store]
    mask = source()
    write_all(out, mask)
    out.finalize()
    assert hidden(tmp_path) == []
    assert np.array_equal(read_mask(final), mask)
    meta = read_output_meta(final)
    assert meta["fingerprint"] == FP_A and "writer" not in meta  # no pid, no host


def test_without_a_fingerprint_the_store_keeps_a_random_token(tmp_path):
    out = create_output(tmp_path / "out.zarr", make_meta())
    assert hidden(tmp_path) == [f".out.zarr.partial-{out.token}"]
    assert "fingerprint" not in store_attrs(tmp_path / hidden(tmp_path)[0])
    out.abort()
    assert hidden(tmp_path) == []


def test_aborting_removes_the_fingerprint_store(tmp_path):
    out = create_output(tmp_path / "out.tif", make_meta(), fingerprint=FP_A)
    out.write_block(0, 0, np.zeros(BLOCK, np.uint8))
    out.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["out.zarr", "out.tif"])
def test_an_unfinished_leftover_is_refused_then_removed_by_overwrite(tmp_path, name):
    """A dead run's store with a finished block is refused without resume or overwrite
    (one line naming both, nothing touched); ``overwrite`` removes it with one warning,
    leaving look-alikes that are not ours alone."""
    final = tmp_path / name
    store = leftover(final, FP_A)
    assert store.is_dir() and store_attrs(store)["fingerprint"] == FP_A
    assert find_block_store(final, FP_A) == store  # what --resume finds
    # look-alikes that are not ours, and a bystander: all must survive untouched
    fake_dir = tmp_path / f".{name}.partial-0123abcd"
    fake_dir.mkdir()
    (fake_dir / "zarr.json").write_text('{"attributes": {"mine": 1}}')
    fake_file = tmp_path / f".{name}.partial-feedface"
    fake_file.write_bytes(b"not a store")
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    before = sorted(p.name for p in store.rglob("*"))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        with pytest.raises(UnfinishedOutputError) as refused:
            create_output(final, make_meta(), fingerprint=FP_B)
    message = str(refused.value)
    assert "--resume" in message and "--overwrite" in message and store.name in message
    assert "1 of 4 blocks done" in message
    assert sorted(p.name for p in store.rglob("*")) == before  # nothing touched
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = create_output(final, make_meta(), fingerprint=FP_B, overwrite=True)
    messages = stale_warnings(record)
    removed = [m for m in messages if m.startswith("removed")]
    assert len(removed) == 1 and str(store) in removed[0], messages
    assert "discarded (--overwrite)" in removed[0]
    left = sorted(m for m in messages if m.startswith("left"))
    assert len(left) == 2 and str(fake_dir) in left[0] and str(fake_file) in left[1]
    assert len(messages) == 3
    assert not store.exists()
    mask = source(3)
    write_all(out, mask)
    out.finalize()
    assert np.array_equal(read_mask(final), mask)  # every block from this run
    assert fake_file.read_bytes() == b"not a store"
    assert (fake_dir / "zarr.json").read_text() == '{"attributes": {"mine": 1}}'
    assert notes.read_text() == "keep me"
    assert hidden(tmp_path) == sorted([fake_dir.name, fake_file.name])


@pytest.mark.parametrize("name", ["out.zarr", "out.tif"])
def test_a_leftover_of_the_same_fingerprint_is_resumed(tmp_path, name):
    """``resume`` reopens the dead run's store in place: its recorded block stays (the
    dead run wrote ones there), the manifest says so, and the others come from this run."""
    final = tmp_path / name
    store = leftover(final, FP_A)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = create_output(final, make_meta(), fingerprint=FP_A, resume=True)
    assert stale_warnings(record) == []
    assert out.store.root == store and out.resumed
    assert set(out.done_blocks()) == {(0, 0)}
    assert store_attrs(store)["writer"]["pid"] == os.getpid()  # taken over
    mask = source(4)
    for r, c in CORNERS[1:]:
        out.write_block(r, c, mask[r:r + BLOCK[0], c:c + BLOCK[1]], result={"n": r + c})
    assert set(out.done_blocks()) == set(CORNERS)
    assert out.done_blocks()[(20, 30)] == {"n": 50}  # the task's counts, kept
    out.finalize()
    want = mask.copy()
    want[:BLOCK[0], :BLOCK[1]] = 1
    assert np.array_equal(read_mask(final), want)
    assert hidden(tmp_path) == []
    if name.endswith(".zarr"):
        assert not (final / "done").exists()  # the manifest is not part of the output


def test_resume_with_overwrite_resumes_its_own_run_and_discards_others(tmp_path):
    """``resume`` and ``overwrite`` together (a run that was replacing an output): the
    store of the same settings is resumed, one of other settings is discarded."""
    final = tmp_path / "out.zarr"
    other = leftover(final, FP_B)
    aside = other.rename(tmp_path / "aside")  # two dead runs' stores: made one at a time
    store = leftover(final, FP_A)
    aside.rename(other)
    with pytest.warns(StaleOutputWarning, match="discarded"):
        out = create_output(final, make_meta(), fingerprint=FP_A, resume=True,
                            overwrite=True)
    assert out.store.root == store and set(out.done_blocks()) == {(0, 0)}
    assert not other.exists()
    out.abort()


def test_resume_with_other_settings_lists_them(tmp_path):
    final = tmp_path / "out.zarr"
    out = create_output(final, make_meta(), fingerprint=FP_A,
                        settings={"geometry.halo": 16, "geometry.tile": 64, "model": "m"})
    out.write_block(0, 0, np.zeros(BLOCK, np.uint8))
    assert out.keep() == out.store.root  # what an interrupted run does
    with pytest.raises(UnfinishedOutputError, match=r"other settings: halo: 16 → 24; "
                       r"tile: 64 → 72;.*--overwrite"):
        create_output(final, make_meta(), fingerprint=FP_B, resume=True,
                      settings={"geometry.halo": 24, "geometry.tile": 72, "model": "m"})
    wider = OutputMeta(shape=SHAPE, num_classes=K, class_names=("a", "b", "c"),
                       class_colors=((0, 0, 0), (0, 0, 255), (0, 128, 0)), georef=GEOREF,
                       block_shape=(20, 60), provenance={"test": True})
    with pytest.raises(OutputError, match="blocks of 20x30 px, this one 20x60"):
        create_output(final, wider, fingerprint=FP_A, resume=True)
    assert set(create_output(final, make_meta(), fingerprint=FP_A, resume=True)
               .done_blocks()) == {(0, 0)}


def test_resume_with_nothing_to_resume_just_runs(tmp_path):
    final = tmp_path / "out.zarr"
    with pytest.warns(ResumeWarning, match="no unfinished run"):
        out = create_output(final, make_meta(), fingerprint=FP_A, resume=True)
    assert not out.resumed and out.done_blocks() == {}
    out.abort()


def test_keeping_an_output_without_finished_blocks_removes_it(tmp_path):
    out = create_output(tmp_path / "out.tif", make_meta(), fingerprint=FP_A)
    assert out.keep() is None
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_manifest_records_all_fill_blocks_and_only_stored_ones(tmp_path):
    """An all-nodata block writes a chunk Zarr would normally skip: the manifest records it
    all the same; a block whose write failed is not recorded."""
    out = create_output(tmp_path / "out.zarr", make_meta(True), fingerprint=FP_A)
    nodata = np.full(BLOCK, 255, np.uint8)
    out.write_block(0, 0, nodata, np.full((K, *BLOCK), np.nan, np.float32))
    with pytest.raises(ValueError):  # a class id out of range: refused before the store
        out.write_block(0, 30, np.full(BLOCK, 9, np.uint8), probs_of(source()[:20, :30]))
    assert set(out.done_blocks()) == {(0, 0)}
    markers = sorted(p.name for p in (out.store.root / "done").iterdir())
    assert markers == ["0.0.json"]
    assert (out.store.root / "mask" / "c" / "0" / "0").is_file()
    assert (out.store.root / "probabilities" / "c" / "0" / "0" / "0").is_file()
    out.abort()


def test_a_store_of_a_live_run_is_never_removed(tmp_path):
    final = tmp_path / "out.zarr"
    store, proc = leftover(final, FP_A, hold=True)
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            out = create_output(final, make_meta(), fingerprint=FP_B)
        messages = stale_warnings(record)
        assert len(messages) == 1 and f"process {proc.pid}" in messages[0], messages
        assert store.is_dir()
        out.abort()
        with pytest.raises(OutputError, match="another run with the same settings"), \
                pytest.warns(StaleOutputWarning, match="still running"):
            create_output(final, make_meta(), fingerprint=FP_A)
        assert store.is_dir() and (store / "mask" / "c" / "0" / "0").is_file()
    finally:
        proc.stdin.close()
        proc.wait(60)
    assert hidden(tmp_path) == [store.name]  # the dead one is now a leftover


def test_stores_of_this_process_count_as_live_until_dropped(tmp_path):
    final = tmp_path / "out.zarr"
    first = create_output(final, make_meta(), fingerprint=FP_A)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        second = create_output(final, make_meta(), fingerprint=FP_B)
        with pytest.raises(OutputError, match="same settings"):
            create_output(final, make_meta(), fingerprint=FP_A)
    assert stale_warnings(record) == []
    second.abort()
    root = first.store.root
    del first  # dropped unfinished: abandoned, like a dead run's
    gc.collect()
    with pytest.warns(StaleOutputWarning, match="had stored no block yet"):
        third = create_output(final, make_meta(), fingerprint=FP_A)
    assert third.store.root == root
    third.abort()
    assert hidden(tmp_path) == []


def test_a_store_without_a_writer_record_is_removed_only_under_the_lock(tmp_path):
    """A store that does not say who writes it (an older tilesegment's) is left alone by a
    caller without the output's lock, and removed by one holding it (every run takes it)."""
    final = tmp_path / "out.zarr"
    store = leftover(final, None)
    doc = json.loads((store / "zarr.json").read_text())
    del doc["attributes"]["tilesegment"]["writer"]
    (store / "zarr.json").write_text(json.dumps(doc))
    with pytest.warns(StaleOutputWarning, match="records no writer"):
        create_output(final, make_meta(), fingerprint=FP_A).abort()
    assert store.is_dir()
    with lock.output_lock(final), pytest.warns(StaleOutputWarning, match="removed"):
        create_output(final, make_meta(), fingerprint=FP_A).abort()
    assert hidden(tmp_path) == []


def test_an_old_tree_left_by_an_interrupted_replacement_is_removed_under_the_lock(tmp_path):
    final = tmp_path / "out.zarr"
    with create_output(final, make_meta()) as out:
        write_all(out, source(1))
    old = layout.old_path(final, "abcd1234")
    shutil.copytree(final, old)  # what a run killed between its two renames leaves
    foreign = layout.old_path(final, "mine")
    foreign.mkdir()
    (foreign / "data.txt").write_text("x")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        create_output(final, make_meta(), overwrite=True, fingerprint=FP_A).abort()
    assert stale_warnings(record) == [] and old.is_dir()  # no lock: not touched
    with lock.output_lock(final), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        create_output(final, make_meta(), overwrite=True, fingerprint=FP_A).abort()
    messages = stale_warnings(record)
    assert len(messages) == 2, messages
    assert any(m.startswith("removed") and str(old) in m for m in messages)
    assert any(m.startswith("left") and str(foreign) in m for m in messages)
    assert not old.exists() and (foreign / "data.txt").read_text() == "x"
    assert np.array_equal(read_mask(final), source(1))


KILL_PUBLISH = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, sys.argv[3])
    from test_block_store import CORNERS, BLOCK, make_meta, probs_of, source
    from tilesegment.write import atomic, create_output
    real = os.replace
    def replace(src, dst):
        if os.path.basename(dst).startswith("out."):  # the first layer: die before it
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst)
    atomic.os.replace = replace
    out = create_output(sys.argv[1], make_meta(True), overwrite=True, fingerprint=sys.argv[2])
    mask = source(7)
    for r, c in CORNERS:
        block = mask[r:r + BLOCK[0], c:c + BLOCK[1]]
        out.write_block(r, c, block, probs_of(block))
    out.finalize()
""")


def test_a_publication_killed_midway_leaves_no_fingerprint_store(tmp_path):
    """The journal of a GeoTIFF set's publication names the scratch store (keyed by the
    fingerprint, not the run's token): completing the publication removes it too."""
    final = tmp_path / "out.tif"
    with create_output(final, make_meta(True), fingerprint=FP_A) as out:
        write_all(out, source(6), probabilities=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", KILL_PUBLISH, str(final), FP_B,
                             str(Path(__file__).parent)], env=env, capture_output=True,
                            text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert f".out.tif.partial-{FP_B[:16]}.scratch.zarr" in hidden(tmp_path)
    from tilesegment.write import check_output

    with pytest.warns(RuntimeWarning, match="completed the interrupted publication"):
        check_output(final, overwrite=True)
    assert hidden(tmp_path) == []
    assert np.array_equal(read_mask(final), source(7))
    assert read_output_meta(final)["fingerprint"] == FP_B


@pytest.mark.slow
def test_a_run_killed_with_sigkill_leaves_a_store_the_next_run_removes(tmp_path):
    """A real ``tilesegment run`` killed with SIGKILL mid-block: the next run onto the same
    output removes its store in one warning line, writes a complete, correct mask (every
    block its own), and leaves a look-alike file beside it alone."""
    src = write_input(tmp_path / "in.tif")
    out = tmp_path / "out.zarr"
    env = gated_env(tmp_path)
    first = Run([src, "-o", out, *GATED, "--workers", "1"], env, tmp_path, "first")
    try:
        first.wait_for(tmp_path / "started")
        first.proc.send_signal(signal.SIGKILL)
        assert first.wait() == -signal.SIGKILL
    finally:
        (tmp_path / "gate").touch()
    stores = [s.path for s in find_block_stores(out)]
    assert len(stores) == 1, hidden(tmp_path)
    lookalike = tmp_path / ".out.zarr.partial-00000000"
    lookalike.write_text("mine")
    second = Run([src, "-o", out, "--model", "identity", "--classes", "3", "--tile", "32",
                  "--halo", "0", "--no-progress"], env, tmp_path, "second")
    assert second.wait() == 0, second.stderr
    lines = second.stderr.strip().splitlines()
    # one line for the dead run's store (killed in its first block: nothing to resume)
    about = [line for line in lines if stores[0].name in line]
    assert len(about) == 1, second.stderr
    assert about[0].startswith("Warning: removed"), second.stderr
    assert [line for line in lines if line.startswith("Warning: left")] == [
        f"Warning: left {lookalike} alone: it is named like a block store of out.zarr, "
        "but it is not a directory"], second.stderr
    assert not stores[0].exists()  # removed, or made afresh and published
    assert lookalike.read_text() == "mine"
    assert hidden(tmp_path) == [lookalike.name]
    import rasterio

    with rasterio.open(src) as ds:  # the identity model's mask: the argmax of the bands
        assert np.array_equal(read_mask(out), ds.read().argmax(0).astype(np.uint8))


def test_a_lookalike_where_the_store_goes_is_refused_not_removed(tmp_path):
    final = tmp_path / "out.tif"
    squatter = tmp_path / f".out.tif.partial-{FP_A[:16]}.scratch.zarr"
    squatter.write_text("my notes")
    with pytest.raises(OutputError, match="move it away"), \
            pytest.warns(StaleOutputWarning, match="left .* alone"):
        create_output(final, make_meta(), fingerprint=FP_A)
    assert squatter.read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == [squatter.name]
