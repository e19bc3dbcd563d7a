"""End to end: a run never loses an output or an input, and never hands over an incomplete
or mixed output as complete (disk full, --overwrite onto inputs and foreign directories,
publications killed half-way, forged partial outputs)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from click.testing import CliRunner, Result

from tilesegment.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
IDENTITY = ["--model", "identity", "--classes", "3", "--tile", "128", "--halo", "0"]
TRANSFORM = rasterio.Affine(1.0, 0.0, 5000.0, 0.0, -1.0, 9000.0)


def write_scene(path: Path, side: int, seed: int = 0) -> np.ndarray:
    """A 3-band float32 GeoTIFF of random values; returns its pixels ``(3, side, side)``."""
    data = np.random.default_rng(seed).random((3, side, side), dtype=np.float32)
    with rasterio.open(path, "w", driver="GTiff", height=side, width=side, count=3,
                       dtype="float32", crs="EPSG:32119", transform=TRANSFORM) as ds:
        ds.write(data)
    return data


def tree_hash(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (hidden ones too): files by content hash, directories
    and links by kind."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def without_kept(tree: dict[str, str]) -> dict[str, str]:
    """``tree`` (:func:`tree_hash`) less the block stores a failed or interrupted run kept
    for ``--resume`` (hidden ``.<name>.partial-*`` directories holding a ``done/``
    manifest); AssertionError for any other hidden partial entry."""
    stores = {key for key, kind in tree.items() if kind == "dir" and "/" not in key
              and key.startswith(".") and ".partial-" in key and f"{key}/done" in tree}
    left = {k: v for k, v in tree.items() if k.split("/")[0] not in stores}
    assert not [k for k in left if ".partial-" in k.split("/")[0]], sorted(left)
    return left


def cli_run(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real command line in a fresh interpreter (stderr as the user sees it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tilesegment.cli.main", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def one_error_line(stderr: str) -> str:
    """The single ``Error:`` line of a failed run; no traceback, nothing else but warnings."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, stderr
    assert all(line.startswith(("Error: ", "Warning: ")) for line in lines), stderr
    return errors[0]


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def failed(result: Result) -> str:
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


# -- disk full ---------------------------------------------------------------------------

# (output name, extra flags, raster side): the GeoTIFF sides fit the scratch store but not
# the GeoTIFFs as well (failure while transcoding); the Zarr side does not fit at all.
DISK_CASES = [("out.tif", [], 900), ("out.tif", ["--cog"], 900), ("out.zarr", [], 1300)]


@pytest.mark.slow
@pytest.mark.parametrize("name, flags, side", DISK_CASES, ids=["tif", "cog", "zarr"])
def test_disk_full_fails_cleanly_and_keeps_old_output(tmp_path: Path, small_disk: Path,
                                                      name: str, flags: list[str],
                                                      side: int) -> None:
    tiny, big = tmp_path / "tiny.tif", tmp_path / "big.tif"
    write_scene(tiny, 40)
    write_scene(big, side, seed=1)
    out = small_disk / name
    first = cli_run("run", tiny, "-o", out, *IDENTITY, *flags, "--save-probabilities")
    assert first.returncode == 0, first.stderr
    before = tree_hash(small_disk)

    done = cli_run("run", big, "-o", out, *IDENTITY, *flags, "--save-probabilities",
                   "--overwrite")
    assert done.returncode == 1, (done.stdout, done.stderr)
    line = one_error_line(done.stderr)
    assert "No space left on device" in line and "wrote" not in done.stdout
    # the old set byte-identical; finished blocks kept only in a hidden store (--resume)
    assert without_kept(tree_hash(small_disk)) == before
    assert ("--resume" in line) == (without_kept(tree_hash(small_disk)) != tree_hash(
        small_disk))

    fresh = small_disk / f"new{Path(name).suffix}"
    done = cli_run("run", big, "-o", fresh, *IDENTITY, *flags, "--save-probabilities")
    assert done.returncode == 1
    one_error_line(done.stderr)
    assert without_kept(tree_hash(small_disk)) == before  # nothing under the new name


