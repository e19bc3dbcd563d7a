"""Many inputs in one run: ``segment_many(sources, output_dir, **settings)``.

Each input is segmented by :func:`~tilesegment.pipeline.segment` into
``output_dir/<stem>.zarr`` (or ``.tif``), one after the other, sharing what costs: the
model is built once (a model given by name, file or function is loaded once per band count,
and the built model stays in this process's pool between inputs), and a scheduler given as
an address or a scheduler file is connected to once, so every input runs on the same
cluster. An input that fails (unreadable, damaged, wrong band count...) is recorded with
its one-line reason and the others go on. An input whose output is already complete and
was made with the same run-plan fingerprint is skipped; an existing output of another
fingerprint is refused for that input unless ``overwrite``.

Sources are paths, glob patterns the shell did not expand (``"scenes/*.tif"``) and
``@list.txt`` files of paths or patterns, one a line (blank lines and ``#`` comments
skipped; relative paths are taken from the current directory, as on the command line).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tilesegment.errors import InputError, OutputExistsError, SettingError, TilesegmentError

__all__ = ["OUTPUT_FORMATS", "InputResult", "expand_sources", "is_pattern", "many_outputs",
           "plan_input", "segment_many"]

OUTPUT_FORMATS = {"zarr": ".zarr", "tif": ".tif", "ome-zarr": ".ome.zarr"}
"""``output_format`` → the suffix of each input's output in the output folder."""

_MAGIC = re.compile(r"[*?[]")
_SOURCE_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr")
"""Double suffixes dropped whole from an input's name to make its output's stem."""
# What a run's fingerprint is checked against when its output exists: provenance key →
# how the new plan says it.
_COMPARED = {
    "model": lambda p: p.model.name,
    "weights_sha256": lambda p: p.model.weights_sha256,
    "tile": lambda p: p.geometry.tile,
    "halo": lambda p: p.geometry.halo,
    "pad_mode": lambda p: p.geometry.pad_mode,
    "blend": lambda p: p.geometry.blend,
    "seed": lambda p: p.model.seed if p.model.random_weights else None,
}


@dataclass
class InputResult:
    """What became of one input of :func:`segment_many`.

    ``status``: ``"done"`` (written now), ``"skipped"`` (its output was already complete
    with this run's fingerprint) or ``"failed"`` (``reason``: one line). ``blocks``: block
    tasks of the output (``None`` when unknown); ``seconds``: wall time spent on this
    input; ``summary``: the :class:`~tilesegment.pipeline.RunSummary` of a ``done`` input.
    """

    source: str
    output: Path
    status: str
    blocks: int | None = None
    seconds: float = 0.0
    reason: str | None = None
    summary: Any = None


def is_pattern(item: str | os.PathLike) -> bool:
    """Whether a source argument is a glob pattern or an ``@list`` file rather than a path
    (an existing path is always a path)."""
    text = os.fspath(item)
    if os.path.lexists(text):
        return False
    return text.startswith("@") or bool(_MAGIC.search(text))


def expand_sources(items: Iterable[str | os.PathLike]) -> list[str]:
    """The input paths that ``items`` name: paths as given, glob patterns expanded (sorted;
    ``**`` recursive; hidden files only when the pattern names them) and ``@file`` lists
    read, in order, each file once (the first spelling kept). InputError (one line) for a
    list file that cannot be read or a pattern that matches nothing."""
    found: list[str] = []
    for item in items:
        text = os.fspath(item)
        if text.startswith("@") and not os.path.lexists(text):
            for line in _list_lines(text[1:]):
                found.extend(_expand(line, f" (in {text})"))
        else:
            found.extend(_expand(text, ""))
    seen: set[str] = set()
    unique = []
    for path in found:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            unique.append(path)
    return unique


