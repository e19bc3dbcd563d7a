"""The on-disk layout of tilesegment outputs: every name, path rule and attribute key.

This module is the only place that spells them; the writers (:mod:`tilesegment.write`),
the readers (:mod:`tilesegment.read.zarr_reader`) and the checks (:mod:`.verify`,
:mod:`.guard`) all take them from here, so a later change of layout (a block store keyed by
the run's fingerprint, say) is made once. It imports nothing heavy (no zarr, rasterio or
torch) and nothing else of the package.

A Zarr output ``out.zarr`` is a Zarr v3 group (``zarr.json``) holding one array per layer
(``out.zarr/mask``, ``out.zarr/probabilities``, ``out.zarr/disagreement``; chunk files
under ``<layer>/c/``), its metadata in the group attribute :data:`ZARR_ATTRS_KEY`, the
completion record under :data:`COMPLETION_KEY` of that metadata.

A GeoTIFF output ``out.tif`` is the mask file plus one sibling per optional layer,
``out.<layer>.tif`` (:func:`sibling_path`), and the GDAL PAM sidecar ``out.tif.aux.xml``
(:func:`pam_path`: the class names and attribute table GIS software shows); each TIFF
carries the metadata as JSON in its :data:`TIFF_ATTRS_TAG` tag and names its layer in
:data:`TIFF_LAYER_TAG`; the mask's completion record lists the siblings.

Temporary names, all hidden siblings of the final path ``<dir>/<name>``:
``.<name>.partial-<token><suffix>`` (what a run writes before publishing), the block
store (:func:`block_store_path`: keyed by the run plan's fingerprint, so a later run of the
same settings can find it), ``.<name>.old-<token>`` (an old output being replaced),
``.<name>.publishing.json`` (the journal of a GeoTIFF set's publication) and
``.<name>.lock`` (the lock a run holds on its output).
"""

from __future__ import annotations

from pathlib import Path

# -- layers -------------------------------------------------------------------------------

MASK = "mask"
PROBABILITIES = "probabilities"
DISAGREEMENT = "disagreement"
LAYERS = (MASK, PROBABILITIES, DISAGREEMENT)
"""Every layer an output may hold, in the order they are listed; the mask is always there."""

DISAGREEMENT_NODATA = 255
"""Value of the ``disagreement`` layer (uint8: 1 disagree, 0 agree) where nothing was written."""

LAYER_NODATA = {PROBABILITIES: float("nan"), DISAGREEMENT: float(DISAGREEMENT_NODATA)}
"""Nodata of the optional layers (the mask's depends on its dtype: in the metadata)."""

# -- metadata -----------------------------------------------------------------------------

FORMAT_NAME = "tilesegment-output"
"""The ``format`` value of an output's metadata."""

COMPLETION_KEY = "completion"
"""Key of the completion record inside an output's metadata."""

ZARR_ATTRS_KEY = "tilesegment"
"""Group attribute of a Zarr output holding its metadata (``meta_to_attrs``)."""

FINGERPRINT_KEY = "fingerprint"
"""Key of the run plan's fingerprint (hex sha256) in an output's (and its block store's)
metadata, when the run was given one."""

WRITER_KEY = "writer"
"""Key of a block store's writer record (``{"pid", "host"}`` of the process that created
it) in its metadata while unfinished; dropped when the store is marked complete."""

SETTINGS_KEY = "settings"
"""Key of a block store's record of the run plan's settings (the fingerprint's inputs as a
flat dict), so that a refused ``--resume`` can say which differ."""

ZARR_JSON = "zarr.json"
"""Metadata document of a Zarr v3 group or array."""

ZARR_CHUNK_DIR = "c"
"""Directory of a Zarr v3 array's chunk files (default chunk key encoding: ``c/i/j``)."""

TIFF_ATTRS_TAG = "TILESEGMENT"
"""GeoTIFF dataset tag holding the JSON of an output's metadata."""

TIFF_LAYER_TAG = "TILESEGMENT_LAYER"
"""GeoTIFF dataset tag naming the layer a file holds (absent: the mask)."""

TIFF_CLASS_NAMES_TAG = "CLASS_NAMES"
TIFF_PROVENANCE_TAG = "PROVENANCE"
TIFF_PRECISION_TAG = "VALUES_PRECISION"
"""Tag of the probabilities GeoTIFF: ``float16`` (its float32 bands hold float16 values)."""

# -- OME-Zarr outputs ----------------------------------------------------------------------

LABELS_DIR = "labels"
LABELS_PATH = "labels/mask"
"""Where an OME-Zarr output's label pyramid goes when the input's image is copied into the
container (the image is then the container's root multiscales)."""

LABELS_KEY = "labels_path"
"""Key of an OME-Zarr output's metadata naming its label pyramid's group (only with a
copied image; without one the container itself is the label pyramid)."""

PYRAMID_SUFFIX = ".pyramid"
"""Suffix of the hidden directory an OME-Zarr ``finalize`` builds the container in
(``.<name>.partial-<token>.pyramid``: never taken for a block store)."""

# -- paths --------------------------------------------------------------------------------

