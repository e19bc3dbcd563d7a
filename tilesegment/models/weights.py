"""Load trained weights from local files only: safetensors, or torch files read safely.

``.safetensors`` is the format to use. A ``.pt``/``.pth`` file is read with
``torch.load(weights_only=True)`` passed explicitly, so a pickle that would run code is
refused (also under ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, which only overrides call sites
that leave ``weights_only`` unset). Missing, unexpected and wrongly shaped tensors are named
in the error, and so are the tensors a truncated safetensors file has lost.

A module may define ``adapt_state_dict(state, source) -> state`` to accept foreign layouts
(the torchvision wrapper does: see :mod:`tilesegment.models.tv`); the strict check follows.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from tilesegment.errors import ModelError


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict:
    """The tensors of a weights file, refusing anything that could run code."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            why = safetensors_damage(path) or str(exc)
            raise ModelError(f"{path}: not a readable safetensors file ({why})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's pickle-protocol notice
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise ModelError(f"{path}: refused or unreadable weights file "
                         f"({_torch_reason(exc)})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{path}: holds a {type(state).__name__}, not a dict of tensors")
    return state


def load_weights(module: nn.Module, path: str | Path) -> nn.Module:
    """Load ``path`` into ``module`` strictly; the error names missing/unexpected tensors."""
    return load_state(module, read_state_dict(path), str(path))


def load_state(module: nn.Module, state: Mapping[str, Any], source: str) -> nn.Module:
    """Load tensors ``state`` (read from ``source``) into ``module`` strictly, after the
    module's ``adapt_state_dict`` hook if it has one; returns the module in eval mode."""
    adapt = getattr(module, "adapt_state_dict", None)
    if callable(adapt):
        state = adapt(state, source)
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    check_state_fits(own, state, source)
    module.load_state_dict(dict(state), strict=True)
    return module.eval()


def _shape_of(value: Any) -> tuple[int, ...] | str:
    """A tensor's shape, or the type name of a value that is no tensor."""
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else type(value).__name__


def check_state_fits(expected: Mapping[str, Iterable[int]], state: Mapping[str, Any],
                     source: str, problem: str = "does not fit the model",
                     show_shapes: bool = False, limit: int = 5) -> None:
    """Raise a ``ModelError`` (``"{source}: {problem}; missing: …"``) naming the missing,
    unexpected and wrongly shaped tensors of ``state`` against ``expected`` (name → shape),
    at most ``limit`` of each; ``show_shapes`` adds found and expected shapes."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k} {_shape_of(state[k])} (expected {tuple(expected[k])})" if show_shapes else k
        for k in set(expected) & set(state)
        if tuple(expected[k]) != _shape_of(state[k]))
    if missing or unexpected or wrong:
        parts = []
        for label, names in (("missing", missing), ("unexpected", unexpected),
                             ("wrong shape", wrong)):
            if names:
                more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
                parts.append(f"{label}: {', '.join(names[:limit])}{more}")
        raise ModelError(f"{source}: {problem}; " + "; ".join(parts))


def safetensors_header(path: str | Path) -> tuple[dict[str, str], dict[str, dict]]:
    """``(metadata, tensors)`` from a safetensors file's JSON header, reading no tensor data.

    ``tensors`` maps names to ``{"dtype", "shape", "data_offsets"}``; offsets count from the
    end of the header.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a safetensors header")
            size = int.from_bytes(head, "little")
            if size > path.stat().st_size - 8:
                raise ValueError(f"its header claims {size} bytes; the file is cut short")
            header = json.loads(f.read(size))
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
    except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise ModelError(f"{path}: not a readable safetensors file ({exc})") from None
    metadata = header.pop("__metadata__", None) or {}
    return metadata, header


def safetensors_damage(path: str | Path) -> str | None:
    """Why a safetensors file is truncated, naming the tensors cut off; ``None`` if its
    header fits the file (the damage, if any, is elsewhere)."""
    path = Path(path)
    try:
        _, tensors = safetensors_header(path)
    except ModelError as exc:
        return str(exc).split("(", 1)[-1].rstrip(")")
    with open(path, "rb") as f:
        start = 8 + int.from_bytes(f.read(8), "little")
    size = path.stat().st_size
    cut = sorted(name for name, meta in tensors.items()
                 if start + int(meta.get("data_offsets", (0, 0))[1]) > size)
    if not cut:
        return None
    more = f" (+{len(cut) - 5} more)" if len(cut) > 5 else ""
    return (f"truncated at {size} bytes; tensors cut off: {', '.join(cut[:5])}{more}")


def _torch_reason(exc: Exception) -> str:
    """The reason inside torch.load's long message (without its advice to load unsafely)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
        return "it is a pickle that only an unsafe load would run: " + " ".join(detail.split())
    if text.startswith("Weights only load failed"):
        body = text.split("Check the documentation")[0]
        parts = [p for p in body.split("\n\n") if p.strip()]
        detail = parts[-1] if len(parts) > 1 else ""
        return ("it is a pickle that only an unsafe load would run"
                + (f": {' '.join(detail.split())}" if detail else ""))
    return " ".join(text.split())[:200] or type(exc).__name__
