"""The registry of writers drives output kinds: a kind registered here (a real writer that
stores one ``.npy`` file per block) is what ``segment(..., "x.npyblocks")`` writes, what
``read_output_meta`` reads, and what the unknown-extension error lists."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tilesegment import segment
from tilesegment.errors import OutputError, TilesegmentError
from tilesegment.read.base import Georef
from tilesegment.write import (
    Output,
    OutputMeta,
    atomic,
    check_output,
    create_output,
    layout,
    output_kind,
    read_output_meta,
    register_writer,
    registry,
)
from tilesegment.write.meta import meta_to_attrs
from tilesegment.write.zarr_output import BlockStore


class NpyBlocksOutput(Output):
    """A directory ``<name>.npyblocks`` of ``mask.<i>.<j>.npy`` (one file per block written)
    and ``meta.json`` (the output metadata with its completion record)."""

    kind = "npy-blocks"
    extensions = (".npyblocks",)
    layers = (layout.MASK,)

    def __init__(self, path: Path, meta: OutputMeta, *, overwrite: bool) -> None:
        super().__init__(path, meta, overwrite=overwrite)
        self.store = BlockStore(layout.block_store_path(path, self.token, scratch=True), meta)

    @property
    def final_paths(self) -> tuple[Path, ...]:
        return (self.path,)

    @classmethod
    def holds(cls, path: Path) -> bool:
        return (path / "meta.json").is_file()

    @classmethod
    def read_meta(cls, path: Path) -> dict[str, Any]:
        attrs = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        return {**attrs, "path": str(path)}

    def _create(self) -> None:
        attrs = {**meta_to_attrs(self.meta, kind=self.kind), "run_id": self.run_id}
        self.store = BlockStore.create(self.store.root, self.meta, attrs)

    def _finalize(self) -> None:
        written = self.store.verified_blocks()
        staged = layout.partial_path(self.path, self.token, ".npy")
        staged.mkdir()
        mask = self.store.arrays().mask
        bh, bw = self.meta.block_shape
        for i, j in sorted(written):
            np.save(staged / f"mask.{i}.{j}.npy", mask[i * bh:(i + 1) * bh, j * bw:(j + 1) * bw])
        attrs = {**self.store.attrs(), "completion": self.store.completion(self.run_id, written)}
        (staged / "meta.json").write_text(json.dumps(attrs), encoding="utf-8")
        atomic.publish(staged, self.path, overwrite=self.overwrite)


def _assemble(path: Path, shape: tuple[int, int], block: tuple[int, int]) -> np.ndarray:
    """The mask put back together from the ``.npy`` block files of ``path``."""
    out = np.full(shape, 99, dtype=np.uint8)
    for file in path.glob("mask.*.npy"):
        _, i, j, _ = file.name.split(".")
        r0, c0 = int(i) * block[0], int(j) * block[1]
        data = np.load(file)
        out[r0:r0 + data.shape[0], c0:c0 + data.shape[1]] = data
    return out


@pytest.fixture
def npy_kind():
    register_writer(NpyBlocksOutput)
    try:
        yield NpyBlocksOutput
    finally:
        registry.unregister_writer(NpyBlocksOutput.kind)


def test_segment_writes_through_a_registered_kind(tmp_path, npy_kind) -> None:
    rng = np.random.default_rng(8)
    image = rng.normal(size=(3, 61, 83)).astype(np.float32)
    path = tmp_path / "x.npyblocks"
    summary = segment(image, path, model="identity", tile=32, halo=7, block_size=40)
    assert output_kind(path) == "npy-blocks"
    files = sorted(p.name for p in path.iterdir())
    # 61x83 in 40x40 blocks: a 2x3 grid, one file per block, nothing else left behind
    assert files == sorted(["meta.json", *(f"mask.{i}.{j}.npy" for i in range(2)
                                           for j in range(3))])
    assert [p.name for p in tmp_path.iterdir()] == ["x.npyblocks"]
    # the identity model's mask is the argmax of the channels: an independent reference
    assert np.array_equal(_assemble(path, (61, 83), (40, 40)),
                          np.argmax(image, axis=0).astype(np.uint8))
    meta = read_output_meta(path)  # read back through the registry, by this kind's class
    assert meta["kind"] == "npy-blocks" and meta["completion"]["complete"] is True
    assert meta["completion"]["blocks_written"] == 6
    assert summary.output == path


def test_a_kind_refuses_layers_it_does_not_declare(tmp_path, npy_kind) -> None:
    image = np.zeros((3, 20, 20), np.float32)
    with pytest.raises(OutputError, match="cannot hold the probabilities layer"):
        segment(image, tmp_path / "x.npyblocks", model="identity", tile=16, halo=3,
                save_probabilities=True)
    assert list(tmp_path.iterdir()) == []


def test_unknown_extension_lists_the_registered_kinds(tmp_path, npy_kind) -> None:
    with pytest.raises(OutputError) as info:
        check_output(tmp_path / "out.png")
    message = str(info.value)
    assert isinstance(info.value, TilesegmentError) and "\n" not in message
    assert message.endswith("(supported: .zarr, .tif, .tiff, .ome.zarr, .npyblocks)")
    registry.unregister_writer(npy_kind.kind)
    with pytest.raises(OutputError) as info:
        create_output(tmp_path / "out.npyblocks", OutputMeta(
            shape=(4, 4), num_classes=2, class_names=("a", "b"),
            class_colors=((0, 0, 0), (1, 1, 1)), georef=Georef(), block_shape=(4, 4)))
    assert str(info.value).endswith("(supported: .zarr, .tif, .tiff, .ome.zarr)")
    assert list(tmp_path.iterdir()) == []


def test_registration_refuses_a_taken_kind_or_extension(npy_kind) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_writer(NpyBlocksOutput)

    class Clash(NpyBlocksOutput):
        kind = "other"
        extensions = (".tif",)

    with pytest.raises(ValueError, match=re.escape("'.tif' already selects the 'geotiff'")):
        register_writer(Clash)
    assert "other" not in registry.writers()


def test_builtin_kinds_declare_their_extensions_and_layers() -> None:
    kinds = registry.writers()
    assert list(kinds)[:2] == ["zarr", "geotiff"]
    assert kinds["zarr"].extensions == (".zarr",)
    assert kinds["geotiff"].extensions == (".tif", ".tiff")
    for cls in kinds.values():
        assert cls.layers[0] == layout.MASK
    assert registry.extensions() == {".zarr": "zarr", ".tif": "geotiff", ".tiff": "geotiff",
                                     ".ome.zarr": "ome-zarr"}
