"""The run plan: one frozen dataclass tree holding every setting that shapes a run.

:func:`tilesegment.plan.build_plan` makes it (checking everything that can be checked
without reading a pixel or building a model); ``segment()`` executes it; ``tilesegment
plan`` prints it. Sections: :class:`SourcePlan`, :class:`ModelPlan`, :class:`GeometryPlan`,
:class:`NormalizationPlan`, :class:`CRFPlan` (or ``None``), :class:`OutputPlan`,
:class:`ExecutionPlan`. Values are plain (tuples, not lists; no dicts of settings); the
few live objects a run needs (the opened raster, the model's spec and resolved module) ride
along in fields left out of comparison and ``repr``. ``fingerprint`` is the hex sha256 of
what changes output bytes (:mod:`tilesegment.plan.fingerprint`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tilesegment.grid import TileSpec

HALO_REASONS = ("seamless default", "given", "checkpoint card",
                "checkpoint card, moved onto the pooling grid")
"""Why a plan's halo is what it is (:attr:`GeometryPlan.halo_reason`)."""


@dataclass(frozen=True)
class SourcePlan:
    """The input: ``description`` (absolute path, or ``<numpy array 3×H×W uint8>``), the
    reader's ``kind``, ``shape`` ``(C, H, W)`` at the chosen ``level`` (resampled to ``mpp``
    when asked), ``dtype``, ``nodata``; ``identity`` names its content for the fingerprint
    (a file's real path, size and mtime; an array's sha256 or Dask token)."""

    description: str
    kind: str
    shape: tuple[int, int, int]
    dtype: str
    level: int
    mpp: float | None
    nodata: float | None
    identity: str
    raster: Any = field(default=None, compare=False, repr=False)
    """The opened :class:`~tilesegment.read.base.Raster` (metadata only)."""

    @property
    def bands(self) -> int:
        return self.shape[0]

    @property
    def height(self) -> int:
        return self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[2]


@dataclass(frozen=True)
class ModelPlan:
    """The model: ``reference`` as given (registered name, checkpoint or TorchScript path,
    ``package.module:function``, or ``<module ClassName>``), its ``kind``, the spec's
    ``name``, weights and backbone weights (absolute paths and sha256), ``classes``,
    ``channels``, ``class_names``, ``seed`` (meaningful only with ``random_weights``) and
    ``content_key`` (:func:`tilesegment.workers.content_key`: the same model gives the same
    key in any run, process or machine)."""

    reference: str
    kind: str
    name: str
    classes: int
    channels: int
    class_names: tuple[str, ...]
    weights: str | None
    weights_sha256: str | None
    backbone_weights: str | None
    backbone_weights_sha256: str | None
    seed: int
    random_weights: bool
    content_key: str
    spec: Any = field(default=None, compare=False, repr=False)
    """The :class:`~tilesegment.models.spec.ModelSpec`."""
    resolved: Any = field(default=None, compare=False, repr=False)
    """The :class:`~tilesegment.models.custom.ResolvedModel`; ``None`` in a plan built
    without resolving the model (``tilesegment plan`` with a registered name or a
    checkpoint card: nothing built, torch not needed)."""
    module: Any = field(default=None, compare=False, repr=False)
    """A module object the caller gave (``segment(model=module)``), else ``None``."""


@dataclass(frozen=True)
class GeometryPlan:
    """How the raster is cut: ``tile`` side, ``halo`` and why (:data:`HALO_REASONS`), the
    model's ``shrink``, pad mode and value (raw pixel units), ``blend`` and the gaussian
    ``blend_margin`` and weight map ``blend_preset`` (:data:`~tilesegment.grid.
    GAUSSIAN_PRESETS`; the default under ``crop``, where it plays no part)."""

    tile: int
    halo: int
    halo_reason: str
    shrink: int
    pad_mode: str
    pad_value: float
    blend: str
    blend_margin: int
    blend_preset: str = "tilesegment"

    @property
    def spec(self) -> TileSpec:
        return TileSpec(tile=self.tile, halo=self.halo, shrink=self.shrink,
                        pad_mode=self.pad_mode, blend=self.blend,
                        blend_margin=self.blend_margin, blend_preset=self.blend_preset)

    @property
    def blend_name(self) -> str:
        """The blend as spelled on the command line: ``crop``, ``gaussian`` (the default
        weights) or ``gaussian:<preset>``."""
        if self.blend == "gaussian" and self.blend_preset != "tilesegment":
            return f"gaussian:{self.blend_preset}"
        return self.blend

    @property
    def core(self) -> int:
        return self.tile - 2 * self.halo


