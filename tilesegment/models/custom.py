"""Your own model: a ``--model`` value resolved to a spec and a module, and specs probed from
user-supplied ``torch.nn.Module`` objects.

:func:`resolve_model` accepts, in this order:

1. a registered name (built-ins, then names registered by plugin packages through the
   entry-point group ``tilesegment.models``; see :mod:`tilesegment.models.plugins`);
2. a checkpoint: ``NAME.safetensors`` with its model card (``NAME.json`` or embedded; see
   :mod:`tilesegment.models.checkpoint`), or that ``NAME.json``;
3. a TorchScript file (``torch.jit.save``; ``.pt``, ``.ts``, any suffix), read with
   ``torch.jit.load``;
4. ``package.module:function`` (dots allowed after the colon), an importable callable
   returning an ``nn.Module``, called with ``in_channels=`` and ``num_classes=`` when its
   signature accepts them (``num_classes`` only when known); a value starting with a model
   family's prefix (``smp:ARCH:ENCODER``, :mod:`tilesegment.models.smp_models`) is that
   family's model instead.

Security: only checkpoints are pure data. ``torch.jit.load`` unpickles nothing that could
run Python code, but a TorchScript file IS a program: its ``forward`` runs whatever code it
contains, like any program you run. ``package.module:function`` imports and runs Python
code. Use both only with files and packages you trust.

TorchScript is deprecated by torch (2.10+ warns); its deprecation warning is silenced here.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tilesegment.errors import ModelError
from tilesegment.grid import TileRule
from tilesegment.models.spec import ModelSpec, Normalization

if TYPE_CHECKING:
    from tilesegment.models.checkpoint import ModelCard

KINDS = ("registered", "checkpoint", "torchscript", "function", "module")
_FUNCTION = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_FILE_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript", ".safetensors", ".json")


@dataclass(frozen=True)
class ResolvedModel:
    """A model the pipeline can run: its spec, and how to get the module in any process.

    ``kind``: one of :data:`KINDS`. ``module``: the ready module, or ``None`` for a
    registered name (each process builds ``spec.name`` itself, with ``weights`` or seeded
    random weights). ``source``: the string :func:`load_model` rebuilds the module from in
    another process (``None`` for registered names and module objects). ``probed``: the
    spec was learnt by probing, so its receptive radius is a guess (do not warn about
    seams). ``card``: a checkpoint's card; ``halo``: the card's default halo, meant for
    the card's tile (``spec.default_tile``).
    """

    kind: str
    spec: ModelSpec
    module: nn.Module | None = None
    source: str | None = None
    probed: bool = False
    card: ModelCard | None = None
    halo: int | None = None


_REUSED: list[dict[tuple, ResolvedModel]] = []
"""The memo of the innermost :func:`reusing_models` block (none outside one)."""


@contextlib.contextmanager
def reusing_models() -> Iterator[None]:
    """Within the block, :func:`resolve_model` loads a model given by name, file or
    function once per (value, bands, classes, tile, weights) and hands the same resolved
    model to every later call: the runs of ``segment_many`` share one built module."""
    _REUSED.append({})
    try:
        yield
    finally:
        _REUSED.pop()


def _file_state(path: str | Path | None) -> tuple | None:
    """What names a file's version (a changed file is loaded again); None for no file."""
    try:
        stat = os.stat(path) if path else None
    except (OSError, ValueError):
        return None
    return None if stat is None else (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


def resolve_model(value: str | nn.Module, in_channels: int, num_classes: int | None = None,
                  *, tile: int | None = None,
                  weights: str | Path | None = None) -> ResolvedModel:
    """Resolve a ``--model`` value (or a module object) for ``in_channels`` bands.

    ``num_classes``: the classes asked for (``None``: the model's own); a module giving
    another count is refused. ``tile``: the probe tile for modules (default 256).
    ``weights``: a weights file loaded strictly into a TorchScript/function/object module;
    for registered names it is left to the caller (``ModelRecipe.weights``); a checkpoint
    carries its own and refuses it. Inside :func:`reusing_models` a model named by a
    string is loaded once.
    """
    if not _REUSED or not isinstance(value, str):
        return _resolve_model(value, in_channels, num_classes, tile=tile, weights=weights)
    memo = _REUSED[-1]
    key = (value, _file_state(value), in_channels, num_classes, tile,
           None if weights is None else str(weights), _file_state(weights))
    if key not in memo:
        memo[key] = _resolve_model(value, in_channels, num_classes, tile=tile,
                                   weights=weights)
    return memo[key]


def _resolve_model(value: str | nn.Module, in_channels: int, num_classes: int | None = None,
                   *, tile: int | None = None,
                   weights: str | Path | None = None) -> ResolvedModel:
    if isinstance(value, nn.Module):
        module = _with_weights(value, weights)
        return ResolvedModel("module", spec_for_module(module, in_channels, tile, num_classes),
                             module=module, probed=True)
    if not isinstance(value, str) or not value:
        raise ModelError(f"model must be a name, a path, package.module:function or a "
                         f"torch.nn.Module, not {value!r}")
    from tilesegment.models.registry import get_entry, get_spec, list_models

    kind = "registered" if value in list_models() else _kind(value)
    if kind == "registered":
        return ResolvedModel("registered", get_spec(value, in_channels, num_classes),
                             halo=get_entry(value).halo)
    if kind == "checkpoint":
        if weights:
            raise ModelError(f"{value}: a checkpoint carries its weights; drop --weights")
        from tilesegment.models.checkpoint import build_from_checkpoint, card_spec

        module, card = build_from_checkpoint(value, in_channels, num_classes)
        return ResolvedModel("checkpoint", card_spec(card), module=module, source=value,
                             card=card, halo=card.halo)
    module = load_model(value, in_channels, num_classes, weights=weights)
    spec = spec_for_module(module, in_channels, tile, num_classes,
                           name=Path(value).name if kind == "torchscript" else value)
    return ResolvedModel(kind, spec, module=module, source=value, probed=True)


def load_model(source: str, in_channels: int, num_classes: int | None = None, *,
               weights: str | Path | None = None, seed: int = 0) -> nn.Module:
    """The module ``source`` names (any form :func:`resolve_model` accepts), in eval mode:
    what a worker process calls to rebuild a ``ResolvedModel`` from its ``source``."""
    from tilesegment.models.registry import create_model, list_models

    kind = "registered" if source in list_models() else _kind(source)
    if kind == "registered":
        return _with_weights(create_model(source, in_channels, num_classes, seed), weights)
    if kind == "checkpoint":
        from tilesegment.models.checkpoint import build_from_checkpoint

        if weights:
            raise ModelError(f"{source}: a checkpoint carries its weights; drop --weights")

        return build_from_checkpoint(source, in_channels, num_classes)[0]
    if kind == "torchscript":
        module = _load_torchscript(Path(source))
    else:
        module = _call_function(source, in_channels, num_classes)
    return _with_weights(module, weights).eval()


def spec_for_module(module: nn.Module, in_channels: int, tile: int | None,
                    num_classes: int | None = None, name: str | None = None) -> ModelSpec:
    """Probe ``module`` with one ``float32[1, in_channels, tile, tile]`` zero tile to learn its
    class count and shrink. Its receptive field is unknown: the default halo is a quarter of
    the tile (or the shrink, if larger); pass ``halo`` for a model you know.
    ``num_classes``, when given, must be what the module gives."""
    tile = tile or 256
    if not isinstance(module, nn.Module):
        raise ModelError(f"model must be a registered name or a torch.nn.Module, "
                         f"not {type(module).__name__}")
    try:
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.inference_mode():
            y = module.eval()(torch.zeros(1, in_channels, tile, tile, device=device))
    except Exception as exc:
        raise ModelError(f"the model fails on a {in_channels}-band {tile}×{tile} tile: "
                         f"{exc}".splitlines()[0]) from None
    if not isinstance(y, torch.Tensor) or y.ndim != 4 or y.shape[-1] != y.shape[-2]:
        raise ModelError("the model must return one float32[N, K, H', W'] tensor, not "
                         f"{_describe(y)}")
    shrink2 = tile - int(y.shape[-1])
    if shrink2 < 0 or shrink2 % 2:
        raise ModelError(f"the model turns a {tile} tile into {y.shape[-1]}: "
                         "output must be the input less the same margin on each side")
    k = int(y.shape[1])
    if num_classes is not None and num_classes != k:
        raise ModelError(f"the model gives {k} classes, not {num_classes} (drop --classes "
                         f"or pass --classes {k})")
    shrink = shrink2 // 2
    rule = TileRule(minimum=2 * shrink + 1, margin=shrink)
    return ModelSpec(name=name or type(module).__name__, in_channels=in_channels,
                     num_classes=k, tile_rule=rule,
                     receptive_radius=max(shrink, tile // 4), default_tile=tile,
                     normalization=Normalization("none"))


def _kind(value: str) -> str:
    """``checkpoint``, ``torchscript`` or ``function`` for a value that is not a registered
    name; a ``ModelError`` listing the accepted forms otherwise."""
    path = Path(value)
    if path.is_file():
        if path.suffix in (".safetensors", ".json"):
            from tilesegment.models.checkpoint import has_card

            if not has_card(path):
                raise ModelError(f"{value}: a weights file without a model card; pass it "
                                 "as --weights with a registered --model, or save it with "
                                 "tilesegment.models.checkpoint.save_checkpoint")
            return "checkpoint"
        return "torchscript"
    from tilesegment.models.registry import is_family_name

    if is_family_name(value):  # smp:ARCH:ENCODER; the family names what is wrong
        from tilesegment.models.plugins import ensure_model

        ensure_model(value)
        return "registered"
    if _FUNCTION.fullmatch(value):
        return "function"
    if path.suffix in _FILE_SUFFIXES or "/" in value or "\\" in value:
        raise ModelError(f"{value}: model file not found")
    from tilesegment.models.plugins import ensure_model, plugin_errors
    from tilesegment.models.registry import list_models

    if ensure_model(value):
        return "registered"
    import difflib

    broken = plugin_errors()
    extra = f"; broken plugins: {'; '.join(broken.values())}" if broken else ""
    close = difflib.get_close_matches(value, list_models(), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ModelError(f"unknown model {value!r}: {hint}not a registered name "
                     f"({', '.join(list_models())}), a checkpoint, a TorchScript file or "
                     f"package.module:function{extra}")


def _load_torchscript(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ModelError(f"{path}: not a TorchScript file (torch.jit.save) ({reason}). A "
                         "state dict goes to --weights with a registered --model") from None
    return module


def _call_function(value: str, in_channels: int, num_classes: int | None) -> nn.Module:
    module_name, _, attr = value.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ModelError(f"{value}: cannot import {module_name!r} ({type(exc).__name__}: "
                         f"{exc})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ModelError(f"{value}: {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise ModelError(f"{value}: is a {type(obj).__name__}, not a callable")
    kwargs: dict[str, Any] = {}
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "in_channels" in params or takes_any:
        kwargs["in_channels"] = in_channels
    if num_classes is not None and ("num_classes" in params or takes_any):
        kwargs["num_classes"] = num_classes
    try:
        module = obj(**kwargs)
    except ModelError:
        raise
    except Exception as exc:
        given = ", ".join(f"{k}={v}" for k, v in kwargs.items()) or "no arguments"
        raise ModelError(f"{value}: failed when called with {given} "
                         f"({type(exc).__name__}: {exc})") from None
    if not isinstance(module, nn.Module):
        raise ModelError(f"{value}: returned a {type(module).__name__}, not a "
                         "torch.nn.Module")
    return module


def _with_weights(module: nn.Module, weights: str | Path | None) -> nn.Module:
    if weights:
        from tilesegment.models.weights import load_weights

        load_weights(module, weights)
    return module


def _describe(y: Any) -> str:
    if isinstance(y, torch.Tensor):
        return f"a tensor of shape {tuple(y.shape)}"
    if isinstance(y, dict):
        return f"a dict with keys {sorted(map(str, y))} (wrap it to return one tensor)"
    return f"a {type(y).__name__}"
