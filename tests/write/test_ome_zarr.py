"""OME-Zarr label outputs (``-o out.ome.zarr``): NGFF 0.5 metadata valid against the schema
ngff-zarr ships, read back by ome-zarr's reader, level 0 byte-identical to the plain Zarr
mask of the same run, each coarser level the 2x2 mode of the one above (an independent
NumPy reference), and ``info``/``evaluate`` reading it."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import Affine

from tilesegment.cli.main import cli
from tilesegment.errors import OutputExistsError, UnsafeOutputError
from tilesegment.read.base import Georef
from tilesegment.write import OutputMeta, create_output, output_kind
from tilesegment.write.ome_zarr_output import mode_downsample2

HEIGHT, WIDTH, BLOCK = 150, 130, 32
PIXEL = 28.5
RUN = ["--model", "identity", "--classes", "3", "--tile", "32", "--halo", "0",
       "--block-size", str(BLOCK)]


def invoke(*args: object) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def reference_mode(src: np.ndarray) -> np.ndarray:
    """The 2x2 mode, window by window with a Counter (ties: the lowest value)."""
    h, w = src.shape
    out = np.empty(((h + 1) // 2, (w + 1) // 2), dtype=src.dtype)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            counts = Counter(src[2 * i:2 * i + 2, 2 * j:2 * j + 2].ravel().tolist())
            top = max(counts.values())
            out[i, j] = min(v for v, n in counts.items() if n == top)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One 3-band GeoTIFF (with nodata pixels) run into out.zarr and out.ome.zarr."""
    folder = tmp_path_factory.mktemp("ome")
    scene = folder / "scene.tif"
    rng = np.random.default_rng(3)
    # coarse 4x4-pixel patches plus noise: windows with clear winners and with ties
    base = rng.integers(1, 256, (3, HEIGHT // 4 + 1, WIDTH // 4 + 1), dtype=np.uint8)
    data = np.repeat(np.repeat(base, 4, axis=1), 4, axis=2)[:, :HEIGHT, :WIDTH].copy()
    noise = rng.random((HEIGHT, WIDTH)) < 0.3
    data[:, noise] = rng.integers(1, 256, (3, int(noise.sum())), dtype=np.uint8)
    data[:, :9, :13] = 0  # nodata in every band
    with rasterio.open(scene, "w", driver="GTiff", height=HEIGHT, width=WIDTH, count=3,
                       dtype="uint8", crs="EPSG:32119", nodata=0,
                       transform=Affine(PIXEL, 0, 600_000, 0, -PIXEL, 250_000)) as ds:
        ds.write(data)
    invoke("run", scene, "-o", folder / "out.zarr", *RUN)
    invoke("run", scene, "-o", folder / "out.ome.zarr", *RUN)
    return {"scene": scene, "zarr": folder / "out.zarr", "ome": folder / "out.ome.zarr"}


def attributes(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]


def expected_levels() -> list[tuple[int, int]]:
    shapes = [(HEIGHT, WIDTH)]
    while shapes[-1][0] > BLOCK or shapes[-1][1] > BLOCK:
        shapes.append((-(-shapes[-1][0] // 2), -(-shapes[-1][1] // 2)))
    return shapes


def test_metadata_validates_against_the_ngff_schema(runs: dict[str, Path]) -> None:
    from ngff_zarr.validate import validate

    attrs = attributes(runs["ome"])
    validate(attrs, version="0.5", model="image")
    validate(attrs, version="0.5", model="label", strict=True)
    ome = attrs["ome"]
    assert ome["version"] == "0.5"
    meta = ome["multiscales"][0]
    assert [ax["name"] for ax in meta["axes"]] == ["y", "x"]
    assert {ax["unit"] for ax in meta["axes"]} == {"meter"}  # EPSG:32119 is in metres
    for level, dataset in enumerate(meta["datasets"]):
        scale = dataset["coordinateTransformations"][0]
        assert dataset["path"] == str(level)
        assert scale == {"type": "scale", "scale": [PIXEL * 2**level] * 2}
    label = ome["image-label"]
    names = {p["label-value"]: p["class"] for p in label["properties"]}
    assert names == {0: "class_0", 1: "class_1", 2: "class_2", 255: "nodata"}
    colors = {c["label-value"]: c["rgba"] for c in label["colors"]}
    assert colors[255] == [0, 0, 0, 0]
    assert [colors[k][:3] for k in range(3)] == attrs["tilesegment"]["class_colors"]
    # the georeference travels in the tilesegment attributes
    with rasterio.open(runs["scene"]) as ds:
        assert attrs["tilesegment"]["transform"] == list(ds.transform)[:6]
        assert rasterio.crs.CRS.from_wkt(attrs["tilesegment"]["crs_wkt"]) == ds.crs
    for array in meta["datasets"]:  # NGFF 0.5: dimension names match the axes
        doc = json.loads((runs["ome"] / array["path"] / "zarr.json").read_text())
        assert doc["dimension_names"] == ["y", "x"]


def test_ome_zarr_reader_opens_every_level(runs: dict[str, Path]) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    nodes = list(Reader(parse_url(str(runs["ome"])))())
    node = nodes[0]
    assert node.load(Label) is not None  # read as a label image
    assert [tuple(d.shape) for d in node.data] == expected_levels()
    assert node.metadata["properties"][1] == {"class": "class_1"}
    assert node.metadata["color"][255] == [0, 0, 0, 0]


def test_level0_is_the_zarr_mask_byte_for_byte(runs: dict[str, Path]) -> None:
    import zarr

    mask_dir, level_dir = runs["zarr"] / "mask" / "c", runs["ome"] / "0" / "c"
    chunks = sorted(p.relative_to(mask_dir) for p in mask_dir.rglob("*") if p.is_file())
    assert len(chunks) == -(-HEIGHT // BLOCK) * -(-WIDTH // BLOCK)
    assert sorted(p.relative_to(level_dir) for p in level_dir.rglob("*") if p.is_file()) \
        == chunks
    for rel in chunks:
        assert (mask_dir / rel).read_bytes() == (level_dir / rel).read_bytes()
    plain = zarr.open_array(str(runs["zarr"] / "mask"), mode="r")[:]
    level0 = zarr.open_array(str(runs["ome"] / "0"), mode="r")[:]
    np.testing.assert_array_equal(level0, plain)
    assert (plain == 255).sum() >= 9 * 13  # nodata carried over


def test_each_level_is_the_2x2_mode_of_the_one_above(runs: dict[str, Path]) -> None:
    import zarr

    levels = [zarr.open_array(str(runs["ome"] / str(i)), mode="r")[:]
              for i in range(len(expected_levels()))]
    ties = 0
    for above, below in itertools.pairwise(levels):
        np.testing.assert_array_equal(below, reference_mode(above))
        ties += int((mode_downsample2(above) != above[::2, ::2]).sum())
    assert ties > 0  # the mode is not simply the top-left pixel


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_mode_downsample2_matches_the_reference(dtype: type) -> None:
    rng = np.random.default_rng(7)
    top = np.iinfo(dtype).max
    for shape in [(1, 1), (2, 3), (7, 5), (16, 17)]:
        src = rng.choice(np.array([0, 1, 2, top], dtype=dtype), size=shape)
        np.testing.assert_array_equal(mode_downsample2(src), reference_mode(src))
    # two against two: the lower class wins, also over nodata
    src = np.array([[3, 3], [top, top]], dtype=dtype)
    assert mode_downsample2(src).tolist() == [[3]]


def test_info_and_evaluate_read_level0(runs: dict[str, Path]) -> None:
    desc = json.loads(invoke("info", runs["ome"], "--json"))
    assert desc["output_check"]["complete"] is True and desc["output_check"]["problems"] == []
    assert [tuple(lv["shape"]) for lv in desc["levels"]] == expected_levels()
    assert desc["nodata"] == 255 and desc["unit"] == "m"
    out = invoke("evaluate", runs["ome"], runs["zarr"], "--json", "-")
    report = json.loads(out[out.index("{"):])
    assert report["measures"]["pixel_accuracy"] == 1.0
    assert [c["name"] for c in report["per_class"]] == ["class_0", "class_1", "class_2"]


def _meta() -> OutputMeta:
    return OutputMeta(shape=(40, 50), num_classes=2, class_names=("a", "b"),
                      class_colors=((0, 0, 0), (255, 0, 0)), georef=Georef(),
                      block_shape=(16, 16))


def test_kind_and_overwrite_rules(tmp_path: Path) -> None:
    path = tmp_path / "x.ome.zarr"
    assert output_kind(path) == "ome-zarr" and output_kind(tmp_path / "x.zarr") == "zarr"
    mask = (np.arange(40 * 50).reshape(40, 50) % 2).astype(np.uint8)
    with create_output(path, _meta()) as out:
        for r in range(0, 40, 16):
            for c in range(0, 50, 16):
                out.write_block(r, c, mask[r:r + 16, c:c + 16])
    first = attributes(path)["tilesegment"]["completion"]["run_id"]
    with pytest.raises(OutputExistsError):
        create_output(path, _meta())
    (path / "notes.txt").write_text("mine")  # the user's file inside: never replaced
    with pytest.raises(UnsafeOutputError, match=r"notes\.txt"):
        create_output(path, _meta(), overwrite=True)
    (path / "notes.txt").unlink()
    with create_output(path, _meta(), overwrite=True) as out:
        for r in range(0, 40, 16):
            for c in range(0, 50, 16):
                out.write_block(r, c, 1 - mask[r:r + 16, c:c + 16])
    assert attributes(path)["tilesegment"]["completion"]["run_id"] != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ome.zarr"]  # no partials
    plain = tmp_path / "plain.ome.zarr"
    plain.mkdir()
    (plain / "data.bin").write_bytes(b"x")
    with pytest.raises(UnsafeOutputError):
        create_output(plain, _meta(), overwrite=True)


def test_half_built_pyramid_of_a_killed_run_is_swept_under_the_lock(tmp_path: Path) -> None:
    """A run killed during ``finalize`` leaves ``.<name>.partial-<token>.pyramid``: the next
    run onto that output removes it (under the output's lock), never one holding more."""
    import warnings

    from tilesegment.errors import StaleOutputWarning
    from tilesegment.write import lock, stores

    final = tmp_path / "x.ome.zarr"
    killed = tmp_path / ".x.ome.zarr.partial-0a1b2c3d.pyramid"
    (killed / "0" / "c").mkdir(parents=True)
    (killed / "zarr.json").write_text("{}")
    foreign = tmp_path / ".x.ome.zarr.partial-0a1b2c3e.pyramid"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    stores.clear_stale(final, None)
    assert killed.exists()  # not under the lock: untouched
    with lock.output_lock(final), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        stores.clear_stale(final, None)
    messages = [str(w.message) for w in record if issubclass(w.category, StaleOutputWarning)]
    assert not killed.exists() and (foreign / "notes.txt").read_text() == "mine"
    assert [m.split(" (")[0] for m in messages if m.startswith("removed")] == [
        f"removed {killed}"]
    assert any(m.startswith(f"left {foreign} alone") for m in messages)


def write_input_ome_zarr(path: Path) -> list[np.ndarray]:
    """A 2-level 3-band OME-Zarr 0.5 image at 0.5 µm (level 1 at 1 µm): the levels."""
    import zarr

    rng = np.random.default_rng(11)
    full = rng.integers(0, 256, (3, 96, 80), dtype=np.uint8)
    levels = [full, full[:, ::2, ::2].copy()]
    group = zarr.open_group(str(path), mode="w")
    datasets = []
    for i, data in enumerate(levels):
        group.create_array(str(i), data=data, chunks=(3, 32, 32),
                           dimension_names=("c", "y", "x"))
        datasets.append({"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 0.5 * 2**i, 0.5 * 2**i]}]})
    axes = [{"name": "c", "type": "channel"},
            {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes,
                                                             "datasets": datasets}]}
    return levels


def test_image_copied_beside_the_labels(tmp_path: Path) -> None:
    """``--ome-zarr-image copy``: the input's levels are the container's image, the labels
    are ``labels/mask`` on the same µm grid; ome-zarr's reader finds both; info/evaluate
    still read the mask; --overwrite replaces it, and refuses once a foreign file is in."""
    import zarr
    from ngff_zarr.validate import validate
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    source = tmp_path / "in.ome.zarr"
    levels = write_input_ome_zarr(source)
    out = tmp_path / "out.ome.zarr"
    run = [*RUN[:-1], "32", "--ome-zarr-image", "copy"]
    invoke("run", source, "-o", out, *run)
    root, labels = attributes(out), attributes(out / "labels" / "mask")
    validate(root, version="0.5", model="image")
    validate(labels, version="0.5", model="label", strict=True)
    assert attributes(out / "labels")["ome"]["labels"] == ["mask"]
    assert labels["ome"]["image-label"]["source"] == {"image": "../../"}
    for i, data in enumerate(levels):  # the image: the input's levels, pixel for pixel
        np.testing.assert_array_equal(zarr.open_array(str(out / str(i)), mode="r")[:], data)
        scale = root["ome"]["multiscales"][0]["datasets"][i]["coordinateTransformations"][0]
        assert scale["scale"] == [1.0, 0.5 * 2**i, 0.5 * 2**i]
    mask_scale = labels["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert mask_scale[0]["scale"] == [0.5, 0.5]  # the same µm grid as image level 0
    want = np.argmax(levels[0], axis=0).astype(np.uint8)  # the identity model's classes
    np.testing.assert_array_equal(
        zarr.open_array(str(out / "labels" / "mask" / "0"), mode="r")[:], want)
    nodes = list(Reader(parse_url(str(out)))())
    assert [tuple(d.shape) for d in nodes[0].data] == [(3, 96, 80), (3, 48, 40)]
    label_nodes = [n for n in nodes if n.load(Label) is not None]
    assert len(label_nodes) == 1 and tuple(label_nodes[0].data[0].shape) == (96, 80)
    desc = json.loads(invoke("info", out, "--json"))
    assert desc["output_check"]["problems"] == [] and desc["shape"] == [1, 96, 80]
    invoke("run", source, "-o", out, *run, "--overwrite")
    (out / "labels" / "notes.txt").write_text("mine")
    result = CliRunner().invoke(cli, [str(a) for a in ("run", source, "-o", out, *run,
                                                       "--overwrite")])
    assert result.exit_code != 0 and "labels/notes.txt" in result.output
    assert (out / "labels" / "notes.txt").read_text() == "mine"


def test_resume_finishes_a_kept_run_into_the_same_pyramid(tmp_path: Path) -> None:
    """A run stopped half-way keeps its scratch store (keyed by the fingerprint); the
    resumed run writes only the rest, and the published pyramid equals an uninterrupted
    run's, level for level."""
    import zarr

    fingerprint = "ab" * 32
    mask = np.random.default_rng(5).integers(0, 2, (40, 50)).astype(np.uint8)
    corners = [(r, c) for r in range(0, 40, 16) for c in range(0, 50, 16)]
    whole = tmp_path / "whole.ome.zarr"
    with create_output(whole, _meta()) as out:
        for r, c in corners:
            out.write_block(r, c, mask[r:r + 16, c:c + 16])
    path = tmp_path / "x.ome.zarr"
    first = create_output(path, _meta(), fingerprint=fingerprint)
    for r, c in corners[:4]:
        first.write_block(r, c, mask[r:r + 16, c:c + 16])
    kept = first.keep()
    assert kept is not None and kept.name.endswith(".scratch.zarr") and not path.exists()
    second = create_output(path, _meta(), fingerprint=fingerprint, resume=True)
    assert sorted(second.done_blocks()) == corners[:4]
    for r, c in corners[4:]:
        second.write_block(r, c, mask[r:r + 16, c:c + 16])
    second.finalize()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whole.ome.zarr", "x.ome.zarr"]
    levels = attributes(path)["ome"]["multiscales"][0]["datasets"]
    assert len(levels) == 3
    for level in levels:
        np.testing.assert_array_equal(
            zarr.open_array(str(path / level["path"]), mode="r")[:],
            zarr.open_array(str(whole / level["path"]), mode="r")[:])


def test_many_inputs_name_their_ome_zarr_outputs(tmp_path: Path) -> None:
    """``--output-format ome-zarr``: one ``<stem>.ome.zarr`` per input in the folder."""
    from tilesegment.many import many_outputs

    outs = many_outputs(["x/a.tif", "y/b.ome.tif", "z/c.ome.zarr"], tmp_path / "o",
                        "ome-zarr")
    assert [p.name for p in outs] == ["a.ome.zarr", "b.ome.zarr", "c.ome.zarr"]
    assert {output_kind(p) for p in outs} == {"ome-zarr"}
