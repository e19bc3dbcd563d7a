"""Writers: a class mask (and optionally probabilities and the tile-disagreement layer)
written block by block, safely.

``create_output(path, meta)`` picks the kind from the extension (``.zarr`` → Zarr v3
directory, ``.tif``/``.tiff`` → GeoTIFF), applies the overwrite policy of
:mod:`tilesegment.write.guard` (an input, or anything that is not a tilesegment output, is
never replaced; an existing output only with ``overwrite``) and returns an
:class:`Output`. Tasks call ``write_block`` (from any thread or process: outputs pickle);
the caller then calls ``finalize()`` (the output is verified, its completion record
written last, and it appears under its final name as one unit) or ``abort()`` (temporary
files removed, the old output intact).

zarr and rasterio are imported only when an output of that kind is made or read.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tilesegment.errors import InputError, OutputError
from tilesegment.write import atomic, guard
from tilesegment.write.base import Output
from tilesegment.write.meta import OutputMeta, output_layers

__all__ = ["Output", "OutputMeta", "check_output", "create_output", "output_kind",
           "read_output_meta"]

SUPPORTED_EXTENSIONS = {".zarr": "zarr", ".tif": "geotiff", ".tiff": "geotiff"}


def output_kind(path: str | Path) -> str:
    """``"zarr"`` or ``"geotiff"`` from the extension of ``path``; OutputError otherwise."""
    suffix = Path(path).suffix.lower()
    try:
        return SUPPORTED_EXTENSIONS[suffix]
    except KeyError:
        shown = f"extension {suffix!r}" if suffix else "no extension"
        raise OutputError(
            f"cannot write {path}: {shown} is not supported "
            f"(supported: {', '.join(SUPPORTED_EXTENSIONS)})"
        ) from None


def check_output(
    path: str | Path,
    *,
    overwrite: bool = False,
    cog: bool = False,
    inputs: Iterable[str | Path] = (),
    layers: Iterable[str] = (),
) -> str:
    """Every check :func:`create_output` makes before writing, without writing: the kind
    from the extension (returned), ``cog`` only for GeoTIFF, no output path (nor a GeoTIFF's
    ``layers`` siblings) that is, holds or lies inside one of ``inputs``, nothing there that
    may not be replaced, nor anything at all without ``overwrite``. What a killed earlier
    run left half-published at ``path`` is completed first. ``segment()`` calls it before
    it builds a model; ``create_output`` again before it creates anything."""
    final = Path(path).expanduser().absolute()
    kind = output_kind(final)
    if kind == "zarr" and cog:
        raise OutputError(f"cannot write {final}: cog applies to GeoTIFF outputs only")
    finals = [final]
    if kind == "geotiff":
        from tilesegment.write.geotiff_output import sibling_path

        finals += [sibling_path(final, layer) for layer in layers]
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
        guard.check_replaceable(final_path, kind, overwrite=overwrite)
    return kind


def _extra_layers(meta: OutputMeta) -> list[str]:
    """The layers besides the mask that ``meta`` asks for."""
    return [layer for layer, wanted in (("probabilities", meta.save_probabilities),
                                        ("disagreement", meta.save_disagreement)) if wanted]


def create_output(
    path: str | Path,
    meta: OutputMeta,
    *,
    overwrite: bool = False,
    cog: bool = False,
    inputs: Iterable[str | Path] = (),
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
    """
    final = Path(path).expanduser().absolute()
    kind = check_output(final, overwrite=overwrite, cog=cog, inputs=inputs,
                        layers=_extra_layers(meta))
    output: Output
    if kind == "zarr":
        from tilesegment.write.zarr_output import ZarrOutput

        output = ZarrOutput(final, meta, overwrite=overwrite)
    else:
        from tilesegment.write.geotiff_output import GeoTiffOutput

        output = GeoTiffOutput(final, meta, overwrite=overwrite, cog=cog)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        output._create()
    except OSError as exc:
        output.abort()
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"cannot create {final}: {exc}") from exc
    except BaseException:
        output.abort()
        raise
    return output


def read_output_meta(path: str | Path) -> dict[str, Any]:
    """The ``tilesegment`` metadata of an output (the JSON of ``meta_to_attrs``).

    Adds ``path``; ``layers`` (``"mask"``, then ``"probabilities"``/``"disagreement"`` when
    saved; derived for outputs older than that key) and ``layer_paths`` (layer → the path
    ``open_raster`` opens it from: ``out.zarr/<layer>``, or the GeoTIFF and its
    ``<stem>.<layer><suffix>`` siblings); for a GeoTIFF also ``overviews`` (decimation
    factors) and ``tiff_block_shape``. InputError when ``path`` is not a tilesegment output.
    """
    path = Path(path)
    if not atomic.exists(path):
        raise InputError(f"{path} does not exist")
    # the kind from what is there: a hidden partial has no .zarr/.tif extension
    kind = "zarr" if path.is_dir() else "geotiff"
    if kind == "zarr" and path.name in guard.ZARR_LAYERS and guard.is_zarr_output(
            path.parent):
        return read_output_meta(path.parent)  # a layer array of a Zarr output
    if kind == "zarr":
        import zarr

        from tilesegment.write.zarr_output import ATTRS_KEY

        try:
            attrs = dict(zarr.open_group(str(path), mode="r").attrs[ATTRS_KEY])
        except (KeyError, FileNotFoundError, ValueError) as exc:
            raise InputError(f"{path} is not a tilesegment Zarr output: {exc}") from exc
        layers = output_layers(attrs)
        paths = {layer: str(path / layer) for layer in layers}
        return {**attrs, "layers": layers, "layer_paths": paths, "path": str(path)}

    import rasterio

    from tilesegment.write.geotiff_output import TAG_ATTRS, sibling_path

    try:
        with warnings.catch_warnings():  # a slide mask has no geotransform: expected
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            ds = rasterio.open(path)
        with ds:
            tags = ds.tags()
            extra = {"overviews": ds.overviews(1), "tiff_block_shape": list(ds.block_shapes[0])}
    except rasterio.errors.RasterioError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    if TAG_ATTRS not in tags:
        raise InputError(f"{path} is not a tilesegment GeoTIFF output (no {TAG_ATTRS} tag)")
    try:
        attrs = json.loads(tags[TAG_ATTRS])
    except ValueError as exc:
        raise InputError(f"{path}: its {TAG_ATTRS} tag is not JSON ({exc})") from None
    layer = tags.get("TILESEGMENT_LAYER", "mask")
    record_in = (attrs.get("completion") or {}).get("record_in")
    if layer != "mask" and record_in:  # a sibling layer: the set is described by its mask
        from tilesegment.errors import IncompleteOutputError

        mask = path.with_name(str(record_in))
        if not mask.is_file():
            raise IncompleteOutputError(f"{path} is the {layer} layer of {mask}, which is "
                                        "missing")
        meta = read_output_meta(mask)
        if meta.get("run_id") != attrs.get("run_id") or Path(
                meta["layer_paths"].get(layer, "")).name != path.name:
            raise IncompleteOutputError(
                f"{path} is a {layer} layer of run {attrs.get('run_id')}, not of the output "
                f"{mask} beside it (run {meta.get('run_id')}): a partial or mixed set")
        return meta
    layers = output_layers(attrs)
    paths = {
        layer: str(path if layer == "mask" else sibling_path(path, layer)) for layer in layers
    }
    return {**attrs, **extra, "layers": layers, "layer_paths": paths, "path": str(path)}
