"""Comparing coordinate reference systems given as WKT (rasterio/GDAL do the parsing)."""

from __future__ import annotations


def crs_name(wkt: str) -> str:
    """A short name for a CRS: ``EPSG:32119 (NAD83 / North Carolina)`` where known."""
    from rasterio.crs import CRS

    crs = CRS.from_wkt(wkt)
    name = wkt.split('"')[1] if '"' in wkt else "unnamed"
    code = crs.to_epsg()
    return f"EPSG:{code} ({name})" if code else name


def compare_crs(wkt_a: str | None, wkt_b: str | None) -> str:
    """``"same"`` (identical WKT or the same EPSG code), ``"alias"`` (GDAL finds them
    equivalent although they are named differently, e.g. EPSG:32119 and EPSG:3358),
    ``"different"``, ``"none"`` (neither has a CRS) or ``"missing"`` (only one has)."""
    if wkt_a is None and wkt_b is None:
        return "none"
    if wkt_a is None or wkt_b is None:
        return "missing"
    from rasterio.crs import CRS

    a, b = CRS.from_wkt(wkt_a), CRS.from_wkt(wkt_b)
    if a.to_wkt() == b.to_wkt():
        return "same"
    code_a, code_b = a.to_epsg(), b.to_epsg()
    if code_a is not None and code_a == code_b:
        return "same"
    return "alias" if a == b else "different"
