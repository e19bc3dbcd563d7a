"""Metadata of TIFF files read from tags only: georeference test and physical pixel size.

Pixel sizes come back as ``(y, x)`` in micrometres, from (first match wins) the Aperio
``MPP`` in the ImageDescription, OME ``PhysicalSizeY/X``, ImageJ ``unit`` plus resolution,
or the TIFF ``X/YResolution`` with a physical ``ResolutionUnit``.
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from typing import Any

import tifffile
from tifffile.tifffile import svs_description_metadata

#: Tags that mark a GeoTIFF or a raster written by GDAL: read those with rasterio.
GEO_TAGS = frozenset({33550, 33922, 34264, 34735, 42112, 42113})

#: Micrometres per unit for OME / ImageJ unit spellings.
UM_PER_UNIT = {
    "pm": 1e-6, "nm": 1e-3, "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0,
    "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0, "\\u00b5m": 1.0,
    "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6,
    "nanometer": 1e-3,
}

#: Micrometres per ResolutionUnit (2 inch, 3 cm; 4 mm and 5 µm are tifffile extensions).
UM_PER_RESUNIT = {2: 25400.0, 3: 10000.0, 4: 1000.0, 5: 1.0}


def is_slide(tif: tifffile.TiffFile) -> bool:
    """Whether a TIFF is a whole-slide or microscopy file rather than a (Geo)TIFF for GDAL."""
    if (
        tif.is_svs or tif.is_ome or tif.is_ndpi or tif.is_scn or tif.is_philips
        or tif.is_bif or tif.is_imagej
    ):
        return True
    return not GEO_TAGS.intersection(tif.pages.first.tags.keys())


def slide_format(tif: tifffile.TiffFile) -> str:
    """A short name of the slide flavour: ``"svs"``, ``"ome"``, ``"ndpi"``..., ``"tiff"``."""
    for name in ("svs", "ome", "ndpi", "scn", "philips", "bif", "imagej"):
        if getattr(tif, f"is_{name}"):
            return name
    return "tiff"


def _positive(value: Any) -> float | None:
    with contextlib.suppress(TypeError, ValueError):
        number = float(value)
        if number > 0 and number == number:  # not NaN
            return number
    return None


def _svs_pixel_size(tif: tifffile.TiffFile) -> tuple[float, float] | None:
    try:
        meta = svs_description_metadata(tif.pages.first.description)
    except ValueError:
        return None
    mpp = _positive(meta.get("MPP"))
    return (mpp, mpp) if mpp else None


def _ome_pixel_size(tif: tifffile.TiffFile) -> tuple[float, float] | None:
    xml = tif.ome_metadata
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels")), None)
    if pixels is None:
        return None
    sizes = []
    for axis in ("Y", "X"):
        size = _positive(pixels.get(f"PhysicalSize{axis}"))
        factor = UM_PER_UNIT.get(pixels.get(f"PhysicalSize{axis}Unit", "µm").strip())
        if size is None or factor is None:
            return None
        sizes.append(size * factor)
    return sizes[0], sizes[1]


def _resolution_pixel_size(page: Any, um_per_unit: float) -> tuple[float, float] | None:
    sizes = []
    for code in (283, 282):  # YResolution, XResolution
        tag = page.tags.get(code)
        if tag is None:
            return None
        value = tag.value
        resolution = _positive(value[0] / value[1] if value[1] else 0) if isinstance(
            value, tuple
        ) else _positive(value)
        if resolution is None:
            return None
        sizes.append(um_per_unit / resolution)
    return sizes[0], sizes[1]


def pixel_size_um(tif: tifffile.TiffFile) -> tuple[float, float] | None:
    """The level-0 pixel size ``(y, x)`` in µm, or ``None`` when the file does not say."""
    if tif.is_svs and (size := _svs_pixel_size(tif)):
        return size
    if tif.is_ome and (size := _ome_pixel_size(tif)):
        return size
    page = tif.series[0].levels[0].keyframe
    if tif.is_imagej:
        unit = str((tif.imagej_metadata or {}).get("unit", "")).strip().lower()
        if unit in UM_PER_UNIT:
            return _resolution_pixel_size(page, UM_PER_UNIT[unit])
    unit_tag = page.tags.get(296)
    resunit = int(unit_tag.value) if unit_tag is not None else 2
    if resunit in UM_PER_RESUNIT and page.tags.get(282) is not None:
        return _resolution_pixel_size(page, UM_PER_RESUNIT[resunit])
    return None
