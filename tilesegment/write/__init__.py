"""Writers: a class mask (and optionally probabilities and the tile-disagreement layer)
written block by block, safely.

``create_output(path, meta)`` picks the kind from the extension (``.zarr`` → Zarr v3
directory, ``.tif``/``.tiff`` → GeoTIFF), refuses an existing output unless ``overwrite``,
and returns an :class:`Output`. Tasks call ``write_block`` (from any thread or process:
outputs pickle); the caller then calls ``finalize()`` (the output appears under its final
name in one rename) or ``abort()`` (temporary files removed, the old output intact).

zarr and rasterio are imported only when an output of that kind is made or read.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from tilesegment.errors import InputError, OutputError
from tilesegment.write import atomic
from tilesegment.write.base import Output
from tilesegment.write.meta import OutputMeta, output_layers

__all__ = ["Output", "OutputMeta", "create_output", "output_kind", "read_output_meta"]

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


def create_output(
    path: str | Path, meta: OutputMeta, *, overwrite: bool = False, cog: bool = False
) -> Output:
    """Start an output at ``path`` (kind from the extension) for a mask described by ``meta``.

    Raises :class:`OutputExistsError` when something is at ``path`` (or, for a GeoTIFF, at
    its probabilities or disagreement sibling) and not ``overwrite``, before anything is
    written; with ``overwrite`` the old output is replaced only by ``finalize``. ``cog``
    (GeoTIFF only) makes Cloud-Optimized GeoTIFFs with overviews. The parent directory is
    created if needed.
    """
    final = Path(path).expanduser().absolute()
    kind = output_kind(final)
    output: Output
    if kind == "zarr":
        if cog:
            raise OutputError(f"cannot write {final}: cog applies to GeoTIFF outputs only")
        from tilesegment.write.zarr_output import ZarrOutput

        output = ZarrOutput(final, meta, overwrite=overwrite)
    else:
        from tilesegment.write.geotiff_output import GeoTiffOutput

        output = GeoTiffOutput(final, meta, overwrite=overwrite, cog=cog)
    if not overwrite:
        atomic.refuse_existing(output.final_paths)
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
    try:
        kind = output_kind(path)
    except OutputError as exc:
        raise InputError(str(exc)) from None
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
    attrs = json.loads(tags[TAG_ATTRS])
    layers = output_layers(attrs)
    paths = {
        layer: str(path if layer == "mask" else sibling_path(path, layer)) for layer in layers
    }
    return {**attrs, **extra, "layers": layers, "layer_paths": paths, "path": str(path)}