PARTIAL_MARK = ".partial-"
OLD_MARK = ".old-"
JOURNAL_SUFFIX = ".publishing.json"
LOCK_SUFFIX = ".lock"
SCRATCH_SUFFIX = ".scratch.zarr"
"""Suffix of the block store of a GeoTIFF output (made into the TIFFs at the end)."""
STORE_KEY_LENGTH = 16
"""Hex digits of the fingerprint that name a block store (the full one is inside it)."""
_HEX = frozenset("0123456789abcdef")


def zarr_layer_path(root: Path, layer: str) -> Path:
    """``<root>/<layer>``: the array of ``layer`` in the Zarr output (or store) ``root``."""
    return root / layer


def sibling_path(path: Path, layer: str) -> Path:
    """``<dir>/<stem>.<layer><suffix>``: the GeoTIFF of ``layer`` next to the mask ``path``."""
    return path.with_name(f"{path.stem}.{layer}{path.suffix}")


PAM_SUFFIX = ".aux.xml"
"""Suffix of the GDAL PAM sidecar of a GeoTIFF mask (class names, attribute table)."""


def pam_path(path: Path) -> Path:
    """``<dir>/<name>.aux.xml``: the GDAL PAM sidecar GDAL reads with the GeoTIFF ``path``."""
    return path.with_name(path.name + PAM_SUFFIX)


def geotiff_layer_path(path: Path, layer: str) -> Path:
    """The file of ``layer`` in the GeoTIFF output whose mask is ``path``."""
    return path if layer == MASK else sibling_path(path, layer)


def partial_path(final: Path, token: str, suffix: str = "") -> Path:
    """``<dir>/.<name>.partial-<token><suffix>``: a temporary sibling of ``final``."""
    return final.with_name(f".{final.name}{PARTIAL_MARK}{token}{suffix}")


def is_partial_name(name: str) -> bool:
    """Whether ``name`` is a temporary sibling's (``.<name>.partial-...``)."""
    return name.startswith(".") and PARTIAL_MARK in name


def final_of(path: Path) -> Path:
    """The final path a temporary sibling belongs to (``path`` itself for any other)."""
    name = path.name
    if is_partial_name(name):
        return path.with_name(name[1:name.index(PARTIAL_MARK)])
    return path


def is_fingerprint(value: object) -> bool:
    """Whether ``value`` can be a run plan's fingerprint: a hex string of at least
    :data:`STORE_KEY_LENGTH` digits."""
    return (isinstance(value, str) and len(value) >= STORE_KEY_LENGTH
            and set(value.lower()) <= _HEX)


def store_key(fingerprint: str) -> str:
    """The name key of the block store of a run whose plan has ``fingerprint``: its first
    :data:`STORE_KEY_LENGTH` hex digits (lower case)."""
    return fingerprint.lower()[:STORE_KEY_LENGTH]


def block_store_path(final: Path, key: str, *, scratch: bool = False) -> Path:
    """Where the blocks of the output ``final`` are written while the run is unfinished:
    ``.<name>.partial-<key>`` (``<key>.scratch.zarr`` with ``scratch``).

    ``key`` is the run plan's fingerprint (only its first :data:`STORE_KEY_LENGTH` hex
    digits name the store; the full one is recorded inside under
    :data:`FINGERPRINT_KEY`) or, for a run without one, a random token. ``scratch``: the
    store is not the output itself but is made into it at the end (a GeoTIFF), hence a
    distinct suffix.
    """
    return partial_path(final, key[:STORE_KEY_LENGTH], SCRATCH_SUFFIX if scratch else "")


def block_store_key(final: Path, name: str) -> str | None:
    """The key of ``name`` when it is the name of a block store of ``final``
    (``.<name>.partial-<hex>`` or ``.<name>.partial-<hex>.scratch.zarr``), else None."""
    prefix = f".{final.name}{PARTIAL_MARK}"
    if not name.startswith(prefix):
        return None
    key = name[len(prefix):].removesuffix(SCRATCH_SUFFIX)
    if not key or len(key) > STORE_KEY_LENGTH or not set(key) <= _HEX:
        return None
    return key


def staged_tiff_path(final: Path, token: str) -> Path:
    """``<dir>/.<name>.partial-<token>.tif``: a GeoTIFF layer written before publication."""
    return partial_path(final, token, ".tif")


def old_path(final: Path, token: str) -> Path:
    """``<dir>/.<name>.old-<token>``: where an old output waits until the new one is in."""
    return final.with_name(f".{final.name}{OLD_MARK}{token}")


def old_prefix(final: Path) -> str:
    """The name prefix of every ``.old-`` sibling of ``final``."""
    return f".{final.name}{OLD_MARK}"


def journal_path(final: Path) -> Path:
    """``<dir>/.<name>.publishing.json``: the journal of a set publication at ``final``."""
    return final.with_name(f".{final.name}{JOURNAL_SUFFIX}")


def lock_path(final: Path) -> Path:
    """``<dir>/.<name>.lock``: the lock file of the output ``final``."""
    return final.with_name(f".{final.name}{LOCK_SUFFIX}")
