"""The :class:`Output` contract shared by the Zarr and GeoTIFF writers.

An output goes ``open`` → ``finalized`` (visible under its final name), ``open`` →
``aborted`` (nothing left but what was there before), or ``open`` → ``kept`` (:meth:`Output.
keep`: a failed or interrupted run's block store, with its manifest of finished blocks,
left for a resume; ``create_output(..., resume=True)`` reopens it). Block writes may come
from many threads, or from unpickled copies in other processes; ``finalize``, ``abort`` and
``keep`` are called once, by whoever created the output.

The block store of an output (:func:`~tilesegment.write.layout.block_store_path`) is named
by :attr:`Output.store_key`: the run plan's fingerprint when the run has one, else the
random token of this output. The outputs open in this process are tracked (weakly), so that
:mod:`tilesegment.write.stores` never takes a live store of this process for a leftover.
"""

from __future__ import annotations

import os
import secrets
import socket
import warnings
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import numpy as np

from tilesegment.errors import InputError, OutputError
from tilesegment.write import atomic, guard, layout
from tilesegment.write.meta import DISAGREEMENT_NODATA, OutputMeta

OPEN, FINALIZED, ABORTED, KEPT = "open", "finalized", "aborted", "kept for a resume"

_open_outputs: weakref.WeakSet[Output] = weakref.WeakSet()
"""The outputs created in this process and not yet finalized or aborted."""


def open_store_roots() -> set[Path]:
    """The block stores of the outputs open in this process (never stale leftovers)."""
    roots = set()
    for output in list(_open_outputs):
        store = getattr(output, "store", None)
        if output._state == OPEN and store is not None:
            roots.add(Path(store.root))
    return roots


def track(output: Output) -> None:
    """Count ``output`` (just created) among the open outputs of this process."""
    _open_outputs.add(output)


def writer_record() -> dict[str, Any]:
    """The writer record of a block store made by this process (see
    :data:`~tilesegment.write.layout.WRITER_KEY`)."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def check_block(
    meta: OutputMeta,
    row0: int,
    col0: int,
    mask: np.ndarray,
    probabilities: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate one block and return it as stored: mask ``(h, w)`` of ``meta.mask_dtype``,
    probabilities ``(K, h, w)`` float16 (None unless ``meta.save_probabilities``).

    Raises ValueError for an unaligned corner, a wrong shape or dtype, class ids outside
    ``0..K-1`` (other than nodata), or missing probabilities.
    """
    h, w = meta.block_extent(row0, col0)
    mask = np.asarray(mask)
    if mask.shape != (h, w):
        raise ValueError(f"mask block at ({row0}, {col0}) has shape {mask.shape}, want {(h, w)}")
    if mask.dtype.kind not in "ui":
        raise ValueError(f"mask must hold integer class ids, got dtype {mask.dtype}")
    if mask.size and (int(mask.max()) >= meta.num_classes or int(mask.min()) < 0):
        bad = ((mask < 0) | (mask >= meta.num_classes)) & (mask != meta.nodata)
        if bad.any():
            value = mask[bad].flat[0]
            raise ValueError(
                f"mask block at ({row0}, {col0}) holds class id {value}, outside "
                f"0..{meta.num_classes - 1} and not nodata {meta.nodata}"
            )
    mask = mask.astype(meta.mask_dtype, copy=False)
    if not meta.save_probabilities:
        return mask, None
    if probabilities is None:
        raise ValueError("this output saves probabilities: pass them with every block")
    probabilities = np.asarray(probabilities)
    want = (meta.num_classes, h, w)
    if probabilities.shape != want:
        raise ValueError(
            f"probabilities block at ({row0}, {col0}) has shape {probabilities.shape}, want {want}"
        )
    if probabilities.dtype.kind != "f":
        raise ValueError(f"probabilities must be float32 or float16, got {probabilities.dtype}")
    return mask, probabilities.astype(np.float16, copy=False)


