"""The resume state saved beside the output after every epoch.

``OUT.safetensors`` → ``OUT.train-state.pt``: the last weights, the optimiser, the epoch and
step reached, the best weights and score so far, the history, every random state (NumPy's
generator, torch's CPU and CUDA generators) and the settings that must not change on resume.
Written to a temporary name and renamed into place; read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tilesegment.errors import SettingError


def state_path(output: str | Path) -> Path:
    """Where the resume state of ``output`` lives."""
    output = Path(output)
    return output.with_name(output.stem + ".train-state.pt")


def save_state(output: str | Path, *, module: torch.nn.Module, optimiser: Any,
               scaler: Any, epoch: int, step: int, rng: np.random.Generator,
               best: dict[str, Any], history: list[dict], settings: dict[str, Any],
               seconds: float) -> Path:
    """Write the state after ``epoch`` epochs (``step`` optimiser steps)."""
    path = state_path(output)
    state = {
        "model": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
        "optimiser": optimiser.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "epoch": epoch, "step": step,
        "numpy_rng": json.dumps(rng.bit_generator.state),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []),
        "best_model": best.get("model"),
        "best": json.dumps({k: v for k, v in best.items() if k != "model"}),
        "history": json.dumps(history),
        "settings": json.dumps(settings, sort_keys=True, default=str),
        "seconds": seconds,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_state(output: str | Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The saved state of ``output``; its settings must equal ``settings`` except the
    epochs asked for (a :class:`SettingError` names the ones that differ)."""
    path = state_path(output)
    if not path.is_file():
        raise SettingError(f"--resume: no training state {path} beside {output} (it is written "
                           "after every epoch)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = json.loads(state["settings"])
    now = json.loads(json.dumps(settings, sort_keys=True, default=str))
    differ = sorted(k for k in set(saved) | set(now)
                    if k not in ("epochs", "progress", "resume", "overwrite")
                    and saved.get(k) != now.get(k))
    if differ:
        raise SettingError(f"--resume: {path} was saved with other settings "
                           f"({', '.join(differ)}); resume with the same ones")
    state["best"] = json.loads(state["best"])
    state["history"] = json.loads(state["history"])
    return state


def restore_rng(state: dict[str, Any], rng: np.random.Generator) -> None:
    """Put every random generator back where ``state`` left it."""
    rng.bit_generator.state = json.loads(state["numpy_rng"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
