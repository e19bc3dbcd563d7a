"""The model registry: names → (spec, builder). A leaf: it imports no model code.

Models register themselves beside their own code, with :func:`register_model` (a
``ModelEntry``, or as a decorator over the builder, as timm's ``@register_model`` does). The
built-in ones do so when :mod:`tilesegment.models.catalog` imports their modules, which
``tilesegment.models`` does on import: so does everything reaching this module, since
Python runs a package's ``__init__`` before any of its modules. Plugin packages reach the
registry through the one loading hook that the catalogue installs here
(:func:`set_loader`); this module never imports a model module, the catalogue or the
plugin loader, so the import graph stays acyclic (``tests/test_import_graph.py``).

``create_model(name, in_channels, num_classes)`` builds a module; ``get_spec`` tells the
pipeline its geometry before any pixel is read; ``list_models(pattern)`` filters names.
Specs need no torch; builders import it lazily.

A *family* (:func:`register_family`) names models by a prefix and parameters,
``PREFIX:…`` (``smp:Unet:resnet50``): its entries are made on first lookup and are not
listed (there are too many to enumerate).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

from tilesegment.errors import ModelError

if TYPE_CHECKING:
    from torch import nn

    from tilesegment.models.spec import ModelSpec


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: ``spec(in_channels, num_classes)`` (no torch) and
    ``build(in_channels, num_classes, **options)`` (imports torch lazily) functions.

    ``options`` are builder-specific keywords, e.g. ``backbone_weights`` for the VGG-based
    models; ``create_model`` passes them through. ``pretrained``: the builder loads trained
    weights of its own (a shipped model), so a run without ``weights`` is not random.
    ``channels``: the input bands the model takes, when fixed (listings describe it so).
    ``halo``: the run's default halo at the spec's default tile when the model states one
    (a shipped model's card), instead of the seamless default.
    """

    name: str
    summary: str
    spec: Callable[[int, int], ModelSpec]
    build: Callable[..., nn.Module]
    default_classes: int = 2
    trainable: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    channels: int | None = None
    halo: int | None = None


_REGISTRY: dict[str, ModelEntry] = {}
_LOADER: Callable[[], object] | None = None
_FAMILIES: dict[str, Callable[[str], ModelEntry]] = {}
_FAMILY_ENTRIES: dict[str, ModelEntry] = {}


def register_family(prefix: str, make_entry: Callable[[str], ModelEntry]) -> None:
    """Names ``{prefix}:…`` resolve to ``make_entry(name)`` (once per name; it raises a
    ``ModelError`` for a name it cannot make, e.g. a missing optional package)."""
    if prefix in _FAMILIES:
        raise ModelError(f"model family {prefix!r} is already registered")
    _FAMILIES[prefix] = make_entry


def is_family_name(name: str) -> bool:
    """True if ``name`` starts with a registered family's ``PREFIX:``."""
    prefix, sep, _ = name.partition(":")
    return bool(sep) and prefix in _FAMILIES


def family_entry(name: str) -> ModelEntry | None:
    """The entry of ``name`` if it is of a registered family (made now if need be), else
    ``None``; the family's ``ModelError`` propagates."""
    prefix, sep, _ = name.partition(":")
    if not sep or prefix not in _FAMILIES:
        return None
    if name not in _FAMILY_ENTRIES:
        _FAMILY_ENTRIES[name] = _FAMILIES[prefix](name)
    return _FAMILY_ENTRIES[name]


def set_loader(loader: Callable[[], object] | None) -> None:
    """Install the loading hook: ``loader()`` registers the models not registered yet
    (plugin packages), and is called before a listing and on a lookup that misses. It must
    be cheap once it has run. :mod:`tilesegment.models.catalog` installs the only one."""
    global _LOADER
    _LOADER = loader


def _load() -> None:
    if _LOADER is not None:
        _LOADER()


def registered() -> dict[str, ModelEntry]:
    """The models registered so far, without loading any (a copy)."""
    return dict(_REGISTRY)


BuildFn = Callable[..., "nn.Module"]


@overload
def register_model(entry: ModelEntry) -> ModelEntry: ...


@overload
def register_model(entry: str, summary: str, *, spec: Callable[[int, int], ModelSpec],
                   default_classes: int = 2, trainable: bool = True,
                   kwargs: dict[str, Any] | None = None) -> Callable[[BuildFn], BuildFn]: ...


def register_model(entry: ModelEntry | str, summary: str | None = None, *,
                   spec: Callable[[int, int], ModelSpec] | None = None,
                   default_classes: int = 2, trainable: bool = True,
                   kwargs: dict[str, Any] | None = None) -> Any:
    """Add a model to the registry (a name may be registered once).

    ``register_model(entry)`` adds a :class:`ModelEntry` and returns it. As a decorator,
    ``@register_model(name, summary, spec=spec_fn, ...)`` over a builder
    ``build(in_channels, num_classes, **options) -> nn.Module`` registers
    ``ModelEntry(name, summary, spec_fn, build, ...)`` and returns the builder unchanged.
    """
    if isinstance(entry, ModelEntry):
        return _add(entry)
    if not isinstance(entry, str) or summary is None or spec is None:
        raise ModelError("register_model takes a ModelEntry, or a name, a summary and "
                         "spec= (as a decorator over the builder)")
    name, spec_fn = entry, spec

    def decorate(build: BuildFn) -> BuildFn:
        _add(ModelEntry(name, summary, spec_fn, build, default_classes=default_classes,
                        trainable=trainable, kwargs=dict(kwargs or {})))
        return build

    return decorate


def _add(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ModelError(f"model {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching the shell-style ``pattern``, sorted (plugins included)."""
    _load()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_entry(name: str) -> ModelEntry:
    """The entry of ``name``, loading plugins first if it is not registered yet."""
    if name not in _REGISTRY:
        family = family_entry(name)
        if family is not None:
            return family
        _load()  # a plugin's model in a process that has not loaded them
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


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
        bands = entry.channels or in_channels
        spec = entry.spec(bands, entry.default_classes or bands)
        tile = spec.default_tile
        halo = entry.halo if entry.halo is not None else spec.default_halo(tile)
        rows.append({
            "name": name, "summary": entry.summary, "tile_rule": spec.tile_rule.describe(),
            "output_stride": spec.tile_rule.output_stride, "default_tile": tile,
            "default_halo": halo, "default_core": tile - 2 * halo,
            "default_output": spec.tile_rule.output_size(tile),
            "shrink": spec.tile_rule.shrink(tile), "receptive_radius": spec.receptive_radius,
            "classes": spec.num_classes, "normalization": spec.normalization.mode,
        })
    return rows
