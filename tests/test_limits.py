"""Limits checked before any pixel is read and before any model is built: each a one-line
error through the real CLI, exit 1, no traceback, no model built, nothing written.

"No model built" is observed two ways: a ``package.module:function`` model that writes a
marker file when it is called, and, for registered models, the per-process build counter
``tilesegment.workers.builds`` (a local run builds its model before any block runs).
"No pixel read" by inputs whose pixels cannot be read at all: a GeoTIFF whose every TIFF
block is garbage (its tags are intact, so it opens), and Dask arrays whose chunks raise.
They also keep a regression from running the huge job: it would fail at its first read.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
from click.testing import CliRunner, Result

from tests.helpers import tiff_claiming
from tilesegment import limits, segment, workers
from tilesegment.cli.main import cli
from tilesegment.errors import GeometryError, LimitError, ModelError, SettingError

ROOT = Path(__file__).resolve().parents[1]
CAP = 16 << 30

MARKER_MODEL = '''
from pathlib import Path

from torch import nn

def build(in_channels=3, num_classes=2):
    Path({marker!r}).write_text("built")
    return nn.Conv2d(in_channels, num_classes, 3, padding=1)
'''


@pytest.fixture
def memory_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs on machines with more than 16 GiB available are held to 16 GiB, so that what is
    refused does not depend on the machine; smaller machines use what they detect."""
    if limits.available_memory()[0] > CAP:
        monkeypatch.setenv(limits.MEMORY_ENV, str(CAP))


@pytest.fixture
def marker_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """``(module:function, marker path)`` of a model that leaves a marker when built."""
    name = f"marker_model_{uuid.uuid4().hex}"
    marker = tmp_path / "MODEL_BUILT"
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / f"{name}.py").write_text(MARKER_MODEL.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(folder))
    return f"{name}:build", marker


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    """A 300 × 300 RGB GeoTIFF (DEFLATE, 64 px TIFF blocks) whose every block holds garbage:
    it opens (tags only), but any pixel read fails."""
    path = tmp_path / "scene.tif"
    data = np.random.default_rng(0).integers(0, 256, (3, 300, 300), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", height=300, width=300, count=3,
                       dtype="uint8", crs="EPSG:32633", compress="deflate", tiled=True,
                       blockxsize=64, blockysize=64,
                       transform=rasterio.Affine(1.0, 0, 0.0, 0, -1.0, 300.0)) as ds:
        ds.write(data)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        blocks = list(zip(page.dataoffsets, page.databytecounts, strict=True))
    raw = bytearray(path.read_bytes())
    for offset, count in blocks:
        raw[offset:offset + count] = b"\xff" * count
    path.write_bytes(bytes(raw))
    return path


def unreadable_array(shape: tuple[int, ...]):
    """A lazy Dask array of ``shape`` (uint8) whose every chunk raises when computed."""
    da = pytest.importorskip("dask.array")

    def explode(block):
        raise AssertionError("a pixel was read")

    zeros = da.zeros(shape, dtype=np.uint8, chunks=(shape[0], 4096, 4096))
    return zeros.map_blocks(explode, dtype=np.uint8)


def test_traps_do_trap(scene: Path) -> None:
    """Control: the inputs above really cannot be read."""
    from tilesegment.errors import DamagedInputError
    from tilesegment.read import open_raster

    with pytest.raises(DamagedInputError):
        open_raster(scene).read((0, 10, 0, 10))
    with pytest.raises(AssertionError, match="a pixel was read"):
        unreadable_array((1, 100, 100)).compute()


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def failed(result: Result) -> str:
    """Assert exit 1, one ``Error:`` line on stderr, no traceback; return the line."""
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def nothing_written(folder: Path, *keep: str) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(keep)


# -- a TIFF whose declared size its file cannot hold ----------------------------------------


@pytest.mark.parametrize(("tiled", "geo"), [(False, False), (True, False), (False, True),
                                            (True, True)],
                         ids=["slide-strip", "slide-tiled", "geotiff-strip", "geotiff-tiled"])
def test_tiny_tiff_claiming_a_trillion_pixels(tmp_path: Path, marker_model, tiled: bool,
                                              geo: bool) -> None:
    model, marker = marker_model
    source = tiff_claiming(tmp_path / "claim.tif", tiled=tiled, geo=geo)
    assert source.stat().st_size < 210
    line = failed(invoke("run", source, "-o", tmp_path / "mask.zarr", "--model", model))
    assert "claim.tif" in line and "1000000 × 1000000" in line and "cannot hold" in line
    assert not marker.exists()
    nothing_written(tmp_path, "claim.tif", "models")