# -- --overwrite never destroys an input or a foreign directory -----------------------------

def make_input_zarr(path: Path) -> None:
    data = np.random.default_rng(2).random((3, 64, 64), dtype=np.float32)
    zarr.create_array(str(path), data=data, chunks=(3, 32, 32))
    (path / "notes.txt").write_text("my notes")


def overwrite_cases(tmp: Path) -> list[tuple[str, list[object], str]]:
    """(case, run arguments, a phrase of the refusal)."""
    scene, store = tmp / "scene.tif", tmp / "img.zarr"
    holder = tmp / "holder.zarr"
    return [
        ("output is the input GeoTIFF", [scene, "-o", scene], "an input of this run"),
        ("output is the input Zarr", [store, "-o", store], "an input of this run"),
        ("output inside the input Zarr (tif)", [store, "-o", store / "mask.tif"],
         "lies inside"),
        ("output inside the input Zarr (zarr)", [store, "-o", store / "sub.zarr"],
         "lies inside"),
        ("output is an unrelated directory", [scene, "-o", tmp / "mydir.tif"],
         "is a directory"),
        ("output is an unrelated Zarr-named directory", [scene, "-o", tmp / "docs.zarr"],
         "not a tilesegment output"),
        ("output contains the input", [holder / "scene.tif", "-o", holder], "contains"),
        ("output is the truth", [scene, "-o", tmp / "truth.tif", "--truth",
                                 tmp / "truth.tif"], "an input of this run"),
    ]


def test_overwrite_never_replaces_inputs_or_foreign_directories(tmp_path: Path) -> None:
    write_scene(tmp_path / "scene.tif", 64)
    make_input_zarr(tmp_path / "img.zarr")
    (tmp_path / "mydir.tif").mkdir()
    (tmp_path / "mydir.tif" / "thesis.txt").write_text("years of work")
    (tmp_path / "docs.zarr").mkdir()
    (tmp_path / "docs.zarr" / "zarr.json").write_text('{"zarr_format": 3}')
    (tmp_path / "holder.zarr").mkdir()
    write_scene(tmp_path / "holder.zarr" / "scene.tif", 64)
    with rasterio.open(tmp_path / "truth.tif", "w", driver="GTiff", height=64, width=64,
                       count=1, dtype="uint8", crs="EPSG:32119", transform=TRANSFORM) as ds:
        ds.write(np.zeros((1, 64, 64), np.uint8))
    before = tree_hash(tmp_path)
    for case, args, phrase in overwrite_cases(tmp_path):
        for flags in ([], ["--overwrite"]):
            line = failed(invoke("run", *args, *IDENTITY, *flags))
            assert phrase in line, (case, line)
            assert "pass --overwrite" not in line, (case, line)
            assert tree_hash(tmp_path) == before, case


def test_recipe_overwrite_obeys_the_same_rules(tmp_path: Path) -> None:
    make_input_zarr(tmp_path / "img.zarr")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("[output]\noverwrite = true\n[model]\nname = 'identity'\nclasses = 3\n"
                      "[geometry]\ntile = 32\nhalo = 0\n")
    before = tree_hash(tmp_path)
    line = failed(invoke("run", tmp_path / "img.zarr", "-o", tmp_path / "img.zarr",
                         "--config", recipe))
    assert "an input of this run" in line
    assert tree_hash(tmp_path) == before


