"""The per-process side of execution: a pool of built models keyed by their content.

A :class:`ModelRecipe` is small and picklable; block tasks carry it, and
:func:`get_predictor` builds the model it names once per process and keeps it in a bounded
LRU pool (:func:`max_models`, default 2). The pool is keyed by **content**, not by run:
``recipe.key`` is a sha256 of the architecture (registered name, the model source's bytes
or a given module's class and tensors), the weights files' sha256, classes, channels,
builder options and the seed when weights are random — computed once in the client by
:func:`with_content_key` — and the worker adds the device it resolves and the memory
format. So the same model in the next run on a long-lived ``distributed`` worker is reused,
not rebuilt, and a model is never pickled per task.

A worker's device is given to it explicitly (:func:`configure` or ``TILESEGMENT_DEVICE``
in its environment): ``--devices`` starts one worker per GPU that sees only its own GPU
(``CUDA_VISIBLE_DEVICES``) and is told ``cuda:0``; ``--local-cluster`` workers are told
``cpu``. A run asking for ``auto`` or ``cuda`` uses it. Torch's thread count is set so that
torch threads × Dask threads ≤ cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEVICE_ENV = "TILESEGMENT_DEVICE"
"""Environment variable naming a worker process's device (``cpu``, ``cuda:N``)."""
MAX_MODELS_ENV = "TILESEGMENT_MAX_MODELS"
"""Environment variable with the pool's bound in a worker process."""
MAX_MODELS = 2
"""Models kept per process by default; the least recently used beyond this are dropped."""


@dataclass
class _Entry:
    """A built module on its device, and the predictors made for it (one per settings)."""

    module: Any
    predictors: dict[tuple, Any] = dataclasses.field(default_factory=dict)
    compiled: Any = None  # torch.compile of the module on its device, made once


_CACHE: OrderedDict[tuple, _Entry] = OrderedDict()
"""The pool: ``(content key, device, channels_last, compile)`` → built model, least recent
first."""
_PINS: Counter[str] = Counter()
"""Runs of this process holding a content key (their local model is kept until released)."""
_LOCK = threading.Lock()
_HOLD: dict[str, Any] = {"depth": 0, "released": set(), "validated": set()}
"""While :func:`hold_models` is active: the keys local runs released (kept pooled) and the
keys whose model was already checked for a cluster run."""
_SETTINGS: dict[str, Any] = {"device": None, "max_models": None}
builds = 0
"""How many models this process has built (the tests read it, also on workers)."""


@dataclass(frozen=True)
class ModelRecipe:
    """How to build the model in any process.

    Either ``name`` (a registered model, with ``weights`` or seeded random weights),
    ``module`` (a ready ``torch.nn.Module``, shipped once per worker as a graph dependency)
    or ``source`` (a checkpoint, TorchScript file or ``package.module:function`` that each
    process loads itself with ``models.custom.load_model``). ``key`` is the model's content
    key (:func:`with_content_key`); ``device`` what the run asked for.
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
    precision: str = "fp32"
    compile: bool = False
    key: str = ""
    tta: str = "none"  # test-time augmentation (tilesegment.tta): a predictor setting


def configure(device: str | None = None, max_models: int | None = None) -> None:
    """Set this process's device (used when a run asks for ``auto``/``cuda``) and the
    pool's bound; models beyond the bound are dropped now. ``None`` leaves a setting."""
    if device is not None:
        _SETTINGS["device"] = device
    if max_models is not None:
        if int(max_models) < 1:
            raise ValueError("max_models must be at least 1")
        _SETTINGS["max_models"] = int(max_models)
    with _LOCK:
        _trim()


def worker_device() -> str | None:
    """The device this process was given (:func:`configure`, else ``TILESEGMENT_DEVICE``)."""
    return _SETTINGS["device"] or os.environ.get(DEVICE_ENV) or None


def max_models() -> int:
    """The pool's bound in this process."""
    if _SETTINGS["max_models"] is not None:
        return _SETTINGS["max_models"]
    value = os.environ.get(MAX_MODELS_ENV)
    return max(1, int(value)) if value and value.isdigit() else MAX_MODELS


def pooled_keys() -> list[str]:
    """Content keys of the models in this process's pool, least recently used first."""
    with _LOCK:
        return [key[0] for key in _CACHE]


def with_content_key(recipe: ModelRecipe) -> ModelRecipe:
    """``recipe`` with its content key filled in (hashes its files once, in the client)."""
    return dataclasses.replace(recipe, key=content_key(recipe))


