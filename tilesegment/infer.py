"""Batched, no-grad model calls: ``float32[N, C, T, T]`` tiles in, ``float32[N, K, o, o]`` out."""

from __future__ import annotations

import logging
import math
import threading
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from tilesegment import tta as _tta
from tilesegment.errors import BatchHalvedWarning, ModelError, SettingError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""``--precision`` → the autocast dtype (``None``: plain float32, no autocast)."""

_log = logging.getLogger(__name__)
_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_DEVICE_LOCKS_GUARD = threading.Lock()


def device_lock(device: torch.device) -> threading.Lock:
    """The lock that serialises model calls on one CUDA device in this process: two block
    tasks per GPU worker overlap their reading and merging, never their kernels."""
    with _DEVICE_LOCKS_GUARD:
        return _DEVICE_LOCKS.setdefault(str(device), threading.Lock())


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


def halving_calls(call: Callable[[np.ndarray, int], np.ndarray], tiles: np.ndarray,
                  size: int, out: np.ndarray,
                  on_halve: Callable[[int, int], None] | None = None) -> int:
    """Run ``call(part, size)`` over ``tiles`` ``size`` at a time into ``out`` (``part``
    has at most ``size`` tiles; ``call`` returns one output per tile of ``part``).

    A CUDA out-of-memory error halves ``size`` (``on_halve(old, new)`` is told) and the
    same tiles are tried again; one tile per call that still does not fit is a
    :class:`ModelError`. Returns the size the calls ended with (kept by the caller)."""
    start, n = 0, len(tiles)
    while start < n:
        part = tiles[start:start + size]
        try:
            out[start:start + len(part)] = call(part, size)
        except torch.cuda.OutOfMemoryError as exc:
            if size == 1:
                raise ModelError(
                    "CUDA out of memory with one tile per model call: use a smaller "
                    f"--tile, fp16/bf16 --precision or a larger GPU ({exc})") from None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if on_halve is not None:
                on_halve(size, size // 2)
            size //= 2
            continue
        start += len(part)
    return size


class Predictor:
    """Runs ``module`` on batches of tiles on one device under ``torch.inference_mode``.

    Results must not depend on how tiles are grouped, yet oneDNN and cuDNN choose kernels
    by batch shape and thread count. So every model call has the same shape: on the CPU
    one tile per call with ``threads`` torch threads in the calling thread (parallelism
    comes from concurrent block tasks; one tile per call was also measured fastest); on
    CUDA ``batch_size`` tiles per call, the last call of a block padded with zero tiles.
    ``channels_last`` (NHWC) speeds up CPU and tensor-core convolutions.

    On CUDA the calls of one device are serialised by :func:`device_lock` (block tasks
    running beside each other then overlap reading and merging with inference), tiles go
    through a pinned host buffer with non-blocking copies both ways, ``precision``
    ``bf16``/``fp16`` runs the model under ``torch.autocast`` (outputs cast back to
    float32), and an out-of-memory error halves the batch for the rest of this
    predictor's life, with one warning (:func:`halving_calls`). ``forward`` is the callable
    actually run (the module, or its ``torch.compile`` wrapper shared through the pool).

    ``tta`` (:mod:`tilesegment.tta`) other than ``none``: each tile goes through the model
    once per transform, all transforms of a tile in the same call (on CUDA
    ``batch_size // passes`` tiles per call, at least one); the outputs are mapped back,
    averaged in probability space, and returned as ``log(mean softmax)`` (computed as a
    log-sum-exp, always finite): logits whose softmax is the averaged probability.
    """

    def __init__(self, module: nn.Module, device: torch.device, batch_size: int,
                 out_side: int, num_classes: int, channels_last: bool = True,
                 threads: int = 1, precision: str = "fp32", tta: str = "none"):
        if precision not in PRECISIONS:
            raise SettingError(f"precision {precision!r} unknown; use fp32, bf16 or fp16")
        self.tta = _tta.check_tta(tta)
        self.transforms = _tta.TRANSFORMS[self.tta]
        self.device = device
        self.batch_size = max(1, int(batch_size))
        # tiles per model call (each brings len(transforms) inputs into the call)
        self.call_size = (1 if device.type == "cpu"
                          else max(1, self.batch_size // len(self.transforms)))
        self.threads = max(1, int(threads))
        self.out_side = out_side
        self.num_classes = num_classes
        self.precision = precision
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.module = module.eval().to(device=device, memory_format=self.memory_format)
        self.forward: Callable = self.module
        self._cuda = device.type == "cuda"
        self._lock = device_lock(device) if self._cuda else None
        self._pinned: dict[str, torch.Tensor] = {}
        self._warned = False

    def __call__(self, tiles: np.ndarray,
                 crop: tuple[int, int] | None = None) -> np.ndarray:
        """Model output for ``tiles`` ``float32[N, C, T, T]`` as ``float32[N, K, o, o]``,
        or with ``crop=(start, size)`` only ``[..., start:start+size, start:start+size]``
        of it as ``float32[N, K, size, size]``."""
        n = len(tiles)
        side = self.out_side if crop is None else crop[1]
        out = np.empty((n, self.num_classes, side, side), np.float32)

        def call(part: np.ndarray, size: int) -> np.ndarray:
            return self._call(part, size, crop)

        if not self._cuda:
            torch.set_num_threads(self.threads)  # OpenMP's thread count is per thread
            halving_calls(call, tiles, self.call_size, out)
            return out
        with self._lock:
            self.call_size = halving_calls(call, tiles, self.call_size, out, self._halved)
        return out

    def _halved(self, old: int, new: int) -> None:
        message = (f"CUDA out of memory on {self.device} with {old} tiles per model call: "
                   f"{new} per call from now on (outputs may differ in the last bits from "
                   f"a run with batch {self.batch_size})")
        _log.warning(message)
        if not self._warned:
            self._warned = True
            warnings.warn(message, BatchHalvedWarning, stacklevel=2)

    def _call(self, part: np.ndarray, size: int,
              crop: tuple[int, int] | None = None) -> np.ndarray:
        """One model call on ``part`` padded with zero tiles to ``size`` (outputs cropped
        to ``crop`` on the device)."""
        with torch.inference_mode():
            batch = self._to_device(part, size)
            if self.tta != "none":
                _tta.check_square(tuple(batch.shape), self.tta)
                batch = torch.cat([_tta.forward(batch, t) for t in self.transforms])
            batch = batch.contiguous(memory_format=self.memory_format)
            dtype = PRECISIONS[self.precision]
            if dtype is None:
                y = self.forward(batch)
            else:
                with torch.autocast(device_type=self.device.type, dtype=dtype):
                    y = self.forward(batch)
            if not isinstance(y, torch.Tensor):
                raise ModelError(
                    f"the model returned a {type(y).__name__}; the contract is one "
                    "float32[N, K, H', W'] logits tensor")
            expect = (len(batch), self.num_classes, self.out_side, self.out_side)
            if tuple(y.shape) != expect:
                raise ModelError(
                    f"the model returned shape {tuple(y.shape)} for input "
                    f"{tuple(batch.shape)}; its spec promises {expect}")
            if self.tta != "none":
                y = self._average(y.float(), size)
            if crop is not None:
                start, side = crop
                y = y[:, :, start:start + side, start:start + side]
            return self._to_host(y.float())[:len(part)]

    def _average(self, y: torch.Tensor, size: int) -> torch.Tensor:
        """``y`` ``(passes·size, K, o, o)``, transform-major, mapped back and averaged in
        probability space: ``log(mean_t softmax(y_t))`` ``(size, K, o, o)``."""
        parts = [_tta.inverse(torch.log_softmax(y[i * size:(i + 1) * size], dim=1), t)
                 for i, t in enumerate(self.transforms)]
        return torch.logsumexp(torch.stack(parts), dim=0) - math.log(len(parts))

    def _to_device(self, part: np.ndarray, size: int) -> torch.Tensor:
        host = torch.from_numpy(np.ascontiguousarray(part))
        if not self._cuda:
            if len(part) < size:
                host = torch.cat([host, host.new_zeros((size - len(part), *host.shape[1:]))])
            return host
        # a pinned staging buffer (reused; calls are serialised by the device lock), so
        # the host-to-device copy can be asynchronous
        pinned = self._buffer("in", (size, *host.shape[1:]))
        pinned[:len(part)].copy_(host)
        pinned[len(part):].zero_()
        return pinned.to(self.device, non_blocking=True)

    def _to_host(self, y: torch.Tensor) -> np.ndarray:
        if not self._cuda:
            return y.cpu().numpy()
        pinned = self._buffer("out", tuple(y.shape))
        pinned.copy_(y, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return pinned.numpy()  # copied into the caller's array before the lock is let go

    def _buffer(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        found = self._pinned.get(name)
        if found is None or tuple(found.shape) != shape:
            found = self._pinned[name] = torch.empty(shape, dtype=torch.float32,
                                                     pin_memory=True)
        return found