def test_overwrite_refuses_output_with_foreign_files(tmp_path: Path) -> None:
    write_scene(tmp_path / "scene.tif", 64)
    out = tmp_path / "out.zarr"
    assert invoke("run", tmp_path / "scene.tif", "-o", out, *IDENTITY).exit_code == 0
    (out / "notes.txt").write_text("mine")
    before = tree_hash(tmp_path)
    line = failed(invoke("run", tmp_path / "scene.tif", "-o", out, *IDENTITY, "--overwrite"))
    assert "notes.txt" in line and "would delete" in line
    assert tree_hash(tmp_path) == before
    (out / "notes.txt").unlink()
    assert invoke("run", tmp_path / "scene.tif", "-o", out, *IDENTITY,
                  "--overwrite").exit_code == 0


# -- sets published as one unit ----------------------------------------------------------

SET_FLAGS = ["--save-probabilities", "--blend", "gaussian", "--save-disagreement",
             "--halo", "16"]


def set_files(folder: Path) -> dict[str, str]:
    return {k: v for k, v in tree_hash(folder).items() if k.startswith("out.")}


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from tilesegment.write import atomic
    from tilesegment.cli.main import cli
    real, calls = os.replace, []
    def replace(src, dst):
        if os.path.basename(dst).startswith("out."):  # a layer (os.replace is global)
            calls.append(dst)
        if len(calls) == 2:  # one layer published, the next not yet: die here
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst)
    atomic.os.replace = replace
    cli(sys.argv[1:], prog_name="tilesegment")
