"""The optimisation: epochs of seeded batches, validation after each, the best weights kept,
the resume state written."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tilesegment.train.data import IGNORE
from tilesegment.train.sampler import TileSampler
from tilesegment.train.state import restore_rng, save_state

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Progress:
    """A one-line bar on stderr: epoch, step, loss and the last validation score."""

    enabled: bool
    epochs: int
    steps: int
    last_val: float | None = None

    def show(self, epoch: int, step: int, loss: float) -> None:
        if not self.enabled:
            return
        done = int(20 * step / max(self.steps, 1))
        val = "-" if self.last_val is None else f"{self.last_val:.4f}"
        sys.stderr.write(f"\repoch {epoch}/{self.epochs} [{'#' * done}{'.' * (20 - done)}] "
                         f"step {step}/{self.steps} loss {loss:.4f} val IoU {val}  ")
        sys.stderr.flush()

    def end_epoch(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


@dataclass
class Fit:
    """Everything one training run's loop needs."""

    module: torch.nn.Module
    sampler: TileSampler
    device: torch.device
    output: Any
    epochs: int
    steps_per_epoch: int
    batch_size: int
    lr: float
    weight_decay: float
    precision: str
    class_weights: np.ndarray | None
    rng: np.random.Generator
    validate: Callable[[torch.nn.Module], dict[str, Any] | None]
    settings: dict[str, Any]
    progress: bool = False
    resume_state: dict[str, Any] | None = None
    history: list[dict] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    seconds: float = 0.0


def _better(score: float | None, best: dict[str, Any]) -> bool:
    if "score" not in best:
        return True
    if score is None:
        return False
    return best["score"] is None or score > best["score"]


def run(fit: Fit) -> Fit:
    """Train ``fit.module`` from epoch 0 (or from its resume state) to ``fit.epochs``;
    returns ``fit`` with ``history``, ``best`` (its ``model`` the best weights, CPU) and
    ``step`` filled in. The module ends holding its last weights."""
    module, device = fit.module.to(device=fit.device), fit.device
    optimiser = torch.optim.AdamW(module.parameters(), lr=fit.lr, weight_decay=fit.weight_decay)
    dtype = PRECISIONS[fit.precision]
    scaler = (torch.amp.GradScaler(device.type) if fit.precision == "fp16"
              and device.type == "cuda" else None)
    weight = None if fit.class_weights is None else torch.from_numpy(fit.class_weights).to(device)
    start_epoch = 0
    if fit.resume_state is not None:
        st = fit.resume_state
        module.load_state_dict(st["model"])
        optimiser.load_state_dict(st["optimiser"])
        if scaler is not None and st["scaler"] is not None:
            scaler.load_state_dict(st["scaler"])
        start_epoch, fit.step, fit.seconds = st["epoch"], st["step"], st["seconds"]
        fit.history = st["history"]
        fit.best = dict(st["best"], model=st["best_model"])
        restore_rng(st, fit.rng)
    bar = Progress(fit.progress, fit.epochs, fit.steps_per_epoch)
    if fit.history:
        bar.last_val = fit.history[-1].get("selection")
    for epoch in range(start_epoch, fit.epochs):
        started = time.perf_counter()
        module.train()
        losses = []
        for k in range(fit.steps_per_epoch):
            x, y = fit.sampler.batch(fit.rng, fit.batch_size)
            xb = torch.from_numpy(x).to(device)
            yb = torch.from_numpy(y).to(device)
            autocast = (torch.autocast(device.type, dtype=dtype) if dtype is not None
                        else contextlib.nullcontext())
            with autocast:
                logits = module(xb)
            if (yb != IGNORE).any():
                loss = F.cross_entropy(logits.float(), yb, weight=weight, ignore_index=IGNORE)
            else:  # every label ignored: a step that changes nothing but the counters
                loss = logits.float().sum() * 0.0
            optimiser.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
            else:
                loss.backward()
                optimiser.step()
            fit.step += 1
            losses.append(float(loss.detach()))
            bar.show(epoch + 1, k + 1, float(np.mean(losses)))
        module.eval()
        scores = fit.validate(module)
        row = {"epoch": epoch + 1, "step": fit.step, "loss": float(np.mean(losses)),
               **(scores or {})}
        fit.history.append(row)
        selection = None if scores is None else scores["selection"]
        if _better(selection, fit.best) or scores is None:
            fit.best = {"epoch": epoch + 1, "score": selection,
                        "model": {k_: v.detach().cpu().clone()
                                  for k_, v in module.state_dict().items()}}
        fit.seconds += time.perf_counter() - started
        bar.last_val = selection
        bar.show(epoch + 1, fit.steps_per_epoch, row["loss"])
        bar.end_epoch()
        save_state(fit.output, module=module, optimiser=optimiser, scaler=scaler,
                   epoch=epoch + 1, step=fit.step, rng=fit.rng, best=fit.best,
                   history=fit.history, settings=fit.settings, seconds=fit.seconds)
    return fit
