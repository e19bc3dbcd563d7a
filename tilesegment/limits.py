"""Resource limits checked before any pixel is read and before any model is built.

Pure arithmetic on sizes (no I/O library, no torch): the number of block tasks, the number
of classes a mask can hold, and an estimate of the memory one block task needs, compared
with the memory this machine has available (psutil when installed, else ``/proc/meminfo``,
else ``os.sysconf``; the smaller of that and a cgroup v2 ``memory.max``).
``TILESEGMENT_MEMORY_LIMIT`` (bytes, or with a unit: ``8G``, ``512M``) replaces the detected
figure, lower or higher: for a shared machine, or when the estimate is known to be too high.

The estimate is deliberately simple and names its parts: the raw and normalised canvas a
block reads (with its halo), the stacked tiles of one batch, the model outputs of the batch,
the model's working memory for one call (on the CPU only: on a GPU it lives in device
memory), the block's stitched logits and their softmax, and (``output=None``) the whole
result array. Per-model working memory was measured as the peak resident-set growth of one
CPU forward pass per input pixel (float32, channels-last, one thread).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

from tilesegment.errors import LimitError

MAX_BLOCKS = 1_000_000
"""Most block tasks one run may have (a Dask graph beyond that costs more than it computes)."""

MAX_CLASSES = 65535
"""Most classes a mask can hold: uint16 ids 0…65534, with 65535 kept for nodata."""

MEMORY_ENV = "TILESEGMENT_MEMORY_LIMIT"

WORKING_BYTES_PER_PIXEL: dict[str, float] = {
    "identity": 0.0,
    "unet-tiny": 240.0,
    "nuclei": 240.0,  # unet-tiny with trained weights
    "unet-small": 530.0,
    "unet": 2140.0,
    "unet-valid-tiny": 255.0,
    "unet-valid": 1410.0,
    "deeplab-largefov": 512.0,
    "landcover-landsat7": 512.0,  # a narrow deeplab-largefov: the full width's, an upper bound
    "fcn32s": 360.0,
    "fcn16s": 320.0,
    "fcn8s": 350.0,
    "fcn_resnet50": 370.0,
    "fcn_resnet101": 400.0,
    "deeplabv3_resnet50": 472.0,
    "deeplabv3_resnet101": 736.0,
    "deeplabv3_mobilenet_v3_large": 187.0,
    "lraspp_mobilenet_v3_large": 246.0,
    # Estimated from each net's peak RSS growth over one 512-px pass relative to that of a
    # listed sibling measured the same way (fcn*, deeplab-largefov): the -bn FCNs +8 %,
    # the MSc heads +0 %; the ResNet U-Nets scaled as deeplab-largefov (the larger figure).
    "unet-resnet18": 480.0,
    "unet-resnet34": 470.0,
    "unet-resnet50": 600.0,
    "fcn32s-bn": 390.0,
    "fcn16s-bn": 350.0,
    "fcn8s-bn": 380.0,
    "deeplab-largefov-msc": 512.0,
}
"""Peak extra memory of one CPU forward pass, bytes per input pixel of a tile, measured at
tiles of 512 (and 1024 for the U-Nets; the larger figure kept)."""

DEFAULT_WORKING_BYTES = 64.0
"""Assumed for models not in :data:`WORKING_BYTES_PER_PIXEL` (16 float32 values per pixel,
below every measured network)."""

GIB = 1 << 30
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def format_bytes(n: float) -> str:
    """``n`` bytes as ``"12.3 GiB"`` (or MiB/KiB)."""
    for unit, size in (("TiB", 1 << 40), ("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def parse_bytes(text: str) -> int:
    """``"8G"``, ``"512 MiB"``, ``"1000000"`` → bytes; :class:`LimitError` if unreadable."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:I?B)?\s*", str(text).upper())
    if not match:
        raise LimitError(f"{MEMORY_ENV}={text!r}: give bytes, or a number with K, M, G or T")
    value = float(match.group(1)) * _UNITS[match.group(2)]
    if value < 1:
        raise LimitError(f"{MEMORY_ENV}={text!r}: must be positive")
    return int(value)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    """What a cgroup v2 ``memory.max`` leaves (``None`` without one or when unlimited)."""
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as fh:
            limit = fh.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as fh:
            used = int(fh.read().strip())
        return max(int(limit) - used, 0)
    except (OSError, ValueError):
        return None


