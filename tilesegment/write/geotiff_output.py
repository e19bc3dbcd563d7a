"""GeoTIFF outputs: blocks go to a scratch Zarr store; ``finalize`` transcodes it.

Tasks cannot write a compressed GeoTIFF concurrently, so they fill a scratch
:class:`~tilesegment.write.zarr_output.BlockStore`
(:func:`~tilesegment.write.layout.block_store_path`: ``.<name>.partial-<token>.scratch.zarr``)
and :meth:`GeoTiffOutput.finalize` writes ``.<name>.partial-<token>.tif`` window by window,
renames it to the final name and removes the scratch. With ``save_probabilities`` a sibling
``<stem>.probabilities<suffix>`` (K float32 bands holding float16 values exactly, tagged
``VALUES_PRECISION=float16``; same georeference) is written the same
way, and with ``save_disagreement`` a sibling ``<stem>.disagreement<suffix>`` (one uint8
band: 1 where overlapping tiles disagree, 0 where they agree, nodata 255). Siblings are
written and verified before the mask.

The mask's class names also go to a GDAL PAM sidecar ``<name>.aux.xml`` (category names
and a thematic raster attribute table with each class's colour: QGIS and ``gdalinfo`` show
names, not numbers), written before the mask and published in the same set.

Every layer carries the run's ``run_id`` in its ``TILESEGMENT`` tag. The mask's tag holds
the completion record: the run id, the blocks written, and each sibling's file name and
size. It is written with ``complete: false``; only once the mask file is verified (every
TIFF block present, every IFD readable, overviews included) is that flag flipped in place
(the same number of bytes, so the TIFF's layout does not move). The set is then published
as one unit by :func:`~tilesegment.write.atomic.publish_set` (old files kept as hard-link
backups until every rename is done; rolled back on failure; a journal lets the next run
finish a publication a killed run left half-done). Readers refuse a set whose layers
disagree with the record.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tilesegment.errors import IncompleteOutputError, InputError, OutputError
from tilesegment.write import atomic, layout
from tilesegment.write.base import Output
from tilesegment.write.integrity import geotiff_problems, verify_tiff
from tilesegment.write.meta import DISAGREEMENT_NODATA, OutputMeta, meta_to_attrs, output_layers
from tilesegment.write.zarr_output import BlockStore

if TYPE_CHECKING:  # rasterio comes with transcode, imported when a GeoTIFF is made
    from tilesegment.write.transcode import Layer

TAG_ATTRS = layout.TIFF_ATTRS_TAG
"""Dataset tag holding the JSON of :func:`~tilesegment.write.meta.meta_to_attrs`."""
MASK, PROBABILITIES, DISAGREEMENT = layout.MASK, layout.PROBABILITIES, layout.DISAGREEMENT
sibling_path = layout.sibling_path


def probabilities_path(path: Path) -> Path:
    """``<dir>/<stem>.probabilities<suffix>`` next to the mask GeoTIFF ``path``."""
    return sibling_path(path, PROBABILITIES)


def disagreement_path(path: Path) -> Path:
    """``<dir>/<stem>.disagreement<suffix>`` next to the mask GeoTIFF ``path``."""
    return sibling_path(path, DISAGREEMENT)


def mark_tiff_complete(path: Path, run_id: str) -> None:
    """Flip ``"complete":false`` to ``"complete":true `` in the completion record of the
    mask GeoTIFF at ``path``, in place (same length, inside its GDAL metadata tag), then
    check the file reads back complete. OutputError if the record is not found once."""
    import rasterio
    import tifffile

    plain = (f'"complete":false,"run_id":"{run_id}"', f'"complete":true ,"run_id":"{run_id}"')
    # as GDAL stores it: the JSON inside XML, its quotes escaped once or twice
    forms = [tuple(x.replace('"', quote) for x in plain)
             for quote in ('"', "&quot;", "&amp;quot;")]
    try:
        with tifffile.TiffFile(path) as tif:
            tag = tif.pages[0].tags.get(42112)  # GDAL_METADATA
            if tag is None:
                raise OutputError(f"cannot complete {path}: no GDAL metadata tag")
            start, length = tag.valueoffset, tag.count
        with open(path, "r+b") as fh:
            fh.seek(start)
            raw = fh.read(length)
            for old, new in forms:
                if raw.count(old.encode()) == 1:
                    fh.seek(start + raw.index(old.encode()))
                    fh.write(new.encode())
                    break
            else:
                raise OutputError(f"cannot complete {path}: its completion record is not "
                                  "where it was written")
            fh.flush()
            os.fsync(fh.fileno())
        with warnings.catch_warnings():  # a slide mask has no geotransform: expected
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            ds = rasterio.open(path)
        with ds:
            record = json.loads(ds.tags()[TAG_ATTRS])[layout.COMPLETION_KEY]
    except OutputError:
        raise
    except Exception as exc:
        raise OutputError(f"cannot complete {path}: {exc}") from exc
    if record.get("complete") is not True or record.get("run_id") != run_id:
        raise OutputError(f"cannot complete {path}: the completion record reads {record}")


def pam_xml(names: tuple[str, ...], colors: tuple[tuple[int, int, int], ...]) -> str:
    """The GDAL PAM document of a class mask's band 1: ``CategoryNames`` (class id i is
    the i-th name: what QGIS's paletted renderer and ``gdalinfo`` show) and a thematic
    raster attribute table (``Value`` (min-max usage), ``Class`` (name usage), ``Red``,
    ``Green``, ``Blue``, ``Alpha``), one row per class."""
    from xml.sax.saxutils import escape

    fields = [("Value", 0, 5), ("Class", 2, 2), ("Red", 0, 6), ("Green", 0, 7),
              ("Blue", 0, 8), ("Alpha", 0, 9)]
    lines = ["<PAMDataset>", '  <PAMRasterBand band="1">', "    <CategoryNames>"]
    lines += [f"      <Category>{escape(name)}</Category>" for name in names]
    lines += ["    </CategoryNames>", '    <GDALRasterAttributeTable tableType="thematic">']
    for index, (name, kind, usage) in enumerate(fields):
        lines.append(f'      <FieldDefn index="{index}"><Name>{name}</Name><Type>{kind}'
                     f"</Type><Usage>{usage}</Usage></FieldDefn>")
    for value, (name, rgb) in enumerate(zip(names, colors, strict=True)):
        cells = [str(value), escape(name), *(str(int(c)) for c in rgb), "255"]
        lines.append(f'      <Row index="{value}">'
                     + "".join(f"<F>{cell}</F>" for cell in cells) + "</Row>")
    lines += ["    </GDALRasterAttributeTable>", "  </PAMRasterBand>", "</PAMDataset>", ""]
    return "\n".join(lines)


def _write_synced(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (a new file) and flush it to disk."""
    try:
        with open(path, "x", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise OutputError(f"cannot write {atomic.final_of(path)}: "
                          f"{exc.strerror or exc}") from None


class GeoTiffOutput(Output):
    """A single-band class-mask GeoTIFF (tiled, DEFLATE, colour map; COG if ``cog``)."""

    kind = "geotiff"
    extensions = (".tif", ".tiff")
    layers = layout.LAYERS

    @classmethod
    def planned_paths(cls, final: Path, layers: Iterable[str]) -> list[Path]:
        """The mask ``final``, a ``<stem>.<layer><suffix>`` sibling per other layer, and the
        mask's PAM sidecar ``<name>.aux.xml`` (class names and attribute table)."""
        return [final, *(sibling_path(final, layer) for layer in layers if layer != MASK),
                layout.pam_path(final)]

    @classmethod
    def check_options(cls, final: Path, *, cog: bool, layers: Iterable[str] = ()) -> None:
        super().check_options(final, cog=False, layers=layers)  # cog is a GeoTIFF option

    @classmethod
    def new(cls, final: Path, meta: OutputMeta, *, overwrite: bool, cog: bool) -> Output:
        return cls(final, meta, overwrite=overwrite, cog=cog)

    @classmethod
    def problems(cls, path: Path, meta: dict[str, Any],
                 completion: dict[str, Any]) -> list[str]:
        return geotiff_problems(path, meta, completion)

    @classmethod
    def holds(cls, path: Path) -> bool:
        """Anything but a directory (a hidden partial has no ``.tif`` extension)."""
        return not path.is_dir()

    @classmethod
    def read_meta(cls, path: Path) -> dict[str, Any]:
        """The mask's metadata; ``path`` may be a sibling layer (then checked against the
        mask's completion record), and ``overviews``, ``tiff_block_shape`` added."""
        import rasterio

        try:
            with warnings.catch_warnings():  # a slide mask has no geotransform: expected
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                ds = rasterio.open(path)
            with ds:
                tags = ds.tags()
                extra = {"overviews": ds.overviews(1),
                         "tiff_block_shape": list(ds.block_shapes[0])}
        except rasterio.errors.RasterioError as exc:
            raise InputError(f"cannot read {path}: {exc}") from exc
        if TAG_ATTRS not in tags:
            raise InputError(f"{path} is not a tilesegment GeoTIFF output (no {TAG_ATTRS} tag)")
        try:
            attrs = json.loads(tags[TAG_ATTRS])
        except ValueError as exc:
            raise InputError(f"{path}: its {TAG_ATTRS} tag is not JSON ({exc})") from None
        layer = tags.get(layout.TIFF_LAYER_TAG, MASK)
        record_in = (attrs.get(layout.COMPLETION_KEY) or {}).get("record_in")
        if layer != MASK and record_in:  # a sibling layer: the set is described by its mask
            mask = path.with_name(str(record_in))
            if not mask.is_file():
                raise IncompleteOutputError(f"{path} is the {layer} layer of {mask}, which "
                                            "is missing")
            meta = cls.read_meta(mask)
            if meta.get("run_id") != attrs.get("run_id") or Path(
                    meta["layer_paths"].get(layer, "")).name != path.name:
                raise IncompleteOutputError(
                    f"{path} is a {layer} layer of run {attrs.get('run_id')}, not of the "
                    f"output {mask} beside it (run {meta.get('run_id')}): a partial or mixed "
                    "set")
            return meta
        layers = output_layers(attrs)
        paths = {layer: str(layout.geotiff_layer_path(path, layer)) for layer in layers}
        return {**attrs, **extra, "layers": layers, "layer_paths": paths, "path": str(path)}

    def __init__(self, path: Path, meta: OutputMeta, *, overwrite: bool, cog: bool) -> None:
        super().__init__(path, meta, overwrite=overwrite)
        self.cog = cog
        self.store = BlockStore(layout.block_store_path(path, self.token, scratch=True), meta)

    @property
    def probabilities_path(self) -> Path | None:
        """The probabilities GeoTIFF, None unless the output saves probabilities."""
        return probabilities_path(self.path) if self.meta.save_probabilities else None

    @property
    def disagreement_path(self) -> Path | None:
        """The disagreement GeoTIFF, None unless the output saves that layer."""
        return disagreement_path(self.path) if self.meta.save_disagreement else None

    @property
    def final_paths(self) -> tuple[Path, ...]:
        siblings = (self.probabilities_path, self.disagreement_path)
        return (self.path, *(path for path in siblings if path is not None),
                layout.pam_path(self.path))

    def _create(self) -> None:
        from tilesegment.write.transcode import parse_crs

        parse_crs(self.meta.georef.crs_wkt)  # a CRS GDAL rejects fails now, not at the end
        attrs = meta_to_attrs(self.meta, kind=self.kind)
        attrs["cog"] = self.cog
        attrs.update(self.store_attrs())
        self.store = BlockStore.create(self.block_store_root(scratch=True), self.meta, attrs)

    def _finalize(self) -> None:
        written = self.store.verified_blocks()
        base = self.store.attrs()
        completion = self.store.completion(self.run_id, written)
        completion["complete"] = False  # flipped in place once the mask file is verified
        siblings = [(name, final) for name, final in (
            (PROBABILITIES, self.probabilities_path),
            (DISAGREEMENT, self.disagreement_path)) if final is not None]
        staged: list[tuple[Path, Path]] = []
        try:
            records: dict[str, dict[str, Any]] = {}
            for name, final in siblings:
                tmp = layout.staged_tiff_path(final, self.token)
                staged.append((tmp, final))
                attrs = {**base, layout.COMPLETION_KEY: {"complete": None, "run_id": self.run_id,
                                                "record_in": self.path.name}}
                layer = (self._probabilities_layer(attrs) if name == PROBABILITIES
                         else self._disagreement_layer(attrs))
                self._write_layer(layer, tmp)
                records[name] = {"file": final.name, "bytes": tmp.stat().st_size}
            pam = layout.pam_path(self.path)
            tmp = layout.partial_path(pam, self.token)
            staged.append((tmp, pam))
            _write_synced(tmp, pam_xml(self.meta.class_names, self.meta.class_colors))
            completion["pam"] = {"file": pam.name, "bytes": tmp.stat().st_size}
            tmp = layout.staged_tiff_path(self.path, self.token)
            staged.append((tmp, self.path))
            completion["layers"] = records
            self._write_layer(self._mask_layer({**base, layout.COMPLETION_KEY: completion}),
                              tmp)
            mark_tiff_complete(tmp, self.run_id)
            atomic.publish_set(staged, overwrite=self.overwrite, token=self.token,
                               run_id=self.run_id, scratch=self.store.root)
        except BaseException:
            # Keep the scratch store (finalize may be retried); drop the new TIFFs. The
            # set at the final paths is the old one (publish_set rolled it back).
            for tmp, _ in staged:
                atomic.remove_prefixed(tmp)
            raise

    def _write_layer(self, layer: Layer, tmp: Path) -> None:
        """Write ``layer`` to the hidden ``tmp``, then check every block of it is there."""
        from tilesegment.write.transcode import write_geotiff

        write_geotiff(layer, tmp, shape=self.meta.shape, block_shape=self.meta.block_shape,
                      georef=self.meta.georef, cog=self.cog)
        verify_tiff(tmp)
        try:
            atomic.fsync_path(tmp)
        except OSError as exc:
            raise OutputError(f"cannot write {tmp}: {exc.strerror or exc}") from None

    def _tags(self, attrs: dict[str, Any], layer: str) -> dict[str, str]:
        from tilesegment.write.transcode import json_tag

        return {
            TAG_ATTRS: json_tag(attrs),
            layout.TIFF_LAYER_TAG: layer,
            layout.TIFF_CLASS_NAMES_TAG: json_tag(list(self.meta.class_names)),
            layout.TIFF_PROVENANCE_TAG: json_tag(self.meta.provenance),
        }

    def _mask_layer(self, attrs: dict[str, Any]) -> Layer:
        from tilesegment.write.transcode import Layer

        mask = self.store.arrays().mask
        meta = self.meta
        colormap = {i: (*rgb, 255) for i, rgb in enumerate(meta.class_colors)}
        colormap[meta.nodata] = (0, 0, 0, 0)
        return Layer(
            read=lambda r0, r1, c0, c1: mask[r0:r1, c0:c1][np.newaxis],
            bands=1,
            dtype=meta.mask_dtype,
            nodata=meta.nodata,
            descriptions=(f"class id 0..{meta.num_classes - 1}, nodata {meta.nodata}",),
            tags=self._tags(attrs, MASK),
            resampling="MODE",
            colormap=colormap,
        )

    def _probabilities_layer(self, attrs: dict[str, Any]) -> Layer:
        from tilesegment.write.transcode import Layer

        probs = self.store.arrays().probabilities
        assert probs is not None
        return Layer(
            read=lambda r0, r1, c0, c1: probs[:, r0:r1, c0:c1],
            bands=self.meta.num_classes,
            dtype=np.dtype(np.float32),
            nodata=float("nan"),
            descriptions=tuple(f"probability: {name}" for name in self.meta.class_names),
            # GDAL 3.10 has no Float16 GeoTIFF: float16 values, exactly, in float32 bands
            tags={**self._tags(attrs, PROBABILITIES), layout.TIFF_PRECISION_TAG: "float16"},
            resampling="AVERAGE",
            predictor=3,
        )

    def _disagreement_layer(self, attrs: dict[str, Any]) -> Layer:
        from tilesegment.write.transcode import Layer

        disagreement = self.store.arrays().disagreement
        assert disagreement is not None
        nodata = DISAGREEMENT_NODATA
        return Layer(
            read=lambda r0, r1, c0, c1: disagreement[r0:r1, c0:c1][np.newaxis],
            bands=1,
            dtype=np.dtype(np.uint8),
            nodata=nodata,
            descriptions=(
                f"1: overlapping tiles disagree on the class, 0: they agree, nodata {nodata}",
            ),
            tags=self._tags(attrs, DISAGREEMENT),
            resampling="MODE",
            colormap={0: (0, 0, 0, 0), 1: (255, 0, 0, 255), nodata: (0, 0, 0, 0)},
        )
