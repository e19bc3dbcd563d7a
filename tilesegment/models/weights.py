"""Load trained weights from local files only: safetensors, or torch files read safely.

``.safetensors`` is the format to use. A ``.pt``/``.pth`` file is read with
``torch.load(weights_only=True)`` passed explicitly, so a pickle that would run code is
refused. Missing or unexpected tensors are named in the error.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

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
            raise ModelError(f"{path}: not a readable safetensors file ({exc})") from None
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
    state = read_state_dict(path)
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        for label, names in (("missing", missing), ("unexpected", unexpected),
                             ("wrong shape", wrong)):
            if names:
                more = f" (+{len(names) - 5} more)" if len(names) > 5 else ""
                parts.append(f"{label}: {', '.join(names[:5])}{more}")
        raise ModelError(f"{path}: does not fit the model; " + "; ".join(parts))
    module.load_state_dict(state, strict=True)
    return module.eval()


def _torch_reason(exc: Exception) -> str:
    """The reason inside torch.load's long message (without its advice to load unsafely)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
        return "it is a pickle that only an unsafe load would run: " + " ".join(detail.split())
    return " ".join(text.split())[:200] or type(exc).__name__
