"""The per-process side of execution: one model per process, built on first use.

A :class:`ModelRecipe` is small and picklable; block tasks carry it, and
:func:`get_predictor` builds the model from it once per process (per recipe) and caches it,
so a model is never pickled per task. Torch's thread count is set so that
torch threads × Dask threads ≤ cores.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

_CACHE: OrderedDict[str, Any] = OrderedDict()
_LOCK = threading.Lock()
MAX_MODELS = 4
"""Models kept per process; the least recently used beyond this are dropped."""
builds = 0
"""How many models this process has built (the tests check one per run)."""


@dataclass(frozen=True)
class ModelRecipe:
    """How to build the model in any process.

    Either ``name`` (a registered model, with ``weights`` or seeded random weights),
    ``module`` (a ready ``torch.nn.Module``, shipped once per worker as a graph dependency)
    or ``source`` (a checkpoint, TorchScript file or ``package.module:function`` that each
    process loads itself with ``models.custom.load_model``).
    """

    in_channels: int
    num_classes: int
    out_side: int
    name: str | None = None
    module: Any = None
    weights: str | None = None
    source: str | None = None
    backbone_weights: str | None = None
    seed: int = 0
    device: str = "auto"
    batch_size: int = 8
    channels_last: bool = True
    torch_threads: int = 1
    key: str = field(default_factory=lambda: uuid.uuid4().hex)


def get_predictor(recipe: ModelRecipe):
    """The cached :class:`~tilesegment.infer.Predictor` for ``recipe`` in this process."""
    global builds
    with _LOCK:
        found = _CACHE.get(recipe.key)
        if found is None:
            found = _CACHE[recipe.key] = _build(recipe)
            builds += 1
            while len(_CACHE) > MAX_MODELS:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(recipe.key)
        return found


def validate_recipe(recipe: ModelRecipe, local: bool) -> None:
    """Build the model now, so a bad name, weights file or device fails before any output
    exists. Local runs keep the model for their tasks; for a cluster it is built on the CPU
    and dropped (the workers build their own)."""
    if local:
        get_predictor(recipe)
        return
    from tilesegment.infer import resolve_device

    if recipe.module is None and recipe.source is None:
        _module(recipe)
    if not recipe.device.startswith("cuda"):
        resolve_device(recipe.device)


def release(key: str) -> None:
    """Drop the model built for recipe ``key`` in this process (after a run)."""
    with _LOCK:
        _CACHE.pop(key, None)


def _build(recipe: ModelRecipe):
    from tilesegment.infer import Predictor, resolve_device

    module = recipe.module if recipe.module is not None else _module(recipe)
    device = resolve_device(_worker_device(recipe.device))
    return Predictor(module, device, recipe.batch_size, recipe.out_side, recipe.num_classes,
                     recipe.channels_last, threads=recipe.torch_threads)


def _module(recipe: ModelRecipe):
    """The registered model of ``recipe`` with its weights (seeded random without), or the
    model its ``source`` names."""
    if recipe.source is not None:
        from tilesegment.models.custom import load_model

        return load_model(recipe.source, recipe.in_channels, recipe.num_classes,
                          weights=recipe.weights, seed=recipe.seed)
    from tilesegment.models.registry import create_model
    from tilesegment.models.weights import load_weights

    options = {"backbone_weights": recipe.backbone_weights} if recipe.backbone_weights else {}
    module = create_model(recipe.name, recipe.in_channels, recipe.num_classes, recipe.seed,
                          **options)
    if recipe.weights:
        load_weights(module, recipe.weights)
    return module


def random_weights_message(name: str | None, backbone_only: bool = False) -> str:
    if backbone_only:
        return (f"model {name!r} has a pretrained backbone but RANDOM class-score layers "
                "(no --weights given): its masks are meaningless until it is trained")
    return (f"model {name!r} has RANDOM weights (no --weights given): its masks are "
            "meaningless except for testing and benchmarks")


def _worker_device(device: str) -> str:
    """On a ``distributed`` worker named by an integer, ``cuda`` means that worker's GPU."""
    if device not in ("cuda", "auto"):
        return device
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return device
    import torch

    if isinstance(name, int) and torch.cuda.is_available():
        return f"cuda:{name % torch.cuda.device_count()}"
    return device


def available_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