def test_tiny_tiff_in_a_real_process(tmp_path: Path, marker_model) -> None:
    """The installed command in its own process: exit 1, one line, no model, no output."""
    model, marker = marker_model
    source = tiff_claiming(tmp_path / "claim.tif")
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path / "models")])}
    result = subprocess.run(
        [sys.executable, "-m", "tilesegment.cli.main", "run", str(source), "-o",
         str(tmp_path / "mask.tif"), "--model", model], capture_output=True, text=True,
        env=env, timeout=120)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "cannot hold" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not marker.exists()
    nothing_written(tmp_path, "claim.tif", "models")


# -- blocks, tiles, classes -----------------------------------------------------------------


def test_block_size_1_is_refused_before_the_model(tmp_path: Path, scene: Path) -> None:
    before = workers.builds
    line = failed(invoke("run", scene, "-o", tmp_path / "mask.tif", "--block-size", "1",
                         "--model", "unet-tiny"))
    assert "block size 1" in line and "core" in line
    assert workers.builds == before
    nothing_written(tmp_path, "scene.tif")


def test_more_than_a_million_blocks_is_refused_naming_the_count() -> None:
    """A lazy 40000 × 40000 Dask array (nothing is read) in 32 px blocks: 1,562,500 tasks."""
    image = unreadable_array((1, 40000, 40000))
    before = workers.builds
    with pytest.raises(LimitError, match="1,562,500 block tasks") as info:
        segment(image, model="identity", tile=32, halo=0, block_size=32)
    assert "1,000,000" in str(info.value)
    assert workers.builds == before
    # control: the same raster in 64 px blocks is 390,625 tasks, under the limit
    assert limits.check_blocks((40000, 40000), (64, 64), 32, 64) == 390_625


def test_tile_16384_is_refused_before_the_model(tmp_path: Path, scene: Path,
                                                memory_cap) -> None:
    before = workers.builds
    line = failed(invoke("run", scene, "-o", tmp_path / "mask.tif", "--tile", "16384",
                         "--model", "unet-tiny"))
    assert "tile 16384" in line and "GiB of memory" in line and "limit" in line
    assert "model working memory" in line and "--tile" in line
    assert workers.builds == before
    nothing_written(tmp_path, "scene.tif")


def test_tile_16384_of_a_probed_module_is_refused_before_it_is_built(
        tmp_path: Path, scene: Path, marker_model, memory_cap) -> None:
    model, marker = marker_model
    line = failed(invoke("run", scene, "-o", tmp_path / "mask.tif", "--model", model,
                         "--tile", "16384"))
    assert "probing the model on a tile of 16384" in line
    assert not marker.exists()


def test_classes_70000_is_refused_before_the_model(tmp_path: Path, scene: Path,
                                                   marker_model) -> None:
    model, marker = marker_model
    for choice in ("unet-tiny", model):
        before = workers.builds
        line = failed(invoke("run", scene, "-o", tmp_path / "mask.tif", "--model", choice,
                             "--classes", "70000"))
        assert "70000 classes" in line and "65535" in line
        assert workers.builds == before
    assert not marker.exists()
    nothing_written(tmp_path, "scene.tif", "models")


def test_classes_that_fit_the_mask_but_not_memory(tmp_path: Path, scene: Path,
                                                  memory_cap) -> None:
    """60000 classes fit a uint16 mask, but their logits do not fit memory."""
    before = workers.builds
    line = failed(invoke("run", scene, "-o", tmp_path / "mask.tif", "--classes", "60000",
                         "--model", "unet-tiny"))
    assert "60000 classes" in line and "block logits" in line and "--classes" in line
    assert workers.builds == before


def test_checkpoint_card_tile_65536_is_refused(tmp_path: Path, scene: Path,
                                               memory_cap) -> None:
    from tilesegment.models.checkpoint import save_checkpoint
    from tilesegment.models.registry import create_model

    ckpt = tmp_path / "big.safetensors"
    save_checkpoint(create_model("unet-tiny", 3, 2, 0), ckpt,
                    {"architecture": "unet-tiny", "in_channels": 3, "num_classes": 2,
                     "tile": 65536})
    line = failed(invoke("run", scene, "-o", tmp_path / "mask.tif", "--model", ckpt))
    assert "tile 65536" in line and "TiB of memory" in line
    nothing_written(tmp_path, "scene.tif", "big.safetensors", "big.json")


