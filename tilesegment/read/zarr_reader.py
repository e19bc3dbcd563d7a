"""Zarr arrays (v2 or v3) and OME-Zarr multiscale groups, read lazily with zarr.

A plain array is ``(H, W)`` or ``(C, H, W)`` (leading singleton axes are dropped). An
OME-Zarr group (``multiscales`` in its attributes, v0.4, or under ``ome``, v0.5) gives one
array per level from ``multiscales[0].datasets``; singleton ``t``/``z`` axes are squeezed
and the pixel size comes from the ``scale`` coordinate transformations. Optional
attributes ``nodata``, ``crs_wkt``, ``transform``, ``pixel_size`` and ``unit`` on a plain
array are honoured.

tilesegment's own OME-Zarr output (``out.ome.zarr``: a label pyramid whose group also holds
the output metadata) opens at the level asked, with the output's nodata and
georeference (a coarser level's pixel size and transform scaled by ``2**level``).

tilesegment's own Zarr output (a group whose ``tilesegment`` attribute holds the output
metadata, see :mod:`tilesegment.write.meta`) opens as its ``mask`` array: one band of class
ids with the output's georeference and nodata. ``<out>.zarr/mask``,
``<out>.zarr/probabilities`` (``(K, H, W)`` float16, nodata NaN) and
``<out>.zarr/disagreement`` (``(H, W)`` uint8, 1 where overlapping tiles disagreed, nodata
255) open one layer each, the georeference again taken from the group.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from tilesegment.read import validate
from tilesegment.read.base import Georef, LevelInfo, Raster, Window, check_window
from tilesegment.read.tiffmeta import UM_PER_UNIT
from tilesegment.write import layout

# tilesegment's own outputs: their layout is owned by tilesegment.write.layout
OUTPUT_KEY = layout.ZARR_ATTRS_KEY
OUTPUT_LAYERS = layout.LAYERS
LAYER_NODATA = layout.LAYER_NODATA


def _open_node(path: Path) -> Any:
    try:
        return zarr.open(str(path), mode="r")
    except FileNotFoundError as exc:
        raise validate.unsupported(path, "file not found") from exc
    except Exception as exc:
        raise validate.unsupported(path, f"not a Zarr array or group ({exc})") from exc


def _multiscales(attrs: dict[str, Any]) -> list[dict[str, Any]] | None:
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        return list(ome["multiscales"])
    return list(attrs["multiscales"]) if "multiscales" in attrs else None


def _axis_names(meta: dict[str, Any], ndim: int) -> list[str]:
    axes = meta.get("axes")
    if axes is None:  # OME-Zarr before v0.3: always tczyx
        return list("tczyx")[-ndim:]
    return [str(ax["name"] if isinstance(ax, dict) else ax).lower() for ax in axes]


def _axis_units(meta: dict[str, Any]) -> dict[str, str | None]:
    return {
        str(ax["name"]).lower(): ax.get("unit")
        for ax in meta.get("axes", []) if isinstance(ax, dict)
    }


def _scale(transforms: list[dict[str, Any]] | None, ndim: int) -> list[float]:
    for item in transforms or []:
        if item.get("type") == "scale" and "scale" in item:
            return [float(v) for v in item["scale"]]
    return [1.0] * ndim


def _six(values: list[Any]) -> tuple[float, float, float, float, float, float]:
    a, b, c, d, e, f = (float(v) for v in values)
    return a, b, c, d, e, f


def _plain_axes(path: Path, shape: tuple[int, ...]) -> list[str]:
    if len(shape) < 2:
        raise validate.unsupported(path, f"a {len(shape)}-D array is not an image")
    lead = shape[:-3] if len(shape) > 3 else ()
    if any(n != 1 for n in lead):
        raise validate.unsupported(
            path, f"array of shape {shape}: expected (H, W) or (C, H, W)"
        )
    return ["t"] * len(lead) + (["c"] if len(shape) >= 3 else []) + ["y", "x"]


def _output_attrs(group: Any) -> dict[str, Any] | None:
    """The ``tilesegment`` attribute of an output group, None for any other group."""
    attrs = group.attrs.get(OUTPUT_KEY) if hasattr(group, "attrs") else None
    return dict(attrs) if isinstance(attrs, dict) else None


def _parent_output_attrs(path: Path) -> dict[str, Any] | None:
    """The output metadata of the group holding the layer array at ``path``, if any."""
    parent = path.parent
    if path.name not in OUTPUT_LAYERS or not (parent / layout.ZARR_JSON).is_file():
        return None
    try:
        group = zarr.open_group(str(parent), mode="r")
    except Exception:
        return None
    return _output_attrs(group)


def _georef(attrs: dict[str, Any]) -> Georef:
    transform = attrs.get("transform")
    size = attrs.get("pixel_size")
    return Georef(
        crs_wkt=attrs.get("crs_wkt"),
        transform=_six(transform) if transform else None,
        pixel_size=(float(size[0]), float(size[1])) if size else None,
        unit=attrs.get("unit"),
    )


class ZarrRaster(Raster):
    """One Zarr array (or one OME-Zarr level) as ``(C, H, W)``."""

    def __init__(self, path: str | Path, level: int = 0) -> None:
        self._root = Path(path)
        self.source = str(path)
        self.kind = "zarr"
        self.nodata = None
        self.output: dict[str, Any] | None = None
        self._local = threading.local()
        node = _open_node(self._root)
        output = None if isinstance(node, zarr.Array) else _output_attrs(node)
        if output is not None and output.get(layout.LABELS_KEY) == layout.LABELS_PATH:
            # an OME-Zarr output holding the input's image too: its mask is the labels
            self._root = self._root / layout.LABELS_PATH
            node = _open_node(self._root)
        if isinstance(node, zarr.Array):
            self._init_plain(node, level)
        elif output is not None and not _multiscales(dict(node.attrs)):
            self._init_output(node, level)
        else:
            self._init_multiscale(node, level)
            if output is not None:
                self._init_output_pyramid(output)
        array = _open_node(self._array_path)
        if not isinstance(array, zarr.Array):
            raise validate.unsupported(self._array_path, "not a Zarr array")
        self._init_layout(array)
        self._local.array = array

    def _init_plain(self, array: zarr.Array, level: int) -> None:
        if level != 0:
            raise validate.unsupported(
                self._root, f"level {level} does not exist: a plain Zarr array has level 0 only"
            )
        self._array_path = self._root
        self._axes = _plain_axes(self._root, array.shape)
        attrs = dict(array.attrs)
        output = _parent_output_attrs(self._root)
        if output is not None:  # one layer of a tilesegment output: the group's georef
            self._set_output(output, self._root.name)
            attrs = {**output, **attrs}
            attrs["nodata"] = self.nodata
        nodata = attrs.get("nodata")
        self.nodata = None if nodata is None else float(nodata)
        self.georef = _georef(attrs)
        self.level = 0
        height, width = array.shape[-2:]
        self.levels = (LevelInfo((int(height), int(width)), self.georef.pixel_size),)

    def _set_output(self, attrs: dict[str, Any], layer: str) -> None:
        self.output = {
            "layer": layer,
            "num_classes": attrs.get("num_classes"),
            "class_names": attrs.get("class_names"),
            "complete": bool((attrs.get(layout.COMPLETION_KEY) or {}).get("complete", False)),
        }
        if isinstance(attrs.get("layers"), list):
            self.output["layers"] = list(attrs["layers"])
        # pixels never written: the mask's nodata id; NaN in the probabilities; 255 in the
        # disagreement layer
        if layer in LAYER_NODATA:
            self.nodata = LAYER_NODATA[layer]
        elif attrs.get("nodata") is not None:
            self.nodata = float(attrs["nodata"])

    def _init_output(self, group: Any, level: int) -> None:
        """A tilesegment output group: its ``mask`` array, georeferenced from the group."""
        if level != 0:
            raise validate.unsupported(
                self._root, f"level {level} does not exist: a tilesegment output has level 0 only"
            )
        if layout.MASK not in group:
            raise validate.unsupported(self._root,
                                       f"tilesegment output without a {layout.MASK!r} array")
        attrs = _output_attrs(group) or {}
        self._array_path = layout.zarr_layer_path(self._root, layout.MASK)
        self._axes = ["y", "x"]
        self._set_output(attrs, layout.MASK)
        self.georef = _georef(attrs)
        self.level = 0
        shape = attrs.get("shape")
        if shape is None:
            shape = group[layout.MASK].shape
        self.levels = (LevelInfo((int(shape[0]), int(shape[1])), self.georef.pixel_size),)

    def _init_output_pyramid(self, attrs: dict[str, Any]) -> None:
        """A tilesegment OME-Zarr output (a label pyramid): class ids with the output's
        nodata, and its georeference, each level's pixel 2^level times the base one."""
        self._set_output(attrs, layout.MASK)
        base = _georef(attrs)
        factor = 2.0 ** self.level
        transform = base.transform
        if transform is not None and self.level:
            a, b, c, d, e, f = transform
            transform = (a * factor, b * factor, c, d * factor, e * factor, f)
        size = base.pixel_size
        if size is not None:
            size = (size[0] * factor, size[1] * factor)
        self.georef = Georef(crs_wkt=base.crs_wkt, transform=transform, pixel_size=size,
                             unit=base.unit)
        self.levels = tuple(
            LevelInfo(info.shape, None if base.pixel_size is None else
                      (base.pixel_size[0] * 2.0**i, base.pixel_size[1] * 2.0**i))
            for i, info in enumerate(self.levels))

    def _init_multiscale(self, group: Any, level: int) -> None:
        multiscales = _multiscales(dict(group.attrs))
        if not multiscales:
            raise validate.unsupported(
                self._root,
                "Zarr group without OME-Zarr multiscales metadata: open one of its arrays",
            )
        meta = multiscales[0]
        datasets = meta.get("datasets", [])
        if not 0 <= level < len(datasets):
            raise validate.unsupported(
                self._root,
                f"level {level} does not exist: the OME-Zarr has {len(datasets)} level(s), "
                f"0 to {len(datasets) - 1}",
            )
        global_scale = _scale(meta.get("coordinateTransformations"), 0)
        units = _axis_units(meta)
        uy, ux = (UM_PER_UNIT.get(str(units.get(ax) or "").lower()) for ax in ("y", "x"))
        fy, fx = (uy, ux) if uy is not None and ux is not None else (1.0, 1.0)
        infos = []
        for item in datasets:
            array = _open_node(self._root / item["path"])
            axes = _axis_names(meta, array.ndim)
            if "y" not in axes or "x" not in axes or len(axes) != array.ndim:
                raise validate.unsupported(
                    self._root, f"OME-Zarr axes {axes} do not match an image of {array.ndim}-D"
                )
            scale = _scale(item.get("coordinateTransformations"), array.ndim)
            if len(global_scale) == len(scale):
                scale = [s * g for s, g in zip(scale, global_scale, strict=True)]
            iy, ix = axes.index("y"), axes.index("x")
            size = (scale[iy] * fy, scale[ix] * fx)
            infos.append(LevelInfo((array.shape[iy], array.shape[ix]), size))
            if len(infos) - 1 == level:
                self._axes = axes
        self.levels = tuple(infos)
        self.level = level
        self._array_path = self._root / datasets[level]["path"]
        unit = "um" if uy is not None and ux is not None else None
        self.georef = Georef(pixel_size=self.levels[level].pixel_size, unit=unit)

    def _init_layout(self, array: zarr.Array) -> None:
        axes, shape = self._axes, array.shape
        extra = [(ax, n) for ax, n in zip(axes, shape, strict=True)
                 if ax not in ("c", "y", "x") and n != 1]
        if extra:
            raise validate.unsupported(
                self._array_path,
                f"axes {', '.join(f'{a}={n}' for a, n in extra)} must have length 1 "
                "(only 2-D images with channels are supported)",
            )
        iy, ix = axes.index("y"), axes.index("x")
        bands = shape[axes.index("c")] if "c" in axes else 1
        self.shape = (int(bands), int(shape[iy]), int(shape[ix]))
        self.dtype = np.dtype(array.dtype)
        self.block_shape = (int(array.chunks[iy]), int(array.chunks[ix]))
        self.compression = ", ".join(type(c).__name__ for c in array.compressors) or "none"
        self.zarr_format = int(array.metadata.zarr_format)

    def _array(self) -> zarr.Array:
        array = getattr(self._local, "array", None)
        if array is None:
            array = _open_node(self._array_path)
            self._local.array = array
        return array

    def at_level(self, level: int) -> Raster:
        """The same file opened at pyramid ``level``."""
        return self if level == self.level else ZarrRaster(self.source, level)

    def read(self, window: Window) -> np.ndarray:
        """Read ``window`` as ``(C, h, w)`` of :attr:`dtype`."""
        r0, r1, c0, c1 = check_window(self, window)
        index: list[Any] = []
        kept: list[str] = []
        for ax in self._axes:
            if ax == "y":
                index.append(slice(r0, r1))
            elif ax == "x":
                index.append(slice(c0, c1))
            elif ax == "c":
                index.append(slice(None))
            else:
                index.append(0)
                continue
            kept.append(ax)
        try:
            data = np.asarray(self._array()[tuple(index)])
        except Exception as exc:
            raise validate.damaged(
                self._array_path,
                f"cannot read window rows {r0}:{r1}, cols {c0}:{c1} "
                f"({type(exc).__name__}: {exc})",
            ) from exc
        if "c" not in kept:
            data = data[np.newaxis]
            kept.insert(0, "c")
        order = [kept.index(ax) for ax in ("c", "y", "x")]
        return np.ascontiguousarray(data.transpose(order))

    def describe(self) -> dict[str, Any]:
        """Base metadata plus ``compression`` (codec names) and ``zarr_format``."""
        info = super().describe()
        info.update(compression=self.compression, zarr_format=self.zarr_format)
        if self.output is not None:
            info["output"] = dict(self.output)
        return info
