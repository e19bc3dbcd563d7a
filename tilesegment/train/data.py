"""Training data: image/truth pairs read lazily, label rules, regions and the data's fingerprint.

A :class:`Pair` is one image raster and its truth on the same grid, with the window tiles
are drawn from (``train``) and the window validation scores (``val``). Truth values become
class ids as ``evaluate`` reads them (:class:`~tilesegment.evaluation.confusion.LabelRules`:
a value mapping, instance ids → foreground 1, ``ignore_index`` and the truth's nodata left
out). NumPy only: no torch here.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tilesegment.errors import InputError, SettingError
from tilesegment.evaluation.confusion import LabelRules

Window = tuple[int, int, int, int]
IGNORE = -100
"""The label every ignored pixel gets in a training crop (torch's default ignore index)."""


class Labels:
    """A truth raster read as class ids: ``read(window) -> int64 (1, h, w)``.

    Ignored pixels (truth nodata, NaN, ``ignore_index``) are :data:`IGNORE`; a class id
    outside ``[0, num_classes)`` after the rules is an :class:`InputError`.
    """

    def __init__(self, raster: Any, rules: LabelRules) -> None:
        self.raster = raster
        self.rules = rules
        self.height, self.width = raster.height, raster.width
        self.nodata = None

    def read(self, window: Window) -> np.ndarray:
        raw = np.asarray(self.raster.read(window))[0]
        return self.convert(raw)[None]

    def convert(self, raw: np.ndarray) -> np.ndarray:
        """Class ids ``int64 (h, w)`` of truth values ``raw`` (:data:`IGNORE` where left out)."""
        rules = self.rules
        keep = np.ones(raw.shape, dtype=bool)
        if rules.truth_nodata is not None:
            keep &= ~(np.isnan(raw) if np.isnan(rules.truth_nodata) else
                      raw == rules.truth_nodata)
        if np.issubdtype(raw.dtype, np.floating):
            keep &= np.isfinite(raw)
            if not np.array_equal(raw[keep], np.round(raw[keep])):
                raise InputError(f"{self.raster.source}: the truth holds non-integer values; "
                                 "expected class ids")
        if rules.ignore_index is not None:
            keep &= raw != rules.ignore_index
        ids = np.where(keep, raw, 0).astype(np.int64)
        if rules.instances:
            ids = (ids > 0).astype(np.int64)
        if rules.mapping:
            lut = dict(rules.mapping)
            mapped = ids.copy()
            for src, dst in lut.items():
                mapped[ids == src] = dst
            ids = mapped
        k = rules.num_classes
        bad = keep & ((ids < 0) | (ids >= k))
        if bad.any():
            value = int(raw[bad].flat[0])
            raise InputError(
                f"{self.raster.source}: truth value {value} is not a class id in [0, {k}) "
                "(use --classes, --map, --ignore-index or --instances)")
        ids[~keep] = IGNORE
        return ids


@dataclass
class Pair:
    """One training image, its truth, and the windows tiles and validation use.

    ``train``: where every training tile's whole input lies (``None``: the image gives no
    training tile); ``val``: the window validation scores (``None``: none).
    """

    image: Any
    truth: Any
    labels: Labels
    train: Window | None
    val: Window | None
    name: str = ""
    truth_name: str = ""
    stats: dict[str, Any] = field(default_factory=dict)


def label_rules(num_classes: int, ignore_index: int | None, instances: bool,
                mapping: dict[int, int] | None, truth_nodata: float | None) -> LabelRules:
    """The rules ``evaluate`` would apply to this truth (prediction nodata 255)."""
    return LabelRules(num_classes=num_classes, ignore_index=ignore_index,
                      truth_nodata=truth_nodata, pred_nodata=None, instances=instances,
                      mapping=tuple(sorted((mapping or {}).items())))


def check_pair(image: Any, truth: Any) -> None:
    """The truth must be one band on the image's grid (one-line error otherwise)."""
    from tilesegment.evaluation.align import GridMismatchError, check_same_grid

    if truth.bands != 1:
        raise InputError(f"truth {truth.source} has {truth.bands} bands; expected 1 band of "
                         "class ids")
    if image.shape[1:] != truth.shape[1:]:
        raise GridMismatchError(
            f"image {image.source} is {image.height}×{image.width} px but truth "
            f"{truth.source} is {truth.height}×{truth.width} px: a truth must lie on its "
            "image's grid")
    try:
        check_same_grid(image, truth)
    except GridMismatchError as exc:
        raise GridMismatchError(f"image {image.source} and truth {truth.source}: "
                                + str(exc).replace("prediction", "image")) from None


def split_regions(height: int, width: int, val_fraction: float) -> tuple[Window, Window | None]:
    """``(train, val)``: validation is a strip of ``val_fraction`` of the columns at the
    right (at least one), training the rest; ``val_fraction == 0``: no validation."""
    if not 0 <= val_fraction < 1:
        raise SettingError(f"--val-fraction {val_fraction} must lie in [0, 1)")
    if val_fraction == 0:
        return (0, height, 0, width), None
    strip = max(1, round(width * val_fraction))
    if strip >= width:
        raise SettingError(f"--val-fraction {val_fraction} leaves no training columns in an "
                           f"image {width} px wide")
    return (0, height, 0, width - strip), (0, height, width - strip, width)


def scan_labels(labels: Labels, window: Window, num_classes: int, rng: np.random.Generator,
                keep: int = 200_000, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Class pixel counts ``int64 (K,)`` in ``window`` and up to ``keep`` positions
    ``int64 (n, 2)`` (row, col) of non-background (class ≠ 0) pixels, drawn uniformly,
    read block by block."""
    counts = np.zeros(num_classes, np.int64)
    found: list[np.ndarray] = []
    total = 0
    r0, r1, c0, c1 = window
    for y in range(r0, r1, block):
        for x in range(c0, c1, block):
            part = labels.read((y, min(y + block, r1), x, min(x + block, c1)))[0]
            ok = part[part != IGNORE]
            counts += np.bincount(ok, minlength=num_classes)[:num_classes]
            rows, cols = np.nonzero((part != IGNORE) & (part != 0))
            if len(rows):
                found.append(np.stack([rows + y, cols + x], axis=1))
                total += len(rows)
                if total > 4 * keep:  # bound memory: thin what is held so far
                    held = np.concatenate(found)
                    found = [held[rng.choice(len(held), keep, replace=False)]]
                    total = keep
    held = np.concatenate(found) if found else np.zeros((0, 2), np.int64)
    if len(held) > keep:
        held = held[rng.choice(len(held), keep, replace=False)]
    return counts, held


def class_weights(choice: str | tuple[float, ...] | None, counts: np.ndarray) -> np.ndarray | None:
    """Loss weights ``float32 (K,)``: ``auto`` inverse frequency (square-rooted, mean 1,
    absent classes 0), ``none``/``None`` no weighting, or the given values."""
    k = len(counts)
    if choice is None or choice == "none":
        return None
    if choice == "auto":
        freq = counts / max(int(counts.sum()), 1)
        w = np.where(freq > 0, 1.0 / np.sqrt(np.maximum(freq, 1e-12)), 0.0)
        present = w > 0
        if present.any():
            w[present] /= w[present].mean()
        return w.astype(np.float32)
    values = np.asarray(choice, dtype=np.float32)
    if values.shape != (k,) or (values < 0).any():
        raise SettingError(f"--class-weights needs {k} non-negative values, got {list(choice)}")
    return values


def source_digest(raster: Any) -> str:
    """sha256 of a raster's file (every file of a Zarr folder) or of an array's bytes."""
    digest = hashlib.sha256()
    source = getattr(raster, "source", None)
    path = Path(source) if isinstance(source, str) else None
    if path is not None and path.is_file():
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    if path is not None and path.is_dir():
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = Path(root, name)
                digest.update(str(full.relative_to(path)).encode() + b"\0")
                digest.update(full.read_bytes())
        return digest.hexdigest()
    data = np.ascontiguousarray(raster.read((0, raster.height, 0, raster.width)))
    digest.update(f"{data.dtype.str}{data.shape}".encode())
    digest.update(data.tobytes())
    return digest.hexdigest()


def fingerprint(pairs: list[Pair]) -> dict[str, Any]:
    """The training data's identity: each file's sha256 and the windows used, and one
    sha256 over all of it."""
    rows = []
    for p in pairs:
        rows.append({"image": p.name, "image_sha256": source_digest(p.image),
                     "truth": p.truth_name or str(getattr(p.truth, "source", "")),
                     "truth_sha256": source_digest(p.truth),
                     "train_window": None if p.train is None else list(p.train),
                     "val_window": None if p.val is None else list(p.val)})
    text = repr([sorted(r.items()) for r in rows]).encode()
    return {"sha256": hashlib.sha256(text).hexdigest(), "pairs": rows}