def content_key(recipe: ModelRecipe) -> str:
    """sha256 of everything that decides the built module's parameters and outputs: the
    architecture (registered name; the source file's bytes or the function's module file;
    a given module's class and tensors), weights and backbone weights sha256, classes,
    in channels, builder options, the seed (when weights are random), tilesegment's
    version. Not the device or precision (the worker adds those) nor per-run settings."""
    from tilesegment import __version__

    parts: dict[str, Any] = {"tilesegment": __version__, "in_channels": recipe.in_channels,
                             "num_classes": recipe.num_classes}
    if recipe.source is not None:
        parts["source"] = recipe.source
        parts["source_sha256"] = _source_digest(recipe.source)
        parts["seed"] = recipe.seed
    elif recipe.module is not None:
        parts["module_sha256"] = module_digest(recipe.module)
    else:
        parts["name"] = recipe.name
        parts["seed"] = recipe.seed if recipe.weights is None else None
        shipped = shipped_sha256(recipe.name)
        if shipped is not None:  # a shipped trained model: its packaged tensors decide
            parts["shipped_sha256"] = shipped
    parts["weights_sha256"] = _digest_or_path(recipe.weights)
    parts["options"] = {"backbone_weights_sha256": _digest_or_path(recipe.backbone_weights)}
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def shipped_sha256(name: str | None) -> str | None:
    """The sha256 of registered model ``name``'s packaged checkpoint if it is a shipped
    trained model (from its card), else ``None``."""
    from tilesegment.models.registry import registered

    entry = registered().get(name or "")
    if entry is None or not entry.pretrained:
        return None
    from tilesegment.models.pretrained import card_data

    return card_data(name)["sha256"]


_DIGESTS: dict[tuple, str] = {}


def file_digest(path: str | Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so a run hashes it once."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    memo = (real, stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if memo not in _DIGESTS:  # hashlib, not models.weights: no torch for a plan
        with open(real, "rb") as f:
            _DIGESTS[memo] = hashlib.file_digest(f, "sha256").hexdigest()
    return _DIGESTS[memo]


def _digest_or_path(path: str | None) -> str | None:
    """:func:`file_digest`, or the path itself for a file that cannot be read (building
    the model then fails with its own message)."""
    if not path:
        return None
    try:
        return file_digest(path)
    except OSError:
        return f"unreadable:{path}"


def _source_digest(source: str) -> str | None:
    """sha256 of a model file (with its same-stem siblings: a checkpoint's card), or of the
    Python file that defines a ``package.module:function``; ``None`` if there is none."""
    path = Path(source)
    if path.is_file():
        files = sorted(p for p in path.parent.iterdir()
                       if p.stem == path.stem and p.is_file())
        return hashlib.sha256("".join(f"{p.name}:{file_digest(p)};" for p in files)
                              .encode()).hexdigest()
    import importlib.util

    try:
        spec = importlib.util.find_spec(source.partition(":")[0])
    except (ImportError, ValueError):
        return None
    origin = spec.origin if spec is not None else None
    return file_digest(origin) if origin and Path(origin).is_file() else None


def module_digest(module: Any) -> str:
    """sha256 of a module's class and its state_dict tensors (names, dtypes, shapes, bytes)."""
    import uuid

    import torch

    digest = hashlib.sha256()
    kind = type(module)
    digest.update(f"{kind.__module__}.{kind.__qualname__}".encode())
    code = getattr(module, "code", None)  # a TorchScript module's class says nothing
    if isinstance(code, str):
        digest.update(code.encode())
    try:
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}:{t.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes())
    except (RuntimeError, TypeError, AttributeError):
        return uuid.uuid4().hex  # tensors that cannot be read as bytes: never shared
    return digest.hexdigest()


def get_predictor(recipe: ModelRecipe):
    """The :class:`~tilesegment.infer.Predictor` for ``recipe`` in this process, its model
    taken from the pool (built on first use, on this process's device)."""
    global builds
    from tilesegment.infer import Predictor, resolve_device

    device = resolve_device(_device_for(recipe.device))
    key = (recipe.key or content_key(recipe), str(device), recipe.channels_last,
           recipe.compile)
    settings = (recipe.batch_size, recipe.out_side, recipe.num_classes, recipe.torch_threads,
                recipe.precision, recipe.tta)
    with _LOCK:
        entry = _CACHE.get(key)
        if entry is None:
            module = recipe.module if recipe.module is not None else _module(recipe)
            entry = _CACHE[key] = _Entry(module)
            builds += 1
        _CACHE.move_to_end(key)
        _trim()
        found = entry.predictors.get(settings)
        if found is None:
            found = Predictor(
                entry.module, device, recipe.batch_size, recipe.out_side,
                recipe.num_classes, recipe.channels_last, threads=recipe.torch_threads,
                precision=recipe.precision, tta=recipe.tta)
            if recipe.compile:  # once per model and device in this process
                if entry.compiled is None:
                    import torch

                    entry.compiled = torch.compile(found.module)
                found.forward = entry.compiled
            entry.predictors[settings] = found
        return found