def available_memory() -> tuple[int, str]:
    """Bytes of memory this process can still use, and where the figure comes from."""
    found: tuple[int, str] | None = None
    try:
        import psutil

        found = int(psutil.virtual_memory().available), "available memory (psutil)"
    except ImportError:
        value = _meminfo_available()
        if value is not None:
            found = value, "MemAvailable in /proc/meminfo"
        else:
            try:
                pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
                found = int(pages), "free physical memory (sysconf)"
            except (ValueError, OSError, AttributeError):
                found = None
    cgroup = _cgroup_available()
    if cgroup is not None and (found is None or cgroup < found[0]):
        found = cgroup, "the cgroup memory limit"
    return found if found is not None else (1 << 62, "unknown (no limit applied)")


def memory_limit() -> tuple[int, str]:
    """The memory a run may use: ``TILESEGMENT_MEMORY_LIMIT`` if set, else what is available."""
    text = os.environ.get(MEMORY_ENV)
    if text:
        return parse_bytes(text), MEMORY_ENV
    return available_memory()


@dataclass
class MemoryEstimate:
    """Bytes per part of one block task (``parts``), the number of tasks that run at once,
    and parts held once per run (``shared``: the result array of ``output=None``)."""

    parts: dict[str, float] = field(default_factory=dict)
    concurrent: int = 1
    shared: dict[str, float] = field(default_factory=dict)

    @property
    def per_task(self) -> float:
        return sum(self.parts.values())

    @property
    def total(self) -> float:
        return self.per_task * self.concurrent + sum(self.shared.values())

    def largest(self) -> str:
        everything = {**self.parts, **self.shared}
        return max(everything, key=everything.__getitem__)

    def describe(self) -> str:
        """``"model working memory 64.0 GiB, tiles 2.0 GiB, …"``, largest first."""
        items = sorted({**self.parts, **self.shared}.items(), key=lambda kv: -kv[1])
        return ", ".join(f"{name} {format_bytes(size)}" for name, size in items if size > 0)


def working_bytes(model_name: str | None) -> float:
    """Measured working memory of ``model_name`` per input pixel (a default if unknown)."""
    return WORKING_BYTES_PER_PIXEL.get(model_name or "", DEFAULT_WORKING_BYTES)


