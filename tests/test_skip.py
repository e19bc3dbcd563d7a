"""Tiles with nothing to segment are not run: all nodata, or outside the tissue mask.

References are independent of the skipping code: a second run with ``--tissue none``
(byte comparison of every tile core that ran), NumPy formulas for the identity-like model,
and a model that counts the tiles it is given.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from tilesegment import segment
from tilesegment.cli.main import cli
from tilesegment.grid import TileRule
from tilesegment.tissue import otsu_threshold


class CountingSign(torch.nn.Module):
    """``(N, 1, T, T) → (N, 2, T, T)``: logits ``(x, -x)`` (class 1 where x < 0); counts
    the calls and the tiles it is given (class-level: every copy of the module counts)."""

    calls = 0
    tiles = 0
    fail_after: int | None = None  # raise from this call on (a model fault, for resume)
    lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with CountingSign.lock:
            CountingSign.calls += 1
            CountingSign.tiles += int(x.shape[0])
        if CountingSign.fail_after is not None and CountingSign.calls > CountingSign.fail_after:
            raise RuntimeError("model fault (test)")
        return torch.cat([x, -x], dim=1)

    @classmethod
    def reset(cls) -> None:
        cls.calls = cls.tiles = 0


SMALL = dict(tile=16, halo=4, normalization="none", device="cpu", batch_size=4,
             scheduler="synchronous")
NAME = "test-counting-sign"


@pytest.fixture(scope="module", autouse=True)
def counting_model():
    """:class:`CountingSign` registered as a model (a registered model is not probed)."""
    from tilesegment.models import registry
    from tilesegment.models.spec import ModelSpec, Normalization

    def spec(c: int, k: int) -> ModelSpec:
        return ModelSpec(name=NAME, in_channels=1, num_classes=2, tile_rule=TileRule(),
                         receptive_radius=0, default_tile=16,
                         normalization=Normalization("none"))

    registry.register_model(registry.ModelEntry(
        NAME, "counts the tiles it is given", spec, lambda c, k, **options: CountingSign(),
        default_classes=2, trainable=False))
    yield NAME
    registry._REGISTRY.pop(NAME, None)


def test_all_nodata_raster_never_calls_the_model() -> None:
    CountingSign.reset()
    image = np.full((40, 56), np.nan, np.float32)
    mask = segment(image, model=NAME, classes=2, **SMALL)
    assert CountingSign.calls == 0 and CountingSign.tiles == 0
    assert mask.shape == image.shape and (mask == 255).all()


@pytest.mark.parametrize("blend", ["crop", "gaussian"])
def test_nodata_tiles_skipped_and_the_rest_exact(blend: str) -> None:
    """A raster holding data in one corner: only tiles whose used output touches it run,
    and the mask is the model's formula there, nodata elsewhere."""
    rng = np.random.default_rng(3)
    image = np.full((40, 56), np.nan, np.float32)
    image[3:13, 30:37] = rng.normal(size=(10, 7))
    CountingSign.reset()
    mask = segment(image, model=NAME, classes=2, **{**SMALL, "blend": blend})
    if blend == "crop":
        core = 16 - 2 * 4
        rows = {r // core for r in range(3, 13)}
        cols = {c // core for c in range(30, 37)}
        assert CountingSign.tiles == len(rows) * len(cols)  # 2 × 2 of the 5 × 7 grid
    else:
        assert 0 < CountingSign.tiles < 5 * 7
    want = np.where(np.isnan(image), 255, (image < 0).astype(np.uint8))
    np.testing.assert_array_equal(mask, want)


def test_user_tissue_mask(tmp_path: Path) -> None:
    """A mask at half the run's resolution: tiles whose core (with one mask pixel of
    margin) meets its tissue run; the others are the background class, model not run."""
    import tifffile

    rng = np.random.default_rng(5)
    image = rng.normal(size=(40, 56)).astype(np.float32)
    user = np.zeros((20, 28), np.uint8)
    user[0:5, 0:7] = 1  # run rows 0:10, cols 0:14
    tifffile.imwrite(tmp_path / "tissue.tif", user)
    CountingSign.reset()
    mask = segment(image, model=NAME, classes=2, tissue_mask=tmp_path / "tissue.tif",
                   **SMALL)
    want = np.zeros(image.shape, np.uint8)  # background: class 0
    want[0:16, 0:16] = image[0:16, 0:16] < 0  # cores (0..1, 0..1): within 2 px of tissue
    assert CountingSign.tiles == 4
    np.testing.assert_array_equal(mask, want)
    with pytest.raises(Exception, match="aspect ratio"):
        segment(image[:, :30], model=NAME, classes=2, tissue_mask=tmp_path / "tissue.tif",
                **SMALL)


def test_otsu_threshold_agrees_with_scikit_image() -> None:
    filters = pytest.importorskip("skimage.filters")
    rng = np.random.default_rng(0)
    for values in (np.concatenate([rng.normal(0.05, 0.01, 5000), rng.normal(0.6, 0.05, 2000)]),
                   rng.random(1000) ** 2, rng.normal(size=5000)):
        assert otsu_threshold(values) == pytest.approx(filters.threshold_otsu(values))


def test_reduce_raster_is_a_nan_mean_whatever_the_strips(monkeypatch) -> None:
    import tilesegment.tissue as tissue
    from tilesegment.read import open_raster

    a = np.random.default_rng(0).random((3, 101, 77)).astype(np.float32)
    a[0, 5, 5] = np.nan
    padded = np.pad(a.astype(np.float64), ((0, 0), (0, 3), (0, 3)), constant_values=np.nan)
    want = np.nanmean(padded.reshape(3, 26, 4, 20, 4), axis=(2, 4))
    whole = tissue.reduce_raster(open_raster(a), 4)
    monkeypatch.setattr(tissue, "STRIP_VALUES", 3 * 77 * 4)  # strips of 4 rows
    np.testing.assert_allclose(tissue.reduce_raster(open_raster(a), 4), want, rtol=1e-12)
    np.testing.assert_allclose(whole, want, rtol=1e-12)


@pytest.mark.shared
def test_damaged_slide_fails_at_the_tissue_mask(shared_data: Path, tmp_path: Path) -> None:
    """A corrupt JPEG tile is met by the tissue mask's read, before any output exists:
    one line naming the file and the block, exit 1, nothing written."""
    out = tmp_path / "mask.zarr"
    result = CliRunner().invoke(cli, ["run", str(shared_data / "fixtures" / "unreadable.svs"),
                                      "-o", str(out), "--model", "identity", "--classes", "3",
                                      "--tile", "16", "--halo", "0"])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreadable.svs" in lines[0] and "block" in lines[0]
    assert list(tmp_path.iterdir()) == []


# --- the CMU slide -------------------------------------------------------------------------

SLIDE_ARGS = ["--model", "identity", "--classes", "3", "--tile", "32", "--halo", "4",
              "--mpp", "4", "--scheduler", "synchronous"]
CORE = 32 - 2 * 4


@pytest.fixture(scope="module")
def slide_runs(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The CMU slide at 4 µm/px with and without tissue skipping (one run each)."""
    slide = shared_data / "slide" / "cmu_small_region.svs"
    tmp = tmp_path_factory.mktemp("skip")
    out = {}
    for name, extra in (("skip", []), ("all", ["--tissue", "none"])):
        path = tmp / f"{name}.zarr"
        result = CliRunner().invoke(cli, ["run", str(slide), "-o", str(path), *SLIDE_ARGS,
                                          *extra])
        assert result.exit_code == 0, (result.output, result.exception)
        group = zarr.open_group(path, mode="r")
        out[name] = (group["mask"][:], dict(group.attrs["tilesegment"]), result.output)
    plan = CliRunner().invoke(cli, ["plan", str(slide), "-o", str(tmp / "p.zarr"),
                                    *SLIDE_ARGS, "--json"])
    assert plan.exit_code == 0, plan.output
    out["plan"] = json.loads(plan.stdout)
    return out


@pytest.mark.shared
def test_slide_skips_a_third_of_the_tiles(slide_runs: dict) -> None:
    mask, attrs, text = slide_runs["skip"]
    tissue = attrs["provenance"]["tissue"]
    n_i, n_j = -(-mask.shape[0] // CORE), -(-mask.shape[1] // CORE)
    assert tissue["mode"] == "otsu" and tissue["tiles"] == n_i * n_j
    assert tissue["tiles_skipped"] >= n_i * n_j / 3
    assert f"skipped {tissue['tiles_skipped']} tiles" in text
    assert slide_runs["plan"]["tissue"]["tiles_skipped"] == tissue["tiles_skipped"]
    assert slide_runs["all"][1]["provenance"]["tissue"]["mode"] == "none"
    assert "skipped" not in slide_runs["all"][2]


@pytest.mark.shared
def test_slide_cores_that_ran_are_byte_identical(slide_runs: dict) -> None:
    """Every tile core either equals the run without skipping byte for byte, or is wholly
    the background class (a skipped tile); at least a third are skipped."""
    skip, full = slide_runs["skip"][0], slide_runs["all"][0]
    assert skip.shape == full.shape
    skipped = same = 0
    for r in range(0, skip.shape[0], CORE):
        for c in range(0, skip.shape[1], CORE):
            a, b = skip[r:r + CORE, c:c + CORE], full[r:r + CORE, c:c + CORE]
            if np.array_equal(a, b):
                same += 1
            else:
                assert (a == 0).all(), (r, c)
                skipped += 1
    total = -(-skip.shape[0] // CORE) * -(-skip.shape[1] // CORE)
    assert same + skipped == total
    # skipped cores that happen to be class 0 in the full run too count as "same": the
    # number of all-background cores bounds the skipped ones from above
    background = sum((skip[r:r + CORE, c:c + CORE] == 0).all()
                     for r in range(0, skip.shape[0], CORE)
                     for c in range(0, skip.shape[1], CORE))
    assert background >= slide_runs["skip"][1]["provenance"]["tissue"]["tiles_skipped"]
    assert skipped > 0


def test_resume_refuses_a_changed_tissue_setting(tmp_path: Path) -> None:
    """A run with a tissue mask fails after its first two blocks (16 model calls each);
    resuming it without the mask is refused naming the tissue setting; with the mask it
    finishes."""
    import tifffile

    from tilesegment.errors import UnfinishedOutputError

    image = np.random.default_rng(2).normal(size=(64, 64)).astype(np.float32)
    tifffile.imwrite(tmp_path / "in.tif", image)
    tifffile.imwrite(tmp_path / "tissue.tif", np.ones((32, 32), np.uint8))
    settings = dict(SMALL, model=NAME, classes=2, block_size=32)
    out = tmp_path / "out.zarr"
    CountingSign.reset()
    CountingSign.fail_after = 32  # on the CPU one call per tile: 16 tiles a block
    try:
        with pytest.raises(RuntimeError, match="model fault"):
            segment(tmp_path / "in.tif", out, tissue_mask=tmp_path / "tissue.tif",
                    **settings)
    finally:
        CountingSign.fail_after = None
    with pytest.raises(UnfinishedOutputError, match="tissue"):
        segment(tmp_path / "in.tif", out, resume=True, **settings)
    summary = segment(tmp_path / "in.tif", out, resume=True,
                      tissue_mask=tmp_path / "tissue.tif", **settings)
    assert summary.blocks == 4
    mask = zarr.open_group(out, mode="r")["mask"][:]
    np.testing.assert_array_equal(mask, (image < 0).astype(np.uint8))


@pytest.mark.shared
def test_changed_tissue_setting_changes_the_fingerprint(shared_data: Path, tmp_path: Path) -> None:
    from tilesegment.plan import build_plan, flat_fields

    slide = shared_data / "slide" / "cmu_small_region.svs"
    settings = dict(model="identity", classes=3, tile=32, halo=4, mpp=4.0, resolve=False)
    otsu = build_plan(slide, tmp_path / "o.zarr", **settings)
    none = build_plan(slide, tmp_path / "o.zarr", tissue="none", **settings)
    assert otsu.fingerprint != none.fingerprint
    assert flat_fields(otsu)["tissue.mode"] == "otsu"
    assert flat_fields(none)["tissue.mode"] == "none"
