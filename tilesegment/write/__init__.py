"""Writers: a class mask (and optionally probabilities and the tile-disagreement layer)
written block by block, safely.

``create_output(path, meta)`` picks the kind from the extension through the registry of
writers (:mod:`tilesegment.write.registry`: ``.zarr`` → Zarr v3 directory,
``.tif``/``.tiff`` → GeoTIFF), applies the overwrite policy of
:mod:`tilesegment.write.guard` (an input, or anything that is not a tilesegment output, is
never replaced; an existing output only with ``overwrite``) and returns an
:class:`Output`. Tasks call ``write_block`` (from any thread or process: outputs pickle);
the caller then calls ``finalize()`` (the output is verified, its completion record
written last, and it appears under its final name as one unit) or ``abort()`` (temporary
files removed, the old output intact).

The blocks of an unfinished output go to a hidden block store beside it, named by the run
plan's ``fingerprint`` when the run has one (:mod:`tilesegment.write.stores`: a later run of
the same settings can find it; what killed runs left is cleared, with a warning, when the
next output is created there).

``import tilesegment.write``, choosing a kind (:func:`output_kind`) and checking a path
(:func:`check_output`) import neither zarr nor rasterio: the writer classes import them when
an output is made or read (zarr for every block store, rasterio for a GeoTIFF). Names and
keys on disk come from :mod:`tilesegment.write.layout`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

from tilesegment.errors import OutputError
from tilesegment.write import atomic, base, guard, layout, registry, stores
from tilesegment.write.base import Output
from tilesegment.write.meta import OutputMeta
from tilesegment.write.verify import read_output_meta

__all__ = ["Output", "OutputMeta", "check_output", "create_output", "output_kind",
           "read_output_meta", "register_writer"]

register_writer = registry.register_writer


def output_kind(path: str | Path) -> str:
    """The registered kind (``"zarr"``, ``"geotiff"``...) selected by the extension of
    ``path``; OutputError listing the supported extensions otherwise."""
    return registry.writer_for(path).kind


def check_output(
    path: str | Path,
    *,
    overwrite: bool = False,
    cog: bool = False,
    inputs: Iterable[str | Path] = (),
    layers: Iterable[str] = (),
) -> str:
    """Every check :func:`create_output` makes before writing, without writing: the kind
    from the extension (returned), the options and ``layers`` the kind accepts (``cog``
    only for GeoTIFF), no output path (nor a GeoTIFF's ``layers`` siblings) that is, holds
    or lies inside one of ``inputs``, nothing there that may not be replaced, nor anything
    at all without ``overwrite``. What a killed earlier run left half-published at ``path``
    is completed first. ``segment()`` calls it before it builds a model; ``create_output``
    again before it creates anything."""
    final = Path(path).expanduser().absolute()
    writer = registry.writer_for(final)
    layers = list(layers)
    writer.check_options(final, cog=cog, layers=layers)
    finals = writer.planned_paths(final, layers)
    sources = [Path(p).expanduser().absolute() for p in inputs]
    for final_path in finals:
        guard.check_inputs(final_path, sources)
    try:
        recovered = atomic.recover(final)
    except OSError as exc:
        raise OutputError(f"cannot recover the interrupted output at {final}: {exc}") from exc
    for note in recovered:
        warnings.warn(note, RuntimeWarning, stacklevel=3)
    for final_path in finals:
        writer.check_replaceable(final_path, overwrite=overwrite)
    return writer.kind


def create_output(
    path: str | Path,
    meta: OutputMeta,
    *,
    overwrite: bool = False,
    cog: bool = False,
    inputs: Iterable[str | Path] = (),
    fingerprint: str | None = None,
    settings: dict | None = None,
    resume: bool = False,
) -> Output:
    """Start an output at ``path`` (kind from the extension) for a mask described by ``meta``.

    Before anything is written: :class:`UnsafeOutputError` when ``path`` (or a GeoTIFF's
    probabilities or disagreement sibling) is, contains or lies inside one of ``inputs``
    (the files the run reads), or holds something that is not a tilesegment output
    (whatever ``overwrite`` says); :class:`OutputExistsError` when an output is there and not
    ``overwrite``. With ``overwrite`` the old output is replaced only by ``finalize``, after
    the new one is verified. What a killed earlier run left half-published at ``path`` is
    first completed (:func:`~tilesegment.write.atomic.recover`). ``cog`` (GeoTIFF only)
    makes Cloud-Optimized GeoTIFFs with overviews. The parent directory is created if needed.

    ``fingerprint`` (the run plan's, a hex sha256) names the block store (a random token
    when None) and is recorded in the metadata; ``settings`` (the plan's settings as a
    flat dict) is recorded in the block store, to say which differ when a resume is refused.
    An unfinished block store of a run whose writer is gone (killed, interrupted, failed) is
    refused unless ``overwrite`` (it is removed) or ``resume`` (the store of the same
    fingerprint is reopened: blocks in its manifest are kept, :meth:`Output.done_blocks`);
    :class:`~tilesegment.errors.UnfinishedOutputError` otherwise, and for a ``resume`` onto
    a store of other settings (listing them). Other leftovers are removed first, each with
    a :class:`StaleOutputWarning` (:func:`~tilesegment.write.stores.clear_stale`);
    OutputError when a live run of the same fingerprint is writing there.
    """
    final = Path(path).expanduser().absolute()
    if fingerprint is not None and not layout.is_fingerprint(fingerprint):
        raise ValueError(f"fingerprint must be a hex digest, got {fingerprint!r}")
    kind = check_output(final, overwrite=overwrite, cog=cog, inputs=inputs,
                        layers=[layer for layer in meta.layers if layer != layout.MASK])
    output = registry.writer(kind).new(final, meta, overwrite=overwrite, cog=cog)
    output.fingerprint = fingerprint.lower() if fingerprint else None
    output.settings = dict(settings) if settings else None
    found = stores.clear_stale(final, output.fingerprint, output.final_paths[1:],
                               overwrite=overwrite, resume=resume, settings=output.settings)
    if found is None:
        stores.check_free(final, output.store_key)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if found is not None:
            output._reopen(found.path)
        else:
            output._create()
    except OSError as exc:
        output.abort()
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"cannot create {final}: {exc}") from exc
    except BaseException:
        output.abort()
        raise
    base.track(output)
    return output