def test_batch_that_does_not_fit(memory_cap) -> None:
    """4096 overlapping tiles of 512² (core 64) stacked at once: 12 GiB of tiles and as much
    model output."""
    image = unreadable_array((3, 8192, 8192))
    before = workers.builds
    with pytest.raises(LimitError, match=r"tiles 12\.0 GiB") as info:
        segment(image, model="identity", tile=512, halo=224, batch_size=4096,
                block_size=4096)
    assert "--batch-size" in str(info.value)
    assert workers.builds == before
    small = np.zeros((3, 64, 64), np.uint8)  # control: the same settings fit a small raster
    assert segment(small, model="identity", tile=512, halo=224, batch_size=4096,
                   block_size=4096).shape == (64, 64)


def test_concurrent_tasks_that_do_not_fit_name_the_workers_that_do(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(limits.MEMORY_ENV, "1G")
    estimate = limits.MemoryEstimate({"tiles": 300e6}, concurrent=8)
    with pytest.raises(LimitError, match=r"8 block tasks at once.*--workers 3"):
        limits.check_memory(estimate, "tile 512")
    limits.check_memory(limits.MemoryEstimate({"tiles": 300e6}, concurrent=3), "tile 512")


# -- every other invalid setting, before the model -------------------------------------------


@pytest.mark.parametrize(("settings", "error"), [
    ({"returns": "masks"}, SettingError),
    ({"batch_size": 0}, SettingError),
    ({"workers": 0}, SettingError),
    ({"normalization": "zscore"}, SettingError),
    ({"normalization": ([1.0], [float("nan")])}, SettingError),
    ({"pad_value": float("nan")}, SettingError),
    ({"device": "gpu"}, ModelError),
    ({"pad_mode": "wrap"}, GeometryError),
    ({"blend": "max"}, GeometryError),
    ({"classes": 0}, SettingError),
    ({"classes": 65536}, LimitError),
    ({"block_size": 0}, GeometryError),
    ({"save_disagreement": True}, GeometryError),
], ids=lambda v: str(v))
def test_invalid_settings_fail_before_the_model(settings: dict, error: type) -> None:
    image = np.zeros((3, 40, 40), np.float32)
    before = workers.builds
    with pytest.raises(error):
        segment(image, model="unet-tiny", **settings)
    assert workers.builds == before


# -- the memory figures ---------------------------------------------------------------------


def test_available_memory_is_what_the_system_says() -> None:
    total = None
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
    if total is None:
        pytest.skip("no /proc/meminfo")
    available, source = limits.available_memory()
    assert 0 < available <= total, source


def test_memory_limit_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert limits.parse_bytes("8G") == 8 << 30
    assert limits.parse_bytes("512 MiB") == 512 << 20
    assert limits.parse_bytes("1000") == 1000
    with pytest.raises(LimitError):
        limits.parse_bytes("lots")
    monkeypatch.setenv(limits.MEMORY_ENV, "3G")
    assert limits.memory_limit() == (3 << 30, limits.MEMORY_ENV)


def test_every_registered_model_has_a_measured_working_memory() -> None:
    from tilesegment.models.registry import list_models

    assert set(list_models()) <= set(limits.WORKING_BYTES_PER_PIXEL)


# -- the output, checked before the model -------------------------------------------------


@pytest.mark.parametrize("what", ["exists", "is-the-input", "unknown-extension"])
def test_output_problems_are_refused_before_the_model(tmp_path: Path, scene: Path,
                                                      marker_model, what: str) -> None:
    """An existing output without --overwrite, an output that is the input and an unknown
    extension are refused before the model is built or a pixel read (the scene's blocks
    are garbage: a read would fail differently)."""
    model, marker = marker_model
    out = {"exists": tmp_path / "old.tif", "is-the-input": scene,
           "unknown-extension": tmp_path / "mask.png"}[what]
    if what == "exists":
        out.write_bytes(b"an earlier file")
    line = failed(invoke("run", scene, "-o", out, "--model", model, "--classes", "2"))
    assert {"exists": "exists", "is-the-input": "an input of this run",
            "unknown-extension": "not supported"}[what] in line
    assert not marker.exists()


def test_a_truth_off_the_mask_grid_is_refused_before_the_run(tmp_path: Path, scene: Path,
                                                             marker_model) -> None:
    """`run --truth` with a truth in another CRS fails before the model is built (today's
    scene cannot even be read: a run that started would fail differently)."""
    model, marker = marker_model
    truth = tmp_path / "truth.tif"
    with rasterio.open(truth, "w", driver="GTiff", height=300, width=300, count=1,
                       dtype="uint8", crs="EPSG:4326",
                       transform=rasterio.Affine(1.0, 0, 0.0, 0, -1.0, 300.0)) as ds:
        ds.write(np.zeros((1, 300, 300), np.uint8))
    line = failed(invoke("run", scene, "-o", tmp_path / "m.tif", "--model", model,
                         "--classes", "2", "--truth", truth))
    assert "CRS differ" in line
    assert not marker.exists()
