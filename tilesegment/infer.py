"""Batched, no-grad model calls: ``float32[N, C, T, T]`` tiles in, ``float32[N, K, o, o]`` out."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tilesegment.errors import ModelError


def resolve_device(device: str) -> torch.device:
    """``auto`` → the first CUDA device if there is one, else the CPU; ``cuda``/``cuda:N``/
    ``cpu`` as given (an unavailable CUDA device is an error, not a silent fallback)."""
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelError(f"device {device!r} unknown; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device {device!r} asked for, but no CUDA device is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelError(
                f"device {device!r} asked for, but only {torch.cuda.device_count()} "
                "CUDA device(s) are present")
    elif dev.type != "cpu":
        raise ModelError(f"device {device!r} unsupported; use auto, cpu, cuda or cuda:N")
    return dev


class Predictor:
    """Runs ``module`` on batches of tiles on one device under ``torch.inference_mode``.

    Results must not depend on how tiles are grouped, yet oneDNN and cuDNN choose kernels
    by batch shape and thread count. So every model call has the same shape: on the CPU
    one tile per call with ``threads`` torch threads in the calling thread (parallelism
    comes from concurrent block tasks; one tile per call was also measured fastest); on
    CUDA ``batch_size`` tiles per call, the last call of a block padded with zero tiles.
    ``channels_last`` (NHWC) speeds up CPU and tensor-core convolutions.
    """

    def __init__(self, module: nn.Module, device: torch.device, batch_size: int,
                 out_side: int, num_classes: int, channels_last: bool = True,
                 threads: int = 1):
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.call_size = 1 if device.type == "cpu" else self.batch_size
        self.threads = max(1, int(threads))
        self.out_side = out_side
        self.num_classes = num_classes
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.module = module.eval().to(device=device, memory_format=self.memory_format)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        """Model output for ``tiles`` ``float32[N, C, T, T]`` as ``float32[N, K, o, o]``."""
        n = len(tiles)
        out = np.empty((n, self.num_classes, self.out_side, self.out_side), np.float32)
        if self.device.type == "cpu":
            torch.set_num_threads(self.threads)  # OpenMP's thread count is per thread
        step = self.call_size
        with torch.inference_mode():
            for start in range(0, n, step):
                part = tiles[start:start + step]
                batch = torch.from_numpy(np.ascontiguousarray(part)).to(self.device)
                if len(part) < step:
                    fill = batch.new_zeros((step - len(part), *batch.shape[1:]))
                    batch = torch.cat([batch, fill])
                batch = batch.contiguous(memory_format=self.memory_format)
                y = self.module(batch)
                if not isinstance(y, torch.Tensor):
                    raise ModelError(
                        f"the model returned a {type(y).__name__}; the contract is one "
                        "float32[N, K, H', W'] logits tensor")
                expect = (len(batch), self.num_classes, self.out_side, self.out_side)
                if tuple(y.shape) != expect:
                    raise ModelError(
                        f"the model returned shape {tuple(y.shape)} for input "
                        f"{tuple(batch.shape)}; its spec promises {expect}")
                out[start:start + len(part)] = y[:len(part)].float().cpu().numpy()
        return out