def check_disagreement(
    meta: OutputMeta, row0: int, col0: int, disagreement: np.ndarray | None
) -> np.ndarray | None:
    """Validate one block of the disagreement layer and return it as stored: ``(h, w)``
    uint8 of 0 (tiles agree), 1 (they disagree) or 255 (nodata); None unless
    ``meta.save_disagreement``.

    ``disagreement`` is bool, or integers holding only 0, 1 and 255. Raises ValueError for an
    unaligned corner, a wrong shape or dtype, another value, or a missing layer.
    """
    if not meta.save_disagreement:
        return None
    if disagreement is None:
        raise ValueError("this output saves the disagreement layer: pass it with every block")
    h, w = meta.block_extent(row0, col0)
    disagreement = np.asarray(disagreement)
    if disagreement.shape != (h, w):
        raise ValueError(
            f"disagreement block at ({row0}, {col0}) has shape {disagreement.shape}, "
            f"want {(h, w)}"
        )
    if disagreement.dtype == np.bool_:
        return disagreement.astype(np.uint8)
    if disagreement.dtype.kind not in "ui":
        raise ValueError(
            f"disagreement must be bool or uint8 (0/1/{DISAGREEMENT_NODATA}), "
            f"got dtype {disagreement.dtype}"
        )
    bad = (disagreement != 0) & (disagreement != 1) & (disagreement != DISAGREEMENT_NODATA)
    if bad.any():
        raise ValueError(
            f"disagreement block at ({row0}, {col0}) holds {disagreement[bad].flat[0]}, "
            f"not 0, 1 or nodata {DISAGREEMENT_NODATA}"
        )
    return disagreement.astype(np.uint8, copy=False)