@dataclass(frozen=True)
class NormalizationPlan:
    """``asked``: what the run was told (``spec``, ``raster``, ``none``, ``explicit``);
    ``mode``: what it means for this model (``fixed``, ``raster``, ``none``); ``mean`` and
    ``std`` per band (float64 values): given or the model's for ``fixed``, filled once
    computed for ``raster`` (``dataclasses.replace`` gives the completed plan)."""

    asked: str
    mode: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    given: Any = field(default=None, compare=False, repr=False)
    """The ``normalization`` argument as given (provenance records it as it was)."""

    @property
    def complete(self) -> bool:
        return self.mode != "raster" or self.mean is not None


@dataclass(frozen=True)
class CRFPlan:
    """The dense CRF: ``params`` (:class:`~tilesegment.models.crf.CRFParams`) and the
    raster's value range for its appearance kernel (``None`` for 8-bit rasters; for others
    per-band ``(lo, hi)`` filled once computed: ``computed`` tells)."""

    params: Any
    value_range: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    computed: bool = False
    given: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class OutputPlan:
    """Where the result goes: ``path`` (absolute) and ``kind`` (``zarr``, ``geotiff``), the
    optional layers, ``cog`` and ``overwrite``; or ``path=None``, ``kind="memory"`` and
    ``returns`` (``mask``, ``probabilities``, ``logits``, ``disagreement``). ``mask_dtype``
    follows the class count; ``inputs`` are the files the output must never touch."""

    path: str | None
    kind: str
    probabilities: bool
    disagreement: bool
    cog: bool
    overwrite: bool
    returns: str
    mask_dtype: str
    inputs: tuple[str, ...] = ()
    given: Any = field(default=None, compare=False, repr=False)
    """The ``output`` argument as given."""
    image: str = "none"
    """``ome_zarr_image``: ``copy`` puts the input's image into an OME-Zarr output, the
    labels under ``labels/mask`` (how the output is laid out, not what is computed: not in
    the fingerprint)."""

    @property
    def layers(self) -> tuple[str, ...]:
        """``mask`` then the optional layers asked for."""
        wanted = (("probabilities", self.probabilities), ("disagreement", self.disagreement))
        return ("mask", *(name for name, asked in wanted if asked))


@dataclass(frozen=True)
class ExecutionPlan:
    """How the blocks run: ``block`` shape ``(h, w)``, ``blocks`` and ``tiles`` counts,
    ``batch_size``, ``device`` as asked and ``device_type`` (``cpu``/``cuda``) where floats
    are computed, ``channels_last``, ``scheduler`` (``threads``, ``synchronous``, an address
    or a Client), ``local``, ``workers``, ``progress``, and the memory one block task needs
    (bytes, from :mod:`tilesegment.limits`); ``tta``: test-time augmentation
    (:data:`~tilesegment.tta.TTA_MODES`)."""

    block: tuple[int, int]
    blocks: int
    tiles: int
    batch_size: int
    device: str
    device_type: str
    channels_last: bool
    scheduler: Any
    local: bool
    workers: int
    progress: bool
    task_memory: float | None = None
    precision: str = "fp32"
    compile: bool = False
    tta: str = "none"


@dataclass(frozen=True)
class TissuePlan:
    """Which tiles a run skips (:mod:`tilesegment.tissue`): ``asked`` (``auto``, ``otsu``,
    ``none``, or ``mask`` for ``--tissue-mask``), ``mode`` it means for this input
    (``otsu``, ``mask`` or ``none``: tiles that are all nodata are skipped in every mode),
    the mask file (absolute path) and its ``identity`` for the fingerprint; ``method``
    names the algorithm. ``skipped`` and ``tiles``: tiles the mask rules out, once the mask
    is computed (``mask``, filled by :func:`~tilesegment.plan.build.complete_plan`)."""

    asked: str
    mode: str
    method: str | None = None
    mask_file: str | None = None
    identity: str | None = None
    skipped: int | None = None
    tiles: int | None = None
    mask: Any = field(default=None, compare=False, repr=False)
    """The :class:`~tilesegment.tissue.TissueMask` once computed."""


@dataclass(frozen=True)
class RunPlan:
    """Every setting of one run, and its :attr:`fingerprint`."""

    source: SourcePlan
    model: ModelPlan
    geometry: GeometryPlan
    normalization: NormalizationPlan
    crf: CRFPlan | None
    output: OutputPlan
    execution: ExecutionPlan
    fingerprint: str = ""
    tissue: TissuePlan = TissuePlan("none", "none")
