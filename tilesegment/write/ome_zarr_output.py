"""OME-Zarr label outputs (``out.ome.zarr``): the mask as an NGFF 0.5 ``image-label``
multiscale pyramid in a Zarr v3 group.

Layout of a finished output (one Zarr v3 group, nothing else in it)::

    out.ome.zarr/zarr.json   attributes: "ome" (NGFF 0.5: version, multiscales,
                             image-label with class colours and names) and "tilesegment"
                             (the output metadata, completion record, georeference)
    out.ome.zarr/0/          level 0: (H, W) class ids, chunks = block shape, the same
                             codec, fill value (nodata) and chunk bytes as a .zarr output's
                             ``mask`` of the same run
    out.ome.zarr/1/ ...      level l: ceil(H / 2^l) x ceil(W / 2^l), each pixel the mode of
                             a 2x2 window of level l - 1 (:func:`mode_downsample2`), down
                             to the first level that fits in one chunk

Blocks go to a scratch block store while the run goes (as for a GeoTIFF:
``.<name>.partial-<key>.scratch.zarr``, resumable); ``finalize`` builds the pyramid in a
hidden ``.<name>.partial-<token>.pyramid`` directory (level 0: the store's chunk files
copied; each coarser level computed chunk by chunk from the level above it, so memory is
bounded by one 2x2 block window per thread, never by the raster), writes the completion
record last and renames the directory into place (:func:`~tilesegment.write.atomic.
publish`: an old output is replaced in one step, and only with ``overwrite``).

By default the label image is the root of the container: napari (napari-ome-zarr) opens it
as a labels layer scaled in physical units, to lay over the image opened beside it. With
:attr:`OmeZarrOutput.image` set (``--ome-zarr-image copy``) the root is instead the input's
image (its levels from the one the run read, ``(c, y, x)``) and the pyramid above goes to
``labels/mask`` (``labels/zarr.json`` lists it; the output metadata names it under
:data:`~tilesegment.write.layout.LABELS_KEY`). See docs/design.md, "OME-Zarr labels".
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tilesegment.errors import InputError, OutputError
from tilesegment.write import atomic, guard, layout
from tilesegment.write.base import Output
from tilesegment.write.meta import OutputMeta, meta_to_attrs
from tilesegment.write.zarr_output import _CONFIG, BlockStore, _compressor

if TYPE_CHECKING:
    from tilesegment.read.base import Raster

NGFF_VERSION = "0.5"
"""The OME-Zarr (NGFF) version written: 0.5 is the one on Zarr v3."""

PYRAMID_SUFFIX = layout.PYRAMID_SUFFIX
LABELS_DIR, LABELS_PATH, LABELS_KEY = layout.LABELS_DIR, layout.LABELS_PATH, layout.LABELS_KEY

NGFF_UNITS = {"um": "micrometer", "µm": "micrometer", "μm": "micrometer", "nm": "nanometer",
              "mm": "millimeter", "cm": "centimeter", "m": "meter", "km": "kilometer",
              "ft": "foot"}
"""Georef units → the UDUNITS-2 names NGFF axes take (others, degrees or US survey feet,
are left out of the axes; the CRS stays in the ``tilesegment`` attributes)."""

MODE_THREADS = 4
"""Chunks of a pyramid level computed at once (memory: this many 2x2 block windows)."""


def mode_downsample2(src: np.ndarray) -> np.ndarray:
    """The 2x2 mode of ``src`` ``(h, w)`` integers: ``(ceil(h/2), ceil(w/2))``, same dtype.

    Each output pixel is the most frequent value of its 2x2 window; a tie goes to the lowest
    value (so a class beats nodata, the dtype's maximum, at two against two). Windows cut
    by an odd edge count only their own pixels: the edge row/column is repeated, which
    doubles every count of that window alike and so changes no mode.
    """
    if src.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"mode_downsample2 takes uint8/uint16 class ids, got {src.dtype}")
    h, w = src.shape
    if h == 0 or w == 0:
        return src[: (h + 1) // 2, : (w + 1) // 2].copy()
    padded = src if not (h % 2 or w % 2) else np.pad(src, ((0, h % 2), (0, w % 2)), "edge")
    a, b, c, d = (padded[0::2, 0::2], padded[0::2, 1::2], padded[1::2, 0::2],
                  padded[1::2, 1::2])
    small = src.dtype == np.uint8
    kind, shift, top = (np.uint16, 8, 255) if small else (np.uint32, 16, 65535)
    ab, ac, ad, bc, bd, cd = a == b, a == c, a == d, b == c, b == d, c == d

    def key(value: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        # the other pixels equal to this one, then the lower value: one integer to compare
        votes = x.astype(kind)
        votes += y
        votes += z
        votes <<= shift
        votes |= top - value
        return votes

    best = key(a, ab, ac, ad)
    out = a.copy()
    for value, votes in ((b, key(b, ab, bc, bd)), (c, key(c, ac, bc, cd)),
                         (d, key(d, ad, bd, cd))):
        np.copyto(out, value, where=votes > best)
        np.maximum(best, votes, out=best)
    return out


def level_shapes(shape: tuple[int, int], chunk: tuple[int, int]) -> list[tuple[int, int]]:
    """``(H, W)`` of every level: halving (rounding up) until a level fits in one chunk."""
    shapes = [tuple(shape)]
    while shapes[-1][0] > chunk[0] or shapes[-1][1] > chunk[1]:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return [(int(h), int(w)) for h, w in shapes]


def base_pixel_size(attrs: dict[str, Any]) -> tuple[tuple[float, float], str | None]:
    """The level-0 pixel size ``(y, x)`` and its NGFF unit name (None if not a length),
    from an output's metadata; ``(1, 1)`` pixels when unknown."""
    size = attrs.get("pixel_size")
    transform = attrs.get("transform")
    if size:
        sy, sx = abs(float(size[0])), abs(float(size[1]))
    elif transform:
        sy, sx = abs(float(transform[4])), abs(float(transform[0]))
    else:
        return (1.0, 1.0), None
    if not (sy > 0 and sx > 0):
        return (1.0, 1.0), None
    return (sy, sx), NGFF_UNITS.get(str(attrs.get("unit") or ""))


def ngff_attrs(attrs: dict[str, Any], shapes: list[tuple[int, int]]) -> dict[str, Any]:
    """The ``ome`` attribute (NGFF 0.5) of a label pyramid of ``shapes`` whose output
    metadata is ``attrs``: multiscales with a scale (and, for coarser levels, the
    half-pixel translation that keeps pixel centres aligned) per level, in physical units
    where known, and the ``image-label`` colours (nodata transparent) and class names."""
    (sy, sx), unit = base_pixel_size(attrs)
    axes = [{"name": name, "type": "space", **({"unit": unit} if unit else {})}
            for name in ("y", "x")]
    datasets = []
    for level in range(len(shapes)):
        factor = 2 ** level
        transforms: list[dict[str, Any]] = [
            {"type": "scale", "scale": [sy * factor, sx * factor]}]
        if level:
            shift = (factor - 1) / 2
            transforms.append({"type": "translation", "translation": [sy * shift, sx * shift]})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    names = list(attrs.get("class_names") or [])
    colors = [list(c) for c in attrs.get("class_colors") or []]
    nodata = int(attrs["nodata"])
    label_colors = [{"label-value": i, "rgba": [*rgb, 255]} for i, rgb in enumerate(colors)]
    label_colors.append({"label-value": nodata, "rgba": [0, 0, 0, 0]})
    properties = [{"label-value": i, "class": name} for i, name in enumerate(names)]
    properties.append({"label-value": nodata, "class": "nodata"})
    return {
        "version": NGFF_VERSION,
        "multiscales": [{
            "name": layout.MASK,
            "axes": axes,
            "datasets": datasets,
            "type": "mode (2x2, ties to the lowest class id)",
            "metadata": {"method": "tilesegment.write.ome_zarr_output.mode_downsample2"},
        }],
        "image-label": {"colors": label_colors, "properties": properties},
    }


class OmeZarrOutput(Output):
    """An OME-Zarr (NGFF 0.5) label pyramid of the mask; see the module docstring."""

    kind = "ome-zarr"
    extensions = (".ome.zarr",)
    layers = (layout.MASK,)

    @classmethod
    def check_replaceable(cls, final: Path, *, overwrite: bool) -> None:
        guard.check_replaceable_directory(final, overwrite=overwrite, foreign_of=foreign)

    @classmethod
    def holds(cls, path: Path) -> bool:
        """A directory whose group carries NGFF ``multiscales`` and tilesegment metadata
        (an unfinished run's scratch store is a plain Zarr output's: ZarrOutput reads it)."""
        attrs = _group_attrs(path)
        return attrs is not None and isinstance(attrs.get("ome"), dict) \
            and layout.ZARR_ATTRS_KEY in attrs

    @classmethod
    def read_meta(cls, path: Path) -> dict[str, Any]:
        """The output metadata; ``layer_paths["mask"]`` is the label pyramid's group (the
        container itself, or ``labels/mask`` under a copied image; readers open level 0 of
        it), ``levels`` its level paths."""
        attrs = _group_attrs(path)
        if attrs is None or not isinstance(attrs.get(layout.ZARR_ATTRS_KEY), dict):
            raise InputError(f"{path} is not a tilesegment OME-Zarr output")
        meta = dict(attrs[layout.ZARR_ATTRS_KEY])
        labels = label_root(path, meta)
        label_attrs = attrs if labels == path else (_group_attrs(labels) or {})
        multiscales = (label_attrs.get("ome") or {}).get("multiscales") or [{}]
        datasets = multiscales[0].get("datasets", [])
        return {**meta, "layers": [layout.MASK], "layer_paths": {layout.MASK: str(labels)},
                "levels": [d.get("path") for d in datasets], "path": str(path)}

    @classmethod
    def problems(cls, path: Path, meta: dict[str, Any],
                 completion: dict[str, Any]) -> list[str]:
        """Level 0 checked as a Zarr output's mask (blocks written); each coarser level's
        array present with all its chunks; a copied image's levels present."""
        from tilesegment.write.integrity import _layer_dir_chunks, expected_blocks

        labels = label_root(path, meta)
        problems = []
        bh, bw = meta["block_shape"]
        grid = (math.ceil(meta["shape"][0] / bh), math.ceil(meta["shape"][1] / bw))
        found = {c for c in _layer_dir_chunks(labels / "0") if len(c) == 2}
        expected = expected_blocks(grid, completion)
        recorded = completion.get("blocks_written")
        if expected is None and recorded is not None and len(found) != int(recorded):
            problems.append(f"{len(found)} level-0 blocks on disk, {recorded} recorded")
        lost = sorted((expected or set()) - found)
        if lost:
            problems.append(f"{len(lost)} of {len(expected or ())} written blocks are "
                            f"missing (first: block {list(lost[0])})")
        levels = meta.get("levels") or []
        if len(levels) != int(completion.get("levels", len(levels))):
            problems.append(f"{len(levels)} levels listed, {completion.get('levels')} recorded")
        arrays = [labels / str(name) for name in levels[1:]]
        arrays += [path / str(i) for i in range(int(completion.get("image_levels") or 0))]
        for array in arrays:
            try:
                doc = _read_json(array / layout.ZARR_JSON)
                shape, chunks = doc["shape"], doc["chunk_grid"]["configuration"]["chunk_shape"]
            except (OSError, ValueError, KeyError, TypeError):
                problems.append(f"its array {array.relative_to(path)} is missing or unreadable")
                continue
            want = math.prod(math.ceil(n / c) for n, c in zip(shape, chunks, strict=True))
            have = len(_layer_dir_chunks(array))
            if have != want:
                problems.append(f"its array {array.relative_to(path)} has {have} of {want} "
                                "chunks")
        return problems

    def __init__(self, path: Path, meta: OutputMeta, *, overwrite: bool) -> None:
        super().__init__(path, meta, overwrite=overwrite)
        self.store = BlockStore(layout.block_store_path(path, self.token, scratch=True), meta)
        self.image: Raster | None = None
        """The input to copy into the container as the image the labels belong to (the
        run's raster; its file's levels from the one the run read); None: labels alone."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["image"] = None  # only finalize (in the creating process) reads it
        return state

    @property
    def final_paths(self) -> tuple[Path, ...]:
        return (self.path,)

    def _create(self) -> None:
        attrs = meta_to_attrs(self.meta, kind=self.kind)
        attrs.update(self.store_attrs())
        self.store = BlockStore.create(self.block_store_root(scratch=True), self.meta, attrs)

    def _finalize(self) -> None:
        written = self.store.verified_blocks()
        attrs = self.store.attrs()
        attrs.pop(layout.SETTINGS_KEY, None)  # the store's record, for a refused resume
        completion = self.store.completion(self.run_id, written)
        tmp = layout.partial_path(self.path, self.token, PYRAMID_SUFFIX)
        atomic.remove(tmp)  # a failed earlier finalize of this run
        try:
            import zarr

            zarr.open_group(str(tmp), mode="w-")
            labels = tmp
            if self.image is not None:
                attrs[LABELS_KEY] = LABELS_PATH
                labels = tmp / LABELS_PATH
                zarr.open_group(str(tmp / LABELS_DIR), mode="w-")
                zarr.open_group(str(labels), mode="w-")
            shapes = self._build_labels(labels)
            completion["levels"] = len(shapes)
            image_levels: list[dict[str, Any]] = []
            if self.image is not None:
                image_levels = self._build_image(tmp)
                completion["image_levels"] = len(image_levels)
            _sync_tree(tmp)
            self._write_groups(tmp, {**attrs, layout.COMPLETION_KEY: completion}, shapes,
                               image_levels)
            atomic.publish(tmp, self.path, overwrite=self.overwrite)
        except OSError as exc:
            atomic.remove(tmp)  # the scratch store stays: finalize may be retried
            if isinstance(exc, OutputError):
                raise
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        except BaseException:
            atomic.remove(tmp)
            raise

    def _build_labels(self, root: Path) -> list[tuple[int, int]]:
        """Write every level of the label pyramid under the group ``root`` (its metadata
        comes after); return their shapes."""
        import zarr

        meta = self.meta
        chunk = meta.block_shape
        shapes = level_shapes(meta.shape, chunk)
        group = zarr.open_group(str(root), mode="r+")
        # level 0: the store's mask, chunk files and all (same codec: the same bytes)
        shutil.copytree(layout.zarr_layer_path(self.store.root, layout.MASK), root / "0")
        previous = group["0"]
        for level in range(1, len(shapes)):
            h, w = shapes[level]
            target = group.create_array(
                str(level), shape=(h, w), chunks=(min(chunk[0], h), min(chunk[1], w)),
                dtype=meta.mask_dtype, fill_value=meta.nodata,
                compressors=_compressor(), dimension_names=("y", "x"), config=_CONFIG)
            _downsample_level(previous, target)
            previous = group[str(level)]
        return shapes

    def _build_image(self, root: Path) -> list[dict[str, Any]]:
        """Copy the input's levels (from the one the run read) into arrays ``0``, ``1``,
        ... ``(c, y, x)`` of the group ``root``, chunk by chunk; each level's
        ``{"shape", "pixel_size"}`` (pixel size None when the input has none)."""
        import zarr

        assert self.image is not None
        base = getattr(self.image, "base", self.image)  # a resampled raster: its file
        group = zarr.open_group(str(root), mode="r+")
        chunk = self.meta.block_shape
        levels = []
        for index, number in enumerate(range(base.level, len(base.levels))):
            raster = base.at_level(number)
            bands, h, w = raster.shape
            target = group.create_array(
                str(index), shape=(bands, h, w),
                chunks=(bands, min(chunk[0], h), min(chunk[1], w)), dtype=raster.dtype,
                fill_value=0, compressors=_compressor(), dimension_names=("c", "y", "x"),
                config=_CONFIG)
            _copy_raster(raster, target)
            size = base.levels[number].pixel_size
            levels.append({"shape": (h, w), "pixel_size": size, "bands": bands})
        return levels

    def _write_groups(self, tmp: Path, attrs: dict[str, Any], shapes: list[tuple[int, int]],
                      image_levels: list[dict[str, Any]]) -> None:
        """The groups' attributes (the labels', then the container's with the completion
        record: the last write before the rename)."""
        import zarr

        ome = ngff_attrs(attrs, shapes)
        if image_levels:
            ome["image-label"]["source"] = {"image": "../../"}
            labels = zarr.open_group(str(tmp / LABELS_PATH), mode="r+")
            labels.attrs.update({"ome": ome})
            atomic.fsync_path(tmp / LABELS_PATH / layout.ZARR_JSON)
            group = zarr.open_group(str(tmp / LABELS_DIR), mode="r+")
            group.attrs.update({"ome": {"version": NGFF_VERSION,
                                        "labels": [LABELS_PATH.split("/")[-1]]}})
            atomic.fsync_path(tmp / LABELS_DIR / layout.ZARR_JSON)
            ome = image_attrs(attrs, shapes, image_levels)
        group = zarr.open_group(str(tmp), mode="r+")
        group.attrs.update({"ome": ome, layout.ZARR_ATTRS_KEY: attrs})
        atomic.fsync_path(tmp / layout.ZARR_JSON)


def label_root(path: Path, meta: dict[str, Any]) -> Path:
    """The label pyramid's group in the output at ``path``: the container itself, or
    ``labels/mask`` when the input's image was copied in."""
    sub = meta.get(LABELS_KEY)
    return path / sub if sub == LABELS_PATH else path