def _trim() -> None:
    while len(_CACHE) > max_models():
        _CACHE.popitem(last=False)


def validate_recipe(recipe: ModelRecipe, local: bool) -> None:
    """Build the model now, so a bad name, weights file or device fails before any output
    exists. Local runs keep the model for their tasks (until :func:`release`); for a
    cluster it is built on the CPU and dropped (the workers build their own)."""
    if local:
        with _LOCK:
            _PINS[recipe.key] += 1
        try:
            get_predictor(recipe)
        except BaseException:
            release(recipe.key)
            raise
        return
    from tilesegment.infer import resolve_device

    if recipe.key and recipe.key in _HOLD["validated"]:
        return  # built and checked for an earlier run of this hold
    if recipe.module is None and recipe.source is None:
        _module(recipe)
    if _HOLD["depth"]:
        _HOLD["validated"].add(recipe.key)
    if not recipe.device.startswith("cuda"):
        resolve_device(recipe.device)


def release(key: str, pinned: bool = True) -> None:
    """A run of this process is done with content key ``key`` (``pinned``: a local run
    that :func:`validate_recipe` pinned): the model leaves this process's pool unless
    another local run here still holds it. Cluster workers in other processes keep theirs."""
    with _LOCK:
        if pinned and _PINS[key] > 0:
            _PINS[key] -= 1
        if _PINS[key] == 0:
            del _PINS[key]
            if _HOLD["depth"]:
                _HOLD["released"].add(key)  # kept for the next run of the hold
            else:
                _drop(key)


def _drop(key: str) -> None:
    for found in [k for k in _CACHE if k[0] == key]:
        del _CACHE[found]


@contextlib.contextmanager
def hold_models() -> Iterator[None]:
    """Within the block, a model that a local run of this process releases stays in the
    pool (and a model checked for a cluster run is not built again to check it), so
    consecutive runs of one model build it once (``segment_many``). At the end, what no
    run still holds leaves the pool. Re-entrant."""
    with _LOCK:
        _HOLD["depth"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _HOLD["depth"] -= 1
            if not _HOLD["depth"]:
                for key in _HOLD["released"]:
                    if _PINS[key] == 0:
                        _drop(key)
                _HOLD["released"].clear()
                _HOLD["validated"].clear()


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


def _device_for(device: str) -> str:
    """The device to build on: the run's ``cpu``/``cuda:N`` as given; for ``auto``/``cuda``
    this process's own device when it was given one (a ``cuda`` run on a worker given the
    CPU still asks for CUDA)."""
    mine = worker_device()
    if mine is None or device not in ("cuda", "auto"):
        return device
    if device == "cuda" and not mine.startswith("cuda"):
        return device
    return mine


def parse_devices(text: str, available: int | None = None) -> tuple[int, ...]:
    """The CUDA device indices ``--devices`` names: ``all`` or ``cuda:0,cuda:1,…`` (a bare
    ``0,1`` too). ``available``: how many CUDA devices this machine has (asked of torch when
    ``None``). A :class:`~tilesegment.errors.ModelError` without any, for an index beyond
    them, a repeated one or anything else."""
    from tilesegment.errors import ModelError

    text = text.strip()
    if available is None:
        available = cuda_device_count()
    if available < 1:
        raise ModelError(f"--devices {text}: no CUDA device is available on this machine "
                         "(use --local-cluster N for CPU worker processes)")
    if text == "all":
        return tuple(range(available))
    found: list[int] = []
    for item in text.split(","):
        item = item.strip()
        index = item.removeprefix("cuda:")
        if not index.isdigit():
            raise ModelError(f"--devices: {item!r} is not a CUDA device; use "
                             "cuda:0,cuda:1,… or all")
        if int(index) >= available:
            raise ModelError(f"--devices: {item} asked for, but only {available} CUDA "
                             "device(s) are present")
        if int(index) in found:
            raise ModelError(f"--devices: {item} named twice")
        found.append(int(index))
    return tuple(found)


def cuda_device_count() -> int:
    """How many CUDA devices this machine has (0 without torch's CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def available_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
