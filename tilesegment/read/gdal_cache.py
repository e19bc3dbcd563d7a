"""A bounded GDAL block cache.

GDAL keeps decoded raster blocks in a cache of up to 5 % of RAM by default, so a long run
over a large GeoTIFF grows towards that cap: memory then depends on raster size and machine,
not on block size (measured: +88 % peak RSS from a 4096² to a 16384² raster, +4 % with the
cache at 64 MB; docs/performance.md). Each block task reads its window once, so a small
cache costs nothing. A ``GDAL_CACHEMAX`` the user has set is respected.
"""

from __future__ import annotations

import os

GDAL_CACHE_MB = 64


def cap_gdal_cache() -> None:
    """Set ``GDAL_CACHEMAX`` (MB) before GDAL's cache is first used, unless already set."""
    os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))