def _list_lines(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the list of inputs @{path}: {exc}") from None
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _expand(text: str, where: str) -> list[str]:
    if os.path.lexists(text) or not _MAGIC.search(text):
        return [text]
    matches = sorted(glob.glob(text, recursive=True))
    if not matches:
        raise InputError(f"no file matches {text!r}{where}")
    return matches


def input_stem(source: str) -> str:
    """The name of ``source``'s output without suffix: its file name less its last suffix
    (``a.ome.tif`` → ``a``, ``scene.zarr/`` → ``scene``)."""
    name = Path(source.rstrip("/\\") or source).name
    for double in _SOURCE_SUFFIXES:
        if name.lower().endswith(double) and len(name) > len(double):
            return name[:-len(double)]
    stem = Path(name).stem
    return stem or name


def many_outputs(sources: Sequence[str], output_dir: str | os.PathLike,
                 output_format: str = "zarr") -> list[Path]:
    """``output_dir/<stem><suffix>`` for each source (:func:`input_stem`). Refused before
    any work (SettingError, one line): an unknown format, an ``output_dir`` that names a
    mask file rather than a folder, and two inputs that would write the same output."""
    if output_format not in OUTPUT_FORMATS:
        raise SettingError(f"output format {output_format!r} unknown; use one of "
                           f"{', '.join(OUTPUT_FORMATS)}")
    folder = Path(output_dir).expanduser()
    if folder.suffix.lower() in (".zarr", ".tif", ".tiff") and not folder.is_dir():
        raise SettingError(f"with several inputs -o names a folder (one output per input "
                           f"goes in it), not a mask: {output_dir}")
    if folder.exists() and not folder.is_dir():
        raise SettingError(f"the output folder {output_dir} is a file")
    suffix = OUTPUT_FORMATS[output_format]
    taken: dict[Path, str] = {}
    outputs = []
    for source in sources:
        out = folder / f"{input_stem(source)}{suffix}"
        if out in taken:
            raise SettingError(f"{taken[out]} and {source} would both write {out}: rename "
                               "one, or run them into different output folders")
        taken[out] = source
        outputs.append(out)
    return outputs


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if not isinstance(exc, TilesegmentError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text or type(exc).__name__


def _complete_output(output: Path) -> dict | None:
    """The metadata of the complete tilesegment output at ``output``; None when there is
    none (nothing there, something else, or an unfinished output)."""
    from tilesegment.write import atomic, read_output_meta
    from tilesegment.write.verify import output_problems

    if not atomic.exists(output):
        return None
    try:
        meta = read_output_meta(output)
    except Exception:  # not one of ours: the run refuses it with its own message
        return None
    return None if output_problems(meta) else meta


def plan_input(source: Any, output: str | os.PathLike, *, overwrite: bool = False,
               **settings: Any) -> tuple[Any, dict | None]:
    """The :class:`~tilesegment.plan.model.RunPlan` of one input (built without building
    the model, as ``tilesegment plan``) and, when ``output`` already holds a complete
    output of this plan's fingerprint, that output's metadata (the run skips it). An
    existing output of another fingerprint is :class:`OutputExistsError` naming what
    differs, unless ``overwrite``."""
    from tilesegment.plan import build_plan

    settings.pop("resume", None)  # how to finish an unfinished run: not a plan setting
    existing = None if overwrite else _complete_output(Path(output))
    if existing is None:
        return build_plan(source, output, overwrite=overwrite, resolve=False, **settings), None
    plan = build_plan(source, output, overwrite=True, resolve=False, **settings)
    provenance = existing.get("provenance") or {}
    if provenance.get("fingerprint") == plan.fingerprint:
        return plan, existing
    raise OutputExistsError(f"{output} exists, made with other settings "
                            f"({_differences(provenance, plan)}); pass --overwrite "
                            "to replace it")


def _differences(provenance: dict, plan: Any) -> str:
    """The settings that differ between an output's provenance and a new plan, as
    ``halo 8 → 4``; a general phrase when none of those compared does."""
    changes = []
    for key, new in _COMPARED.items():
        old = provenance.get(key)
        if key in provenance and old != new(plan):
            changes.append(f"{key.replace('_', ' ')} {old} → {new(plan)}")
    if changes:
        return ", ".join(changes)
    old = str(provenance.get("fingerprint") or "none")[:12]
    return (f"fingerprint {old}… ≠ {plan.fingerprint[:12]}…: other settings, or the input "
            "changed since")


@contextlib.contextmanager
def _shared_scheduler(scheduler: Any) -> Iterator[Any]:
    """One Client for every input when ``scheduler`` is an address or a scheduler file;
    anything else as it is."""
    if not isinstance(scheduler, str) or scheduler in ("threads", "synchronous"):
        yield scheduler
        return
    from distributed import Client

    json_file = scheduler.endswith(".json")
    with Client(scheduler_file=scheduler) if json_file else Client(scheduler) as client:
        yield client


def segment_many(
    sources: Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    output_format: str = "zarr",
    overwrite: bool = False,
    scheduler: Any = None,
    on_result: Callable[[InputResult, int, int], None] | None = None,
    **settings: Any,
) -> list[InputResult]:
    """Segment each of ``sources`` into ``output_dir/<stem>.zarr`` (``output_format="tif"``:
    ``.tif``) with the same settings (the keyword arguments of ``segment()``), and return
    one :class:`InputResult` per input, in order.

    ``sources``: paths, glob patterns and ``@list`` files (:func:`expand_sources`). Two
    inputs with the same stem are refused before any work (SettingError), as is
    ``returns`` or ``output``. The model is built once for all inputs of one band count;
    ``scheduler`` (a ``distributed.Client``, an address or a scheduler file) serves every
    input. A failing input is recorded (``status="failed"``, ``reason``) and the others
    go on; an output already complete with this run's fingerprint is ``"skipped"``; one
    of another fingerprint fails for its input unless ``overwrite``. ``on_result(result,
    index, count)`` is called after each input (the CLI's progress). Ctrl-C stops them all
    (KeyboardInterrupt, as ``segment()``).
    """
    for refused in ("returns", "output", "source"):
        if refused in settings:
            raise SettingError(f"segment_many writes one output per input: {refused}= "
                               "does not apply (use segment() for one input)")
    paths = expand_sources([sources] if isinstance(sources, str | os.PathLike) else sources)
    if not paths:
        raise InputError("no inputs given")
    outputs = many_outputs(paths, output_dir, output_format)
    if settings.get("cog") and output_format != "tif":
        raise SettingError("cog needs output_format 'tif' (--output-format tif)")
    from tilesegment.models.custom import reusing_models
    from tilesegment.workers import hold_models

    results: list[InputResult] = []
    with _shared_scheduler(scheduler) as shared, hold_models(), reusing_models():
        for index, (source, output) in enumerate(zip(paths, outputs, strict=True)):
            result = _segment_one(source, output, overwrite, shared, settings)
            results.append(result)
            if on_result is not None:
                on_result(result, index, len(paths))
    return results


def _segment_one(source: str, output: Path, overwrite: bool, scheduler: Any,
                 settings: dict[str, Any]) -> InputResult:
    from tilesegment.pipeline import segment
    from tilesegment.write import atomic

    started = time.perf_counter()
    try:
        if not overwrite and atomic.exists(output):
            _, existing = plan_input(source, output, scheduler=scheduler, **settings)
            if existing is not None:
                completion = existing.get("completion") or {}
                total = completion.get("blocks_total")
                return InputResult(source, output, "skipped",
                                   int(total) if total is not None else None,
                                   time.perf_counter() - started)
        summary = segment(source, output, overwrite=overwrite, scheduler=scheduler,
                          **settings)
    except Exception as exc:  # one input's failure, whatever it is, is its own
        return InputResult(source, output, "failed", None, time.perf_counter() - started,
                           reason=_one_line(exc))
    return InputResult(source, output, "done", summary.blocks, summary.seconds,
                       summary=summary)