def image_attrs(attrs: dict[str, Any], shapes: list[tuple[int, int]],
                levels: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``ome`` attribute of the copied image: multiscales ``(c, y, x)`` whose scales
    put it on the labels' physical grid (each level's own pixel size when the input has
    one, else the labels' pixel size times the size ratio)."""
    (sy, sx), unit = base_pixel_size(attrs)
    mask_h, mask_w = shapes[0]
    axes = [{"name": "c", "type": "channel"},
            *({"name": name, "type": "space", **({"unit": unit} if unit else {})}
              for name in ("y", "x"))]
    datasets = []
    for index, level in enumerate(levels):
        h, w = level["shape"]
        size = level["pixel_size"]
        if size is None or unit is None:
            size = (sy * mask_h / h, sx * mask_w / w)
        datasets.append({"path": str(index), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, float(size[0]), float(size[1])]}]})
    return {"version": NGFF_VERSION,
            "multiscales": [{"name": "image", "axes": axes, "datasets": datasets}]}


def foreign(path: Path) -> list[str]:
    """Entries of an OME-Zarr output directory a tilesegment writer did not make: anything
    but ``zarr.json``, numbered level arrays and ``labels/`` (``zarr.json`` and the
    ``mask`` pyramid, itself ``zarr.json`` and numbered level arrays)."""
    found: list[str] = []

    def group(folder: Path, prefix: str, children: dict[str, Any]) -> None:
        for entry in sorted(folder.iterdir()):
            name = entry.name
            if entry.is_symlink():
                found.append(prefix + name)
            elif name == layout.ZARR_JSON and entry.is_file():
                continue
            elif entry.is_dir() and name.isdigit():
                found.extend(f"{prefix}{name}/{x}" for x in guard.array_foreign(entry))
            elif entry.is_dir() and name in children:
                group(entry, f"{prefix}{name}/", children[name])
            else:
                found.append(prefix + name + ("/" if entry.is_dir() else ""))

    group(path, "", {LABELS_DIR: {LABELS_PATH.split("/")[-1]: {}}})
    return found


