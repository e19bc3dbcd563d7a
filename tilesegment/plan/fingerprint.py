"""A run plan's fingerprint: sha256 of a canonical JSON of what changes the output's bytes.

IN: the input's identity (a file: its real path, size and mtime, so two paths naming one
file agree; a NumPy array: the sha256 of its bytes with shape and dtype; a Dask array: its
``dask.base.tokenize``), level and mpp; the model's content key (architecture, weights
sha256, classes, channels, options, seed of random weights); tile, halo, shrink, pad mode
and value, blend and margin; the normalisation mode with an explicit mean/std; the CRF's
parameters; the tissue mode, its method and the mask file's identity; the output kind,
layers and ``cog`` (or what an in-memory run returns); the
device type computing the floats and, only on CUDA, the batch size and memory format
(cuDNN picks kernels by shape; on the CPU each model call is one tile, see
:mod:`tilesegment.infer`); the precision (``fp32``/``bf16``/``fp16``) and whether the model
is ``torch.compile``'d (its fused kernels round differently); the output format version;
test-time augmentation and the gaussian weight preset (each only when not the default, so
that runs without them keep their fingerprints).

OUT: block size, workers, scheduler, progress, overwrite, the output path, the names used
for paths. No torch, no pixel read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

FINGERPRINT_VERSION = 2
"""Bumped when what goes into the fingerprint changes."""


def source_identity(source: Any, raster: Any) -> str:
    """What names the input's content: ``file:<real path>:<size>:<mtime_ns>``,
    ``numpy:<sha256>:<shape>:<dtype>``, ``dask:<token>`` or the raster's description."""
    from tilesegment.read.array import ArrayRaster, is_dask_array

    if isinstance(source, str | os.PathLike):
        return file_identity(source)
    array = getattr(raster, "_array", None) if isinstance(raster, ArrayRaster) else None
    if array is None and (isinstance(source, np.ndarray) or is_dask_array(source)):
        array = source
    if array is not None and is_dask_array(array):
        from dask.base import tokenize

        return f"dask:{tokenize(array)}"
    if array is not None:
        data = np.ascontiguousarray(array)
        digest = hashlib.sha256(data.view(np.uint8).reshape(-1)).hexdigest()
        return f"numpy:{digest}:{'x'.join(map(str, data.shape))}:{data.dtype.str}"
    path = Path(str(getattr(raster, "source", "")))
    if path.exists():
        return file_identity(path)
    return f"raster:{type(raster).__name__}:{getattr(raster, 'source', '')}"


def file_identity(path: str | os.PathLike) -> str:
    """``file:<real path>:<size>:<mtime_ns>`` (a directory, e.g. a Zarr store, by its own
    stat and that of its ``zarr.json`` when present)."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    text = f"file:{real}:{stat.st_size}:{stat.st_mtime_ns}"
    meta = Path(real) / "zarr.json"
    if meta.is_file():
        inner = meta.stat()
        text += f":{inner.st_size}:{inner.st_mtime_ns}"
    return text


def fingerprint_fields(plan: Any) -> dict[str, Any]:
    """The canonical description of a :class:`~tilesegment.plan.model.RunPlan` that its
    fingerprint hashes (JSON-able, sorted keys)."""
    from tilesegment.write.meta import FORMAT_VERSION

    src, geo, norm, out, exe = (plan.source, plan.geometry, plan.normalization, plan.output,
                                plan.execution)
    on_cuda = exe.device_type == "cuda"
    fields = {
        "fingerprint_version": FINGERPRINT_VERSION,
        "format_version": FORMAT_VERSION,
        "source": {"identity": src.identity, "level": src.level, "mpp": src.mpp},
        "model": plan.model.content_key,
        "geometry": {"tile": geo.tile, "halo": geo.halo, "shrink": geo.shrink,
                     "pad_mode": geo.pad_mode, "pad_value": float(geo.pad_value),
                     "blend": geo.blend, "blend_margin": geo.blend_margin},
        "normalization": {"mode": norm.mode,
                          "mean": None if norm.mode == "raster" else _floats(norm.mean),
                          "std": None if norm.mode == "raster" else _floats(norm.std)},
        "crf": None if plan.crf is None else dataclasses.asdict(plan.crf.params),
        "output": {"kind": out.kind, "layers": list(out.layers), "cog": out.cog,
                   "returns": out.returns if out.path is None else None},
        "tissue": {"mode": plan.tissue.mode, "method": plan.tissue.method,
                   "mask": plan.tissue.identity},
        "device": {"type": exe.device_type,
                   "batch_size": exe.batch_size if on_cuda else None,
                   "channels_last": exe.channels_last if on_cuda else None,
                   "precision": exe.precision, "compile": exe.compile},
    }
    if exe.tta != "none":
        fields["tta"] = exe.tta
    if geo.blend == "gaussian" and geo.blend_preset != "tilesegment":
        fields["geometry"]["blend_preset"] = geo.blend_preset
    return fields


def fingerprint(plan: Any) -> str:
    """Hex sha256 of :func:`fingerprint_fields` as canonical JSON."""
    text = json.dumps(fingerprint_fields(plan), sort_keys=True, separators=(",", ":"),
                      allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _floats(values: Any) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def flat_fields(plan: Any) -> dict[str, Any]:
    """:func:`fingerprint_fields` as one flat dict of dotted names (``geometry.halo``), the
    record a block store keeps so that a refused resume can list what differs."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            flat[prefix] = value

    walk("", fingerprint_fields(plan))
    return flat