""")


def test_killed_between_layer_publications(tmp_path: Path) -> None:
    """SIGKILL after the first of three layers was renamed into place: the mixed set is
    refused by evaluate and info, and the next run onto the path completes the
    publication (every new layer was verified before the first rename): then the set is
    entirely the new one."""
    scene = tmp_path / "scene.tif"
    data = write_scene(scene, 96)
    out = tmp_path / "out.tif"
    args = ["run", scene, "-o", out, *IDENTITY, "--tile", "64", *SET_FLAGS]
    assert invoke(*args).exit_code == 0
    old = set_files(tmp_path)
    write_scene(scene, 96, seed=5)  # the new run sees other pixels
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", KILL_SCRIPT, *map(str, args),
                             "--overwrite"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    mixed = set_files(tmp_path)
    assert "out.tif" in mixed  # the final path always holds an output
    assert mixed != old and sum(mixed[k] != old[k] for k in old) == 1
    truth = tmp_path / "truth.tif"
    with rasterio.open(truth, "w", driver="GTiff", height=96, width=96, count=1,
                       dtype="uint8", crs="EPSG:32119", transform=TRANSFORM) as ds:
        ds.write(np.zeros((1, 96, 96), np.uint8))
    for command in (["evaluate", out, truth], ["info", out]):
        line = failed(invoke(*command))
        assert "another run" in line and "mixed" in line, line
    # the next run onto the path completes the interrupted publication, then refuses
    line = failed(invoke(*args))
    assert "--overwrite" in line
    new = set_files(tmp_path)
    # every layer is now the new run's (the PAM sidecar holds the same class names)
    assert all(new[k] != old[k] for k in old if not k.endswith(".aux.xml"))
    assert "out.tif.aux.xml" in new
    assert not [k for k in tree_hash(tmp_path) if k.startswith(".")]
    assert invoke("evaluate", out, truth).exit_code == 0
    with rasterio.open(out) as ds:
        mask = ds.read(1)
    with rasterio.open(scene) as ds:
        assert (mask == np.argmax(ds.read(), axis=0)).all()
    assert not (mask == np.argmax(data, axis=0)).all()


@pytest.mark.parametrize("at", [1, 2, 3])
def test_failure_between_layer_publications_rolls_back(tmp_path: Path, monkeypatch,
                                                       at: int) -> None:
    """A failure (here: Ctrl-C) at the ``at``-th rename of a set: the old set comes back,
    byte-identical, and evaluate and info accept it."""
    from tilesegment.write import atomic

    scene = tmp_path / "scene.tif"
    write_scene(scene, 96)
    out = tmp_path / "out.tif"
    args = ["run", scene, "-o", out, *IDENTITY, "--tile", "64", *SET_FLAGS]
    assert invoke(*args).exit_code == 0
    old = tree_hash(tmp_path)
    write_scene(scene, 96, seed=5)
    after_scene = tree_hash(tmp_path)
    real, calls = os.replace, []

    def replace(src, dst):
        if os.path.basename(dst).startswith("out."):  # a layer (os.replace is global)
            calls.append(dst)
        if len(calls) == at:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    result = invoke(*args, "--overwrite")
    monkeypatch.undo()
    assert result.exit_code == 130
    # the old set; the new blocks (all done) kept hidden for --resume, nothing else
    assert without_kept(tree_hash(tmp_path)) == after_scene
    assert "--resume" in result.output
    assert {k: v for k, v in old.items() if k != "scene.tif"} == {
        k: v for k, v in after_scene.items() if k != "scene.tif"}
    assert invoke("info", out).exit_code == 0


def test_zarr_replacement_never_leaves_the_path_empty(tmp_path: Path, monkeypatch) -> None:
    """Without an atomic exchange the old Zarr is moved aside first; a run dying between
    the two renames leaves it aside, and the next run puts it back before anything else."""
    from tilesegment.write import atomic

    scene = tmp_path / "scene.tif"
    write_scene(scene, 64)
    out = tmp_path / "out.zarr"
    assert invoke("run", scene, "-o", out, *IDENTITY).exit_code == 0
    old = tree_hash(out)
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    real = os.rename

    def rename(src, dst):
        if Path(dst) == out:
            raise SystemExit(137)  # dies after the old output went aside
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "rename", rename)
    monkeypatch.setattr(atomic, "remove_prefixed", lambda path: None)  # no cleanup: killed
    invoke("run", scene, "-o", out, *IDENTITY, "--overwrite")
    monkeypatch.undo()
    assert not out.exists()
    assert any(p.name.startswith(".out.zarr.old-") for p in tmp_path.iterdir())
    line = failed(invoke("run", scene, "-o", out, *IDENTITY))
    assert "--overwrite" in line
    assert tree_hash(out) == old


def test_zarr_exchange_keeps_an_output_at_the_path(tmp_path: Path, monkeypatch) -> None:
    """With renameat2 the new Zarr takes the old one's place in one step: the path holds the
    old or the new output at every moment; a failure while removing the old tree (now
    hidden) only warns."""
    from tilesegment.write import atomic

    scene = tmp_path / "scene.tif"
    data = write_scene(scene, 64)
    out = tmp_path / "out.zarr"
    assert invoke("run", scene, "-o", out, *IDENTITY, "--seed", "3").exit_code == 0
    probe_a, probe_b = tmp_path / "a", tmp_path / "b"
    probe_a.mkdir()
    probe_b.mkdir()
    if not atomic.exchange(probe_a, probe_b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    probe_a.rmdir()
    probe_b.rmdir()
    write_scene(scene, 64, seed=9)
    seen = []

    def remove(path, attempts=5):
        seen.append(Path(path))
        assert out.is_dir() and (out / "zarr.json").is_file()  # never absent
        raise OSError("simulated failure while removing the old tree")

    monkeypatch.setattr(atomic, "remove", remove)
    with pytest.warns(RuntimeWarning, match="could not be removed"):
        result = invoke("run", scene, "-o", out, *IDENTITY, "--overwrite")
    monkeypatch.undo()
    assert seen and result.exit_code == 0, result.output
    with rasterio.open(scene) as ds:
        want = np.argmax(ds.read(), axis=0)
    assert not (want == np.argmax(data, axis=0)).all()
    np.testing.assert_array_equal(zarr.open_group(out, mode="r")["mask"][:], want)


# -- forged or partial outputs are refused ---------------------------------------------

def zero_truth(path: Path, side: int) -> Path:
    with rasterio.open(path, "w", driver="GTiff", height=side, width=side, count=1,
                       dtype="uint8", crs="EPSG:32119", transform=TRANSFORM) as ds:
        ds.write(np.zeros((1, side, side), np.uint8))
    return path


def test_zarr_with_deleted_chunks_is_refused(tmp_path: Path) -> None:
    scene = tmp_path / "scene.tif"
    write_scene(scene, 96)
    out = tmp_path / "out.zarr"
    truth = zero_truth(tmp_path / "truth.tif", 96)
    assert invoke("run", scene, "-o", out, *IDENTITY, "--tile", "32",
                  "--block-size", "32").exit_code == 0
    assert invoke("evaluate", out, truth).exit_code == 0
    assert invoke("info", out).exit_code == 0
    chunks = sorted((out / "mask" / "c").rglob("*"))
    files = [c for c in chunks if c.is_file()]
    assert len(files) == 9
    for chunk in files[:4]:
        chunk.unlink()
    line = failed(invoke("evaluate", out, truth))
    assert "4 of 9 written blocks are missing" in line
    result = invoke("info", out)
    assert result.exit_code == 1 and "INCOMPLETE" in result.stdout
    assert "4 of 9 written blocks are missing" in result.stderr
    # the layer opened directly is refused too
    assert "missing" in failed(invoke("evaluate", out / "mask", truth))


def test_killed_partial_zarr_is_refused(tmp_path: Path) -> None:
    """A run killed mid-way leaves a hidden partial whose record says incomplete."""
    from tilesegment.read.base import Georef
    from tilesegment.write import OutputMeta, create_output

    meta = OutputMeta(shape=(96, 96), num_classes=3, class_names=("a", "b", "c"),
                      class_colors=((0, 0, 0),) * 3, block_shape=(32, 32),
                      georef=Georef(None, tuple(TRANSFORM)[:6], (1.0, 1.0), None))
    out = create_output(tmp_path / "out.zarr", meta)
    for r, c in [(0, 0), (0, 32), (32, 0)]:  # 3 of 9 blocks, then "killed"
        out.write_block(r, c, np.zeros((32, 32), np.uint8))
    partial = out.store.root
    truth = zero_truth(tmp_path / "truth.tif", 96)
    line = failed(invoke("evaluate", partial, truth))
    assert "says incomplete" in line and "of 9" in line
    assert invoke("info", partial).exit_code == 1
    out.abort()


def _edit_tag(path: Path, edit) -> None:
    with rasterio.open(path, "r+") as ds:
        attrs = json.loads(ds.tags()["TILESEGMENT"])
        edit(attrs)
        ds.update_tags(TILESEGMENT=json.dumps(attrs))


@pytest.mark.parametrize("how", ["removed", "incomplete", "other-run"])
def test_geotiff_with_altered_completion_record_is_refused(tmp_path: Path, how: str) -> None:
    scene = tmp_path / "scene.tif"
    write_scene(scene, 96)
    out = tmp_path / "out.tif"
    truth = zero_truth(tmp_path / "truth.tif", 96)
    assert invoke("run", scene, "-o", out, *IDENTITY, "--tile", "32",
                  "--save-probabilities").exit_code == 0
    assert invoke("evaluate", out, truth).exit_code == 0
    if how == "removed":
        _edit_tag(out, lambda a: a.pop("completion"))
        phrase = "no completion record"
    elif how == "incomplete":
        _edit_tag(out, lambda a: a["completion"].update(complete=False))
        phrase = "incomplete"
    else:  # the probabilities of another run beside this mask
        other = tmp_path / "other.tif"
        assert invoke("run", scene, "-o", other, *IDENTITY, "--tile", "32",
                      "--save-probabilities").exit_code == 0
        os.replace(tmp_path / "other.probabilities.tif", tmp_path / "out.probabilities.tif")
        phrase = "another run"
    assert phrase in failed(invoke("evaluate", out, truth))
    result = invoke("info", out)
    assert result.exit_code == 1 and phrase in result.stderr