def _copy_raster(raster: Raster, dst: Any) -> None:
    """Fill the zarr array ``dst`` ``(c, H, W)`` with ``raster``, one chunk per task."""
    _, ch, cw = dst.chunks
    _, h, w = dst.shape

    def one(corner: tuple[int, int]) -> None:
        r0, c0 = corner
        r1, c1 = min(r0 + ch, h), min(c0 + cw, w)
        dst[:, r0:r1, c0:c1] = raster.read((r0, r1, c0, c1))

    corners = [(r, c) for r in range(0, h, ch) for c in range(0, w, cw)]
    with ThreadPoolExecutor(min(MODE_THREADS, os.cpu_count() or 1)) as pool:
        list(pool.map(one, corners))


def _downsample_level(src: Any, dst: Any) -> None:
    """Fill the zarr array ``dst`` chunk by chunk with the 2x2 mode of ``src`` (the level
    above); each task reads only the ``2h x 2w`` window under its chunk."""
    ch, cw = dst.chunks
    h, w = dst.shape

    def one(corner: tuple[int, int]) -> None:
        r0, c0 = corner
        r1, c1 = min(r0 + ch, h), min(c0 + cw, w)
        window = np.asarray(src[2 * r0:2 * r1, 2 * c0:2 * c1])
        dst[r0:r1, c0:c1] = mode_downsample2(window)[: r1 - r0, : c1 - c0]

    corners = [(r, c) for r in range(0, h, ch) for c in range(0, w, cw)]
    with ThreadPoolExecutor(min(MODE_THREADS, os.cpu_count() or 1)) as pool:
        list(pool.map(one, corners))


def _sync_tree(root: Path) -> None:
    """``fsync`` every file and directory under ``root``."""
    for folder, _, names in os.walk(root):
        for name in names:
            atomic.fsync_path(Path(folder) / name)
        with contextlib.suppress(OSError):  # some filesystems refuse a directory fsync
            atomic.fsync_path(Path(folder))


def _read_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def _group_attrs(path: Path) -> dict[str, Any] | None:
    """The attributes of the Zarr v3 group at ``path`` (None when it is not one)."""
    try:
        doc = _read_json(path / layout.ZARR_JSON)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        return None
    attrs = doc.get("attributes")
    return attrs if isinstance(attrs, dict) else None
