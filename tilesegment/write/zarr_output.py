"""Zarr v3 outputs: :class:`BlockStore` (the chunk-per-block store every writer fills) and
:class:`ZarrOutput` (that store, renamed into place by ``finalize``).

Layout of a store (a Zarr v3 group):

- ``mask``: ``(H, W)`` uint8/uint16, chunks = block shape, fill value = nodata, so a block
  never written reads as nodata, not as class 0;
- ``probabilities`` (only with ``save_probabilities``): ``(K, H, W)`` float16, chunks
  ``(K, h, w)``, fill value NaN;
- ``disagreement`` (only with ``save_disagreement``): ``(H, W)`` uint8, 1 where overlapping
  tiles disagree on the class, 0 where they agree; chunks = block shape, fill value 255
  (nodata), so a block never written reads as nodata;
- group attribute ``tilesegment``: :func:`~tilesegment.write.meta.meta_to_attrs` (its
  ``layers`` lists the arrays above that the group holds).

Every chunk a task writes is stored, even when it equals the fill value
(``write_empty_chunks``), so a finished output has one chunk file per block written.
``finalize`` checks that every block with a mask chunk has its chunk in every layer, then
writes the completion record (``complete``, the ``run_id``, the blocks written and those
left unwritten), then publishes: the record is never true before the store is.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from tilesegment.errors import InputError, OutputError
from tilesegment.write import atomic, guard, integrity, layout, manifest
from tilesegment.write.base import Output
from tilesegment.write.meta import DISAGREEMENT_NODATA, OutputMeta, meta_to_attrs, output_layers

if TYPE_CHECKING:
    import zarr
    from zarr.codecs import ZstdCodec

ATTRS_KEY = layout.ZARR_ATTRS_KEY
MASK, PROBABILITIES, DISAGREEMENT = layout.MASK, layout.PROBABILITIES, layout.DISAGREEMENT
_CONFIG = {"write_empty_chunks": True}
CLOSE_TIMEOUT = 60.0
"""Seconds an abort waits for block writes in flight before removing the store anyway."""


def _compressor() -> ZstdCodec:
    from zarr.codecs import ZstdCodec

    return ZstdCodec(level=3, checksum=True)


class StoreArrays(NamedTuple):
    """The arrays of a block store; an optional layer is None when the output lacks it."""

    mask: zarr.Array
    probabilities: zarr.Array | None
    disagreement: zarr.Array | None


class BlockStore:
    """A Zarr v3 group at ``root`` that blocks are written into, one chunk per block.

    Picklable: array handles are opened lazily in each process and never pickled.
    zarr is imported by the methods that touch the store, not with this module: choosing
    or checking an output kind imports no I/O library.
    """

    def __init__(self, root: Path, meta: OutputMeta) -> None:
        self.root = root
        self.meta = meta
        self._init_local()

    def _init_local(self) -> None:
        self._lock = threading.Lock()
        self._arrays: StoreArrays | None = None
        # writes in flight in this process, and whether new ones are refused (see close)
        self._writes = threading.Condition()
        self._active = 0
        self._closed = False

    @classmethod
    def create(cls, root: Path, meta: OutputMeta, attrs: dict[str, Any]) -> BlockStore:
        """Create the group, its arrays and attributes at ``root`` (which must not exist)."""
        import zarr

        group = zarr.open_group(str(root), mode="w-", attributes={ATTRS_KEY: attrs})
        h, w = meta.block_shape
        group.create_array(
            MASK,
            shape=meta.shape,
            chunks=(h, w),
            dtype=meta.mask_dtype,
            fill_value=meta.nodata,
            compressors=_compressor(),
            dimension_names=("y", "x"),
            config=_CONFIG,
        )
        if meta.save_probabilities:
            group.create_array(
                PROBABILITIES,
                shape=(meta.num_classes, *meta.shape),
                chunks=(meta.num_classes, h, w),
                dtype=np.float16,
                fill_value=np.nan,
                compressors=_compressor(),
                dimension_names=("class", "y", "x"),
                config=_CONFIG,
            )
        if meta.save_disagreement:
            group.create_array(
                DISAGREEMENT,
                shape=meta.shape,
                chunks=(h, w),
                dtype=np.uint8,
                fill_value=DISAGREEMENT_NODATA,
                compressors=_compressor(),
                dimension_names=("y", "x"),
                config=_CONFIG,
            )
        return cls(root, meta)

    def arrays(self) -> StoreArrays:
        """``(mask, probabilities, disagreement)`` (None for a layer not saved), opened once
        per process and cached."""
        import zarr

        with self._lock:
            if self._arrays is None:
                group = zarr.open_group(str(self.root), mode="r+")

                def layer(name: str, saved: bool) -> zarr.Array | None:
                    return group[name].with_config(_CONFIG) if saved else None

                self._arrays = StoreArrays(
                    group[MASK].with_config(_CONFIG),
                    layer(PROBABILITIES, self.meta.save_probabilities),
                    layer(DISAGREEMENT, self.meta.save_disagreement),
                )
            return self._arrays

    def write(
        self,
        row0: int,
        col0: int,
        mask: np.ndarray,
        probs: np.ndarray | None,
        disagreement: np.ndarray | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        """Store a validated block: mask ``(h, w)``, probabilities ``(K, h, w)`` float16,
        disagreement ``(h, w)`` uint8 (each optional layer only when the store has it).
        The mask goes last: a mask chunk on disk means the whole block was stored. Then the
        chunks are synced to disk and the block recorded in the manifest
        (:mod:`~tilesegment.write.manifest`, with ``result``, the task's counts)."""
        with self._writes:
            if self._closed:
                raise OutputError(f"{self.root} is closed: the output was finalized or aborted")
            self._active += 1
        try:
            # A copy on another process may still write after finalize/abort: refuse rather
            # than let the store recreate a stray temporary directory.
            if not (self.root / layout.ZARR_JSON).is_file():
                raise OutputError(f"{self.root} is gone: the output was finalized or aborted")
            arrays = self.arrays()
            h, w = mask.shape
            try:
                if arrays.probabilities is not None and probs is not None:
                    arrays.probabilities[:, row0 : row0 + h, col0 : col0 + w] = probs
                if arrays.disagreement is not None and disagreement is not None:
                    arrays.disagreement[row0 : row0 + h, col0 : col0 + w] = disagreement
                arrays.mask[row0 : row0 + h, col0 : col0 + w] = mask
                manifest.sync_files(self.chunk_paths(row0, col0))
            except OSError as exc:
                if isinstance(exc, OutputError):
                    raise
                raise OutputError(f"cannot write {atomic.final_of(self.root)} (block at row "
                                  f"{row0}, col {col0}): {exc.strerror or exc}") from None
            manifest.record(self.root, row0, col0, result)
        finally:
            with self._writes:
                self._active -= 1
                self._writes.notify_all()

    def chunk_paths(self, row0: int, col0: int) -> list[Path]:
        """The chunk file of the block at ``(row0, col0)`` in every layer of the store
        (default chunk key encoding ``c/i/j``; ``c/0/i/j`` for probabilities)."""
        bh, bw = self.meta.block_shape
        i, j = str(row0 // bh), str(col0 // bw)
        paths = []
        for name in self.meta.layers:
            lead = ("0",) if name == PROBABILITIES else ()
            paths.append(layout.zarr_layer_path(self.root, name).joinpath(
                layout.ZARR_CHUNK_DIR, *lead, i, j))
        return paths

    def done_blocks(self) -> dict[tuple[int, int], dict[str, Any]]:
        """The blocks the manifest records as stored: ``{(row0, col0): counts}``."""
        return manifest.done_blocks(self.root)

    def close(self, timeout: float | None = CLOSE_TIMEOUT) -> bool:
        """Refuse further writes through this handle and wait (up to ``timeout`` s) for the
        writes in flight on other threads; True when none is left.

        A failed run aborts while sibling block tasks may still be writing (a thread pool
        does not stop them): removing the store under them would fail, or leave a stray
        temporary directory that their chunk writes recreate.
        """
        with self._writes:
            self._closed = True
            return self._writes.wait_for(lambda: self._active == 0, timeout)

    def blocks_written(self) -> int:
        """How many mask chunks exist on disk (one per block written)."""
        chunk_dir = layout.zarr_layer_path(self.root, MASK) / layout.ZARR_CHUNK_DIR
        return sum(len(files) for _, _, files in os.walk(chunk_dir))

    def verified_blocks(self) -> set[tuple[int, int]]:
        """The ``(i, j)`` blocks written, after checking each has its chunk in every layer
        (the mask chunk goes last); OutputError naming what is missing otherwise."""
        written = integrity.zarr_written_blocks(self.root)
        others = [name for name in self.meta.layers if name != MASK]
        problems = integrity.zarr_chunk_problems(self.root, others, self.meta.block_grid,
                                              written)
        if problems:
            raise OutputError(f"the block store {self.root} is damaged: {'; '.join(problems)}")
        return written

    def completion(self, run_id: str | None = None,
                   written: set[tuple[int, int]] | None = None) -> dict[str, Any]:
        """The ``completion`` record of a finished, verified output (``complete`` first,
        then ``run_id``: a GeoTIFF flips that flag in place)."""
        if written is None:
            written = integrity.zarr_written_blocks(self.root)
        grid = self.meta.block_grid
        return {
            "complete": True,
            "run_id": run_id,
            "blocks_total": grid[0] * grid[1],
            "blocks_written": len(written),
            "blocks_missing": integrity.missing_blocks(grid, written),
            "finalized_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }

    def claim(self, run_id: str, writer: dict[str, Any]) -> None:
        """Record ``writer`` (this process) as the store's writer, and ``run_id``: a
        resumed run takes the store over."""
        import zarr

        try:
            group = zarr.open_group(str(self.root), mode="r+")
            attrs = dict(group.attrs[ATTRS_KEY])
            attrs[layout.WRITER_KEY] = writer
            attrs["run_id"] = run_id
            group.attrs[ATTRS_KEY] = attrs
            atomic.fsync_path(self.root / layout.ZARR_JSON)
        except OSError as exc:
            raise OutputError(f"cannot resume {atomic.final_of(self.root)}: "
                              f"{exc.strerror or exc}") from None

    def attrs(self) -> dict[str, Any]:
        """The ``tilesegment`` attribute of the group as created, less the store's writer
        record (the store's, not the output's)."""
        import zarr

        attrs = dict(zarr.open_group(str(self.root), mode="r").attrs[ATTRS_KEY])
        attrs.pop(layout.WRITER_KEY, None)
        return attrs

    def mark_complete(self, run_id: str | None = None) -> dict[str, Any]:
        """Verify the store and record its completion in the group attributes (the last
        write); return the full attributes."""
        import zarr

        written = self.verified_blocks()
        try:
            group = zarr.open_group(str(self.root), mode="r+")
            attrs = dict(group.attrs[ATTRS_KEY])
            attrs.pop(layout.WRITER_KEY, None)  # the store's record, not the output's
            attrs[layout.COMPLETION_KEY] = self.completion(run_id, written)
            group.attrs[ATTRS_KEY] = attrs
            atomic.fsync_path(self.root / layout.ZARR_JSON)
        except OSError as exc:
            if isinstance(exc, OutputError):
                raise
            raise OutputError(f"cannot complete {atomic.final_of(self.root)}: "
                              f"{exc.strerror or exc}") from None
        return attrs

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "meta": self.meta}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.root = state["root"]
        self.meta = state["meta"]
        self._init_local()


class ZarrOutput(Output):
    """A Zarr v3 output directory (see the module docstring for its layout).

    Blocks go into the block store (:func:`~tilesegment.write.layout.block_store_path`);
    ``finalize`` marks it complete and renames it.
    """

    kind = "zarr"
    extensions = (".zarr",)
    layers = layout.LAYERS

    @classmethod
    def check_replaceable(cls, final: Path, *, overwrite: bool) -> None:
        guard.check_replaceable_directory(final, overwrite=overwrite)

    @classmethod
    def problems(cls, path: Path, meta: dict[str, Any],
                 completion: dict[str, Any]) -> list[str]:
        return integrity.zarr_problems(path, meta, completion)

    @classmethod
    def holds(cls, path: Path) -> bool:
        """A directory (a hidden partial has no ``.zarr`` extension)."""
        return path.is_dir()

    @classmethod
    def read_meta(cls, path: Path) -> dict[str, Any]:
        """The group's metadata; ``path`` may be one layer array of an output."""
        import zarr

        if path.name in layout.LAYERS and guard.is_zarr_output(path.parent):
            return cls.read_meta(path.parent)  # a layer array of a Zarr output
        try:
            attrs = dict(zarr.open_group(str(path), mode="r").attrs[ATTRS_KEY])
        except (KeyError, FileNotFoundError, ValueError) as exc:
            raise InputError(f"{path} is not a tilesegment Zarr output: {exc}") from exc
        layers = output_layers(attrs)
        paths = {layer: str(layout.zarr_layer_path(path, layer)) for layer in layers}
        return {**attrs, "layers": layers, "layer_paths": paths, "path": str(path)}

    def __init__(self, path: Path, meta: OutputMeta, *, overwrite: bool) -> None:
        super().__init__(path, meta, overwrite=overwrite)
        self.store = BlockStore(layout.block_store_path(path, self.token), meta)

    @property
    def final_paths(self) -> tuple[Path, ...]:
        return (self.path,)

    def _create(self) -> None:
        attrs = meta_to_attrs(self.meta, kind=self.kind)
        attrs.update(self.store_attrs())
        self.store = BlockStore.create(self.block_store_root(), self.meta, attrs)

    def _finalize(self) -> None:
        self.store.mark_complete(self.run_id)
        try:
            manifest.remove(self.store.root)  # not part of the output
        except OSError as exc:
            raise OutputError(f"cannot complete {self.path}: {exc.strerror or exc}") from None
        atomic.publish(self.store.root, self.path, overwrite=self.overwrite)
