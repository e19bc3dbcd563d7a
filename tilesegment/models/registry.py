"""The model registry: names → (spec, builder). Specs need no torch; builders import it lazily.

``create_model(name, in_channels, num_classes)`` builds a module; ``get_spec`` tells the
pipeline its geometry before any pixel is read; ``list_models(pattern)`` filters names.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tilesegment.errors import ModelError
from tilesegment.models.spec import ModelSpec

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: ``spec(in_channels, num_classes)`` (no torch) and
    ``build(in_channels, num_classes, **options)`` (imports torch lazily) functions.

    ``options`` are builder-specific keywords, e.g. ``backbone_weights`` for the VGG-based
    models; ``create_model`` passes them through.
    """

    name: str
    summary: str
    spec: Callable[[int, int], ModelSpec]
    build: Callable[..., nn.Module]
    default_classes: int = 2
    trainable: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}
_BUILTINS_LOADED = False


def _registry() -> dict[str, ModelEntry]:
    """The registry, with the built-in catalogue loaded on first use."""
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        import tilesegment.models.catalog  # noqa: F401  (registers the built-in models)
    return _REGISTRY


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add ``entry`` to the registry (a name may be registered once)."""
    registry = _registry()
    if entry.name in registry:
        raise ModelError(f"model {entry.name!r} is already registered")
    registry[entry.name] = entry
    return entry


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching the shell-style ``pattern``, sorted (plugins included)."""
    _load_plugins()
    return sorted(n for n in _registry() if fnmatch.fnmatch(n, pattern))


def get_entry(name: str) -> ModelEntry:
    if name not in _registry():  # a plugin's model in a process that has not loaded them
        _load_plugins()
    try:
        return _registry()[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def _load_plugins() -> None:
    """Register the models of plugin packages (entry points ``tilesegment.models``), once
    per process; a broken plugin is a warning here (resolving its name is an error)."""
    from tilesegment.models.plugins import load_plugins

    load_plugins(strict=False)


def get_spec(name: str, in_channels: int, num_classes: int | None = None) -> ModelSpec:
    """The spec of model ``name`` for this many input channels and classes."""
    entry = get_entry(name)
    return entry.spec(in_channels, num_classes or entry.default_classes)


def create_model(
    name: str, in_channels: int, num_classes: int | None = None, seed: int = 0,
    **options: Any,
) -> nn.Module:
    """Build model ``name`` with random weights drawn from ``seed`` (reproducible in every
    process), in eval mode; ``options`` go to the model's builder. Load trained weights
    with :func:`tilesegment.models.weights.load_weights`."""
    import inspect

    import torch

    entry = get_entry(name)
    accepted = inspect.signature(entry.build).parameters
    for option in options:
        if option not in accepted and not any(
                p.kind is p.VAR_KEYWORD for p in accepted.values()):
            raise ModelError(f"model {name!r} takes no {option.replace('_', ' ')} "
                             f"(it accepts: {', '.join(list(accepted)[2:]) or 'nothing'})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = entry.build(in_channels, num_classes or entry.default_classes, **options)
    return module.eval()


def describe_models(pattern: str = "*", in_channels: int = 3) -> list[dict[str, Any]]:
    """One JSON-able row per model matching ``pattern``: its tile rules and defaults."""
    rows = []
    for name in list_models(pattern):
        entry = get_entry(name)
        spec = entry.spec(in_channels, entry.default_classes or in_channels)
        tile = spec.default_tile
        halo = spec.default_halo(tile)
        rows.append({
            "name": name, "summary": entry.summary, "tile_rule": spec.tile_rule.describe(),
            "output_stride": spec.tile_rule.output_stride, "default_tile": tile,
            "default_halo": halo, "default_core": tile - 2 * halo,
            "default_output": spec.tile_rule.output_size(tile),
            "shrink": spec.tile_rule.shrink(tile), "receptive_radius": spec.receptive_radius,
            "classes": spec.num_classes, "normalization": spec.normalization.mode,
        })
    return rows