class Output(ABC):
    """A segmentation output being written block by block; see the module docstring.

    ``path`` is the final path; nothing appears there before :meth:`finalize`.
    Picklable: an unpickled copy can :meth:`write_block` in another process.
    """

    kind: ClassVar[str]
    """The name the output kind is registered under (:mod:`tilesegment.write.registry`)."""
    extensions: ClassVar[tuple[str, ...]] = ()
    """The lower-case path suffixes (``".zarr"``) that select this kind."""
    layers: ClassVar[tuple[str, ...]] = (layout.MASK,)
    """The layers this kind can write (``OutputMeta.layers`` must be among them)."""

    # -- what a kind declares before anything is written ----------------------------------

    @classmethod
    def planned_paths(cls, final: Path, layers: Iterable[str]) -> list[Path]:
        """Every path an output at ``final`` holding ``layers`` would publish (the mask's
        first); the overwrite policy is checked on each."""
        return [final]

    @classmethod
    def check_options(cls, final: Path, *, cog: bool, layers: Iterable[str] = ()) -> None:
        """OutputError for an option or a layer this kind cannot honour."""
        if cog:
            raise OutputError(f"cannot write {final}: cog applies to GeoTIFF outputs only")
        unknown = [layer for layer in layers if layer not in cls.layers]
        if unknown:
            raise OutputError(f"cannot write {final}: a {cls.kind} output cannot hold the "
                              f"{unknown[0]} layer (it holds {', '.join(cls.layers)})")

    @classmethod
    def check_replaceable(cls, final: Path, *, overwrite: bool) -> None:
        """The overwrite policy (:mod:`tilesegment.write.guard`) for one planned path; by
        default a file's (a directory output overrides it)."""
        guard.check_replaceable_file(final, overwrite=overwrite)

    @classmethod
    def new(cls, final: Path, meta: OutputMeta, *, overwrite: bool, cog: bool) -> Output:
        """An output of this kind at ``final`` (nothing created yet: ``_create`` does)."""
        return cls(final, meta, overwrite=overwrite)

    @classmethod
    def holds(cls, path: Path) -> bool:
        """Whether what is at ``path`` (an existing path) may be an output of this kind."""
        return False

    @classmethod
    def read_meta(cls, path: Path) -> dict[str, Any]:
        """The metadata of the output at ``path`` as ``read_output_meta`` returns it."""
        raise InputError(f"{path}: reading {cls.kind} outputs is not supported")

    @classmethod
    def problems(cls, path: Path, meta: dict[str, Any],
                 completion: dict[str, Any]) -> list[str]:
        """What is wrong with the output at ``path`` (metadata ``meta``) whose completion
        record says complete; [] when nothing is (``info`` and ``evaluate`` check this)."""
        return []

    def __init__(self, path: Path, meta: OutputMeta, *, overwrite: bool) -> None:
        self.path = path
        self.meta = meta
        self.overwrite = overwrite
        self.token = atomic.new_token()
        self.run_id = secrets.token_hex(8)
        """Names this run in every layer it writes and in its completion record."""
        self.fingerprint: str | None = None
        """The run plan's fingerprint (hex sha256), set by ``create_output`` before
        :meth:`_create`; it names the block store and is recorded in the metadata."""
        self.settings: dict[str, Any] | None = None
        """The run plan's settings (a flat dict), recorded in the block store."""
        self.resumed = False
        """Whether the block store was reopened (``resume``) rather than made afresh."""
        self._state = OPEN

    @property
    def store_key(self) -> str:
        """What names this output's block store: the fingerprint's first hex digits, or
        the random :attr:`token` of a run without a fingerprint."""
        return layout.store_key(self.fingerprint) if self.fingerprint else self.token

    def store_attrs(self) -> dict[str, Any]:
        """Metadata a block store records besides ``meta_to_attrs``: the run id, the
        fingerprint (when there is one) and the writer record of this process."""
        attrs: dict[str, Any] = {"run_id": self.run_id}
        if self.fingerprint:
            attrs[layout.FINGERPRINT_KEY] = self.fingerprint
        if self.settings:
            attrs[layout.SETTINGS_KEY] = self.settings
        attrs[layout.WRITER_KEY] = writer_record()
        return attrs

    # -- what subclasses provide -----------------------------------------------------------

    @property
    @abstractmethod
    def final_paths(self) -> tuple[Path, ...]:
        """Every path :meth:`finalize` publishes (the mask first)."""

    @abstractmethod
    def _create(self) -> None:
        """Create the temporary store the blocks are written to."""

    def _write(
        self,
        row0: int,
        col0: int,
        mask: np.ndarray,
        probs: np.ndarray | None,
        disagreement: np.ndarray | None,
        result: dict[str, Any] | None = None,
    ) -> None:
        """Store one validated block (the optional layers None when not saved) in the
        run's block store (Zarr for both kinds; the GeoTIFF is made from it at the end),
        then record it in the store's manifest with ``result``."""
        self.store.write(row0, col0, mask, probs, disagreement, result)

    @abstractmethod
    def _finalize(self) -> None:
        """Complete the temporary output and publish it under :attr:`final_paths`."""

    def _reopen(self, root: Path) -> None:
        """Take over the unfinished block store at ``root`` (same fingerprint, its writer
        gone) instead of creating one: its manifest's blocks are kept. OutputError when
        its block shape or layers are not this output's."""
        from tilesegment.write.manifest import store_record

        record = store_record(root)
        shape, layers = record.get("block_shape"), record.get("layers")
        if shape is not None and tuple(shape) != tuple(self.meta.block_shape):
            raise OutputError(
                f"cannot resume {self.path}: the unfinished run there has blocks of "
                f"{shape[0]}x{shape[1]} px, this one {self.meta.block_shape[0]}x"
                f"{self.meta.block_shape[1]}")
        if layers is not None and list(layers) != list(self.meta.layers):
            raise OutputError(f"cannot resume {self.path}: the unfinished run there holds "
                              f"the layers {layers}, this one {list(self.meta.layers)}")
        self.store = type(self.store)(root, self.meta)  # the kind's BlockStore, reopened
        self.store.claim(self.run_id, writer_record())
        self._claimed = root
        self.resumed = True

    def done_blocks(self) -> dict[tuple[int, int], dict[str, Any]]:
        """The blocks recorded as stored in this output's manifest (``{(row0, col0):
        counts}``): after a resume, those of the earlier run(s) too."""
        return self.store.done_blocks()

    def keep(self, timeout: float = 10.0) -> Path | None:
        """Stop this unfinished output but keep its block store for a later resume (a
        failed or interrupted run): new writes are refused, writes in flight get up to
        ``timeout`` s, this run's other temporaries are removed. Returns the store's path;
        None (and the output aborted) when nothing could be resumed from it: no
        fingerprint, or no block done."""
        if self._state != OPEN:
            return None
        if not self.fingerprint or not self.done_blocks():
            self.abort()
            return None
        self._state = KEPT
        _open_outputs.discard(self)
        self.store.close(timeout)
        for final in self.final_paths:
            try:
                atomic.remove_partials(final, self.token)
            except OSError as exc:
                warnings.warn(f"could not remove a temporary file of {final}: {exc}",
                              RuntimeWarning, stacklevel=2)
        return Path(self.store.root)

    def _stop_writes(self) -> None:
        """Refuse new block writes and wait for those in flight."""
        self.store.close()

    # -- the contract ----------------------------------------------------------------------

    def write_block(
        self,
        row0: int,
        col0: int,
        mask: np.ndarray,
        probabilities: np.ndarray | None = None,
        disagreement: np.ndarray | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        """Write the block whose top-left pixel is ``(row0, col0)``.

        ``mask``: ``(h, w)`` class ids, ``h, w`` the block shape clipped at the raster edge;
        ``probabilities``: ``(K, h, w)`` float32 or float16, required when the output saves
        probabilities (ignored otherwise); ``disagreement``: ``(h, w)`` bool, or uint8 of
        0/1/255 (255 = nodata), required when the output saves the disagreement layer
        (ignored otherwise). ``(row0, col0)`` must be a multiple of the block shape
        (ValueError otherwise). Safe to call concurrently for different blocks. Once the
        block is on disk it is recorded in the store's manifest, with ``result`` (the
        task's counts, JSON-able) inside: a resumed run skips it and sums those counts.
        """
        if self._state != OPEN:
            raise OutputError(f"cannot write to {self.path}: the output is {self._state}")
        row0, col0 = int(row0), int(col0)
        mask, probs = check_block(self.meta, row0, col0, mask, probabilities)
        disagree = check_disagreement(self.meta, row0, col0, disagreement)
        self._write(row0, col0, mask, probs, disagree, result)

    def finalize(self) -> Path:
        """Make the output complete and visible under :attr:`path`; return that path.

        On failure the output stays open (temporary files kept except half-written ones),
        so the caller may retry or :meth:`abort`.
        """
        if self._state == FINALIZED:
            return self.path
        if self._state in (ABORTED, KEPT):
            raise OutputError(f"cannot finalize {self.path}: the run was {self._state}")
        self._finalize()
        self._state = FINALIZED
        _open_outputs.discard(self)
        for final in self.final_paths:
            try:
                atomic.remove_partials(final, self.token)
            except OSError as exc:  # the output is published: only cleanup is left
                warnings.warn(f"could not remove a temporary file of {final}: {exc}",
                              RuntimeWarning, stacklevel=2)
        try:
            self._remove_store()
        except OSError as exc:
            warnings.warn(f"could not remove the block store of {self.path}: {exc}",
                          RuntimeWarning, stacklevel=2)
        return self.path

    def abort(self) -> None:
        """Remove every temporary file of this run; the final path is left as it was."""
        if self._state == FINALIZED:
            return
        self._state = ABORTED
        _open_outputs.discard(self)
        self._stop_writes()
        for final in self.final_paths:
            try:
                atomic.remove_partials(final, self.token)
            except OSError as exc:
                # abort runs while another error propagates: never replace that error
                warnings.warn(f"could not remove the partial output of {final}: {exc}",
                              RuntimeWarning, stacklevel=2)
        try:
            self._remove_store()
        except OSError as exc:
            warnings.warn(f"could not remove the partial output of {self.path}: {exc}",
                          RuntimeWarning, stacklevel=2)

    def _remove_store(self) -> None:
        """Remove this run's block store (named by :attr:`store_key`, which the token
        sweep of :func:`~tilesegment.write.atomic.remove_partials` misses), if this run
        created it."""
        claimed = getattr(self, "_claimed", None)
        if claimed is not None:
            atomic.remove(claimed)

    def block_store_root(self, *, scratch: bool = False) -> Path:
        """Where this output's block store goes (:func:`~tilesegment.write.layout.
        block_store_path` with :attr:`store_key`), claimed for removal by :meth:`abort`
        and :meth:`finalize`: a writer's ``_create`` calls this just before it creates the
        store (``create_output`` has made sure nothing else is there)."""
        root = layout.block_store_path(self.path, self.store_key, scratch=scratch)
        # a token-keyed store goes with the token's other temporaries (remove_partials)
        self._claimed: Path | None = root if self.fingerprint else None
        return root

    def __enter__(self) -> Output:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Finalize on a clean exit; abort on an exception (or when finalize fails)."""
        if self._state != OPEN:
            return
        if exc_type is not None:
            self.abort()
            return
        try:
            self.finalize()
        except BaseException:
            self.abort()
            raise

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path} ({self._state})>"
