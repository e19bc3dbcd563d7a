"""The exception hierarchy: one root, each leaf also a fitting builtin.

The CLI turns any :class:`TilesegmentError` into a one-line message and exit status 1.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


class TilesegmentError(Exception):
    """Root of every error tilesegment raises on purpose."""


class InputError(TilesegmentError, ValueError):
    """The input raster cannot be opened or read (missing, damaged, unsupported)."""


class DamagedInputError(InputError):
    """The input file is damaged: truncated, a TIFF block past the end, a corrupt block."""


class GeometryError(TilesegmentError, ValueError):
    """Tile, halo or block sizes that do not fit the model or the raster."""


class ModelError(TilesegmentError, ValueError):
    """Unknown model name, bad weights file, or a model that breaks the contract."""


class OutputExistsError(TilesegmentError, FileExistsError):
    """The output exists and ``overwrite`` was not asked for."""


class OutputError(TilesegmentError, OSError):
    """The output cannot be written."""


class SettingError(TilesegmentError, ValueError):
    """A setting out of its legal range or of the wrong kind (``returns``, ``batch_size``,
    ``normalization``, ``device``, ``pad_value``...), refused before any pixel is read."""


class LimitError(TilesegmentError, ValueError):
    """A run that exceeds a resource limit: memory, the number of block tasks, the number
    of classes a mask can hold. Checked before any pixel is read or any model is built."""
class OutputLockedError(OutputError):
    """Another run is writing the same output (it holds the output's lock file)."""


class UnfinishedOutputError(OutputError):
    """The output has an unfinished run (its block store, writer gone): refused without
    ``resume`` or ``overwrite``, or ``resume`` with other settings."""


class BlockFailedError(TilesegmentError, RuntimeError):
    """A block task failed in a way that names no other cause: it killed every worker
    process that ran it."""


class ResumeWarning(UserWarning):
    """``resume`` was asked for but there was nothing to resume: the run starts afresh."""


class SeamWarning(UserWarning):
    """A halo below the model's receptive field, or cores off its output-stride grid."""


class SlowPrecisionWarning(UserWarning):
    """``--precision bf16`` on the CPU: allowed, usually slower than fp32 there."""


class BatchHalvedWarning(UserWarning):
    """CUDA ran out of memory: the batch of model calls was halved (said once per model
    and worker process)."""


class RandomWeightsWarning(UserWarning):
    """A model was built without weights: its output is meaningless except for testing."""


class StaleOutputWarning(UserWarning):
    """What a killed run left beside an output (its block store, an old output moved aside)
    was removed by the next run onto that output, or left in place because it may not be
    removed safely; the message names it and says why."""


class NonFiniteWarning(UserWarning):
    """Input pixels holding ±inf (or values beyond float32's range), or model logits that
    are NaN/inf: those pixels became nodata in the mask (counted in the message)."""


def portable_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Make a task's :class:`TilesegmentError` travel between processes intact.

    ``distributed`` pickles an exception together with its chained causes; a cause from a
    C library (GDAL's, say) may not unpickle, and the client then gets a bare ``Exception``.
    The task re-raises a fresh copy of our error with no cause or context attached.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TilesegmentError as exc:
            fresh = type(exc)(*exc.args)
        raise fresh

    return wrapper


class UnsafeOutputError(OutputError):
    """The output path is an input, holds or lies inside an input, or holds something that is
    not a tilesegment output: refused whatever ``overwrite`` says."""


class IncompleteOutputError(InputError):
    """A tilesegment output that is incomplete or inconsistent: a partial, missing blocks,
    no completion record, or layers from different runs."""


class CRFSkippedWarning(UserWarning):
    """``--crf`` (no kernel values) with a model whose card records "no CRF": ``tune-crf``
    found no setting that beat the network alone, so the run skips the CRF."""
