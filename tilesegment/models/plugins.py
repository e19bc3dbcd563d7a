"""Models from plugin packages: the entry-point group ``tilesegment.models``.

A package declares, in its ``pyproject.toml``::

    [project.entry-points."tilesegment.models"]
    mymodels = "mypackage.models:register"

Each entry point loads to a :class:`~tilesegment.models.registry.ModelEntry`, or to a callable
taking no arguments that registers models itself (``register_model``) and/or returns a
``ModelEntry`` or an iterable of them (registered here). :func:`load_plugins` does this once
per process; a broken plugin gives a ``ModelError`` naming the entry point and its package.
The registry calls it through the one loading hook that :mod:`tilesegment.models.catalog`
installs (:func:`tilesegment.models.registry.set_loader`): on the first listing, and on a
lookup of a name not registered yet.

Loading a plugin imports and runs its code, like any installed package: install only
plugins you trust. No torch here (plugins may import it themselves).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from tilesegment.errors import ModelError
from tilesegment.models.registry import ModelEntry, list_models, register_model, registered

ENTRY_POINT_GROUP = "tilesegment.models"


@dataclass
class _State:
    loaded: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    scanned: bool = False
    busy: bool = False


_STATE = _State()
_LOCK = threading.RLock()


def load_plugins(*, strict: bool = True, rescan: bool = False) -> dict[str, list[str]]:
    """Register the models of every ``tilesegment.models`` entry point, once per process.

    Returns ``{entry point label: [model names]}`` for the plugins loaded so far. A broken
    plugin (import error, exception, wrong return type, a name already taken) raises one
    ``ModelError`` naming each broken entry point; with ``strict=False`` it is a warning
    instead. The working plugins are registered either way, and later calls repeat the
    error without loading again. ``rescan=True`` looks for entry points not seen before
    (after installing a plugin in a running process).
    """
    with _LOCK:
        state = _STATE
        if state.busy:  # a plugin's code asked the registry for a listing: no recursion
            return dict(state.loaded)
        if rescan or not state.scanned:
            state.busy = True
            try:
                for ep in _entry_points():
                    label = _label(ep)
                    if label in state.loaded or label in state.errors:
                        continue
                    try:
                        state.loaded[label] = _load_one(ep, label)
                    except ModelError as exc:
                        state.errors[label] = str(exc)
            finally:
                state.busy = False
                state.scanned = True
        loaded, errors = dict(state.loaded), dict(state.errors)
    if errors:
        message = "broken model plugin" + ("s" if len(errors) > 1 else "") + ": " + \
            "; ".join(errors.values())
        if strict:
            raise ModelError(message)
        warnings.warn(message, UserWarning, stacklevel=2)
    return loaded


def plugin_errors() -> dict[str, str]:
    """``{entry point label: error}`` for the plugins that failed to load (after a scan)."""
    with _LOCK:
        return dict(_STATE.errors)


def ensure_model(name: str) -> bool:
    """True if ``name`` is registered or of a model family (``smp:Unet:resnet50``; a
    family's ``ModelError``, e.g. its package missing, propagates), loading plugins
    (warning on broken ones) if it is not yet."""
    from tilesegment.models.registry import family_entry

    if name in list_models() or family_entry(name) is not None:
        return True
    load_plugins(strict=False)
    return name in list_models()


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP),
                  key=lambda ep: (ep.name, ep.value))


def _label(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    where = f" (package {dist.name} {dist.version})" if dist is not None else ""
    return f"{ep.name} = {ep.value}{where}"


def _load_one(ep: metadata.EntryPoint, label: str) -> list[str]:
    """Load entry point ``ep`` and register its models; returns their names."""
    try:
        obj = ep.load()
    except Exception as exc:
        raise ModelError(f"{label}: cannot be loaded: {_reason(exc)}") from None
    before = set(registered())
    if isinstance(obj, ModelEntry):
        result: Any = obj
    elif callable(obj):
        try:
            result = obj()
        except ModelError as exc:
            raise ModelError(f"{label}: {exc}") from None
        except Exception as exc:
            raise ModelError(f"{label}: raised {_reason(exc)}") from None
    else:
        raise ModelError(f"{label}: loads to a {type(obj).__name__}, not a ModelEntry or a "
                         "callable that registers models")
    entries = _as_entries(result, label)
    for entry in entries:
        if entry.name not in before and registered().get(entry.name) is entry:
            continue  # the callable registered it and returned it too
        try:
            register_model(entry)
        except ModelError as exc:
            raise ModelError(f"{label}: {exc}") from None
    names = sorted((set(registered()) - before) | {e.name for e in entries})
    if not names:
        raise ModelError(f"{label}: registered no model")
    return names


def _as_entries(result: Any, label: str) -> list[ModelEntry]:
    """``None``, one ``ModelEntry`` or an iterable of them, as a list."""
    if result is None:
        return []
    if isinstance(result, ModelEntry):
        return [result]
    if isinstance(result, Iterable) and not isinstance(result, str | bytes | dict):
        items = list(result)
        bad = [type(x).__name__ for x in items if not isinstance(x, ModelEntry)]
        if not bad:
            return items
        raise ModelError(f"{label}: returned a {', '.join(sorted(set(bad)))} among its "
                         "entries; each must be a ModelEntry")
    raise ModelError(f"{label}: returned a {type(result).__name__}; return None, a "
                     "ModelEntry or a list of them")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