def canvas_side(block: int, core: int, tile: int, reach: int, n_tiles: int) -> int:
    """Upper bound of the canvas a block of side ``block`` reads along one axis: the tiles
    whose used output (core plus ``reach``) touches it, at worst alignment."""
    n = min(-(-(block + 2 * reach) // core) + 1, max(n_tiles, 1))
    return (n - 1) * core + tile


def block_task_memory(*, bands: int, itemsize: int, classes: int, tile: int, out_side: int,
                      core: int, reach: int, block: tuple[int, int], grid: tuple[int, int],
                      batch: int, model_name: str | None, on_gpu: bool,
                      probabilities: bool, gaussian: bool, crf_reach: int = 0,
                      concurrent: int = 1, result_bytes: float = 0.0,
                      passes: int = 1) -> MemoryEstimate:
    """Estimate the memory of one block task (see the module docstring for the parts).

    ``block`` ``(h, w)``; ``grid`` the number of tile rows and columns of the raster;
    ``reach`` how far a tile's used output passes its core (0 under crop); ``crf_reach`` the
    CRF's halo (0 without the CRF), which widens what a block stitches. ``passes``: model
    inputs per tile under test-time augmentation (all in one CPU call).
    """
    bh, bw = block[0] + 2 * crf_reach, block[1] + 2 * crf_reach
    span_h = canvas_side(bh, core, tile, reach, grid[0])
    span_w = canvas_side(bw, core, tile, reach, grid[1])
    tiles_per_block = (-(-(bh + 2 * reach) // core) + 1) * (-(-(bw + 2 * reach) // core) + 1)
    n = max(1, min(batch, tiles_per_block, grid[0] * grid[1]))
    call = n if on_gpu else max(1, passes)
    canvas_px = span_h * span_w
    f4 = 4.0
    parts = {
        "canvas": bands * canvas_px * (2 * itemsize + 1 + f4),  # raw (+ padded copy), missing
        "tiles": n * bands * tile * tile * f4,
        "model outputs": n * classes * out_side * out_side * f4,
        "model call": (0.0 if on_gpu else call * (bands * tile * tile * f4
                                                   + classes * out_side * out_side * f4)),
        "model working memory": 0.0 if on_gpu else call * tile * tile * working_bytes(
            model_name),
        "block logits": classes * bh * bw * f4 * (2 if probabilities or crf_reach else 1)
        + (bh * bw * 9.0 if gaussian else 0.0),
    }
    if crf_reach:
        parts["CRF"] = 4 * classes * bh * bw * f4
    shared = {"result array": float(result_bytes)} if result_bytes else {}
    return MemoryEstimate(parts, max(1, concurrent), shared)


def check_memory(estimate: MemoryEstimate, what: str) -> None:
    """:class:`LimitError` when ``estimate`` exceeds :func:`memory_limit`; ``what`` names the
    settings (``"tile 16384, batch 8, block 1024 × 1024"``)."""
    limit, source = memory_limit()
    if estimate.total <= limit:
        return
    per_task = estimate.per_task
    concurrent = estimate.concurrent
    if concurrent > 1 and per_task + sum(estimate.shared.values()) <= limit:
        fit = int((limit - sum(estimate.shared.values())) // per_task)
        advice = f"run fewer block tasks at once (--workers {max(fit, 1)})"
        where = f"{concurrent} block tasks at once, each about {format_bytes(per_task)}"
    else:
        advice = _advice(estimate.largest())
        where = estimate.describe()
    raise LimitError(
        f"{what} needs about {format_bytes(estimate.total)} of memory ({where}) but "
        f"{format_bytes(limit)} is the limit ({source}): {advice}")


def _advice(part: str) -> str:
    return {
        "model working memory": "use a smaller --tile",
        "model call": "use a smaller --tile or fewer --classes",
        "tiles": "use a smaller --tile or --batch-size",
        "model outputs": "use a smaller --tile, --batch-size or fewer --classes",
        "block logits": "use a smaller --block-size or fewer --classes",
        "CRF": "use a smaller --block-size or fewer --classes",
        "canvas": "use a smaller --tile or --block-size",
        "result array": "write to a file (an output path) instead of returning an array",
    }.get(part, "use smaller settings")


def gpu_driver_present() -> bool:
    """Whether this machine shows a GPU driver (NVIDIA or ROCm device files), so that a
    ``device="auto"`` run may use a GPU; without one, torch finds none either."""
    if os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/kfd"):
        return True
    try:
        return any(name.startswith("nvidia") for name in os.listdir("/dev"))
    except OSError:
        return True  # cannot tell: let torch decide


def check_blocks(shape: tuple[int, int], block: tuple[int, int], core: int,
                 requested: int | None) -> int:
    """The number of block tasks; :class:`LimitError` above :data:`MAX_BLOCKS`, or when a
    requested block side is smaller than the tile core (each tile would then be computed
    for several blocks) while the raster is larger than one block."""
    h, w = shape
    count = math.ceil(h / block[0]) * math.ceil(w / block[1])
    if count > MAX_BLOCKS:
        raise LimitError(
            f"{count:,} block tasks ({math.ceil(h / block[0]):,} × "
            f"{math.ceil(w / block[1]):,} blocks of {block[0]} × {block[1]} px) exceed the "
            f"limit of {MAX_BLOCKS:,}: use a larger --block-size")
    if requested is not None and requested < core and (h > requested or w > requested):
        raise LimitError(
            f"block size {requested} is smaller than the tile core {core} px: every tile "
            f"would be computed for several blocks; use --block-size {core} or more "
            "(or leave it out)")
    return count


def check_classes(classes: int) -> None:
    """:class:`LimitError` when a mask cannot hold ``classes`` ids plus nodata."""
    if classes > MAX_CLASSES:
        raise LimitError(
            f"{classes} classes: a mask holds at most {MAX_CLASSES} (uint16 ids 0–"
            f"{MAX_CLASSES - 1}, {MAX_CLASSES} is nodata)")
