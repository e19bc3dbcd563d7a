"""``tilesegment run`` and ``plan`` with many inputs: several SOURCEs, a glob the shell did
not expand, or ``@paths.txt``, into the folder ``-o`` (one ``<stem>.zarr`` per input; see
:mod:`tilesegment.many`). ``run`` ends with a summary table on stdout and exits 1 if any
input failed."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import click

MASK_SUFFIXES = (".zarr", ".tif", ".tiff")


def single_source(sources: tuple[str, ...], output: str,
                  output_format: str | None) -> str | None:
    """The one input of a run as it always was (one path, ``-o`` a mask file); ``None``
    for a run of many inputs: several SOURCEs, a glob pattern or ``@list`` file, or ``-o``
    naming a folder (ending in ``/``, or an existing folder without a mask suffix)."""
    from tilesegment.many import is_pattern

    folder = output.endswith(("/", os.sep)) or (
        Path(output).is_dir() and Path(output).suffix.lower() not in MASK_SUFFIXES)
    if len(sources) > 1 or folder or any(is_pattern(s) for s in sources):
        return None
    if output_format is not None:
        raise click.UsageError("--output-format is for several inputs into a folder -o; "
                               "with one input the extension of -o decides")
    source = sources[0]
    if not os.path.exists(source):
        raise click.BadParameter(f"Path {source!r} does not exist.",
                                 param_hint="'SOURCE...'")
    return source


def check_many_usage(truth: str | None, output_format: str | None, cog: bool) -> str:
    """Usage errors of a run of many inputs (exit 2); the output format to use."""
    if truth is not None:
        raise click.UsageError("--truth scores one mask: with several inputs, run "
                               "`tilesegment evaluate` on each output")
    fmt = output_format or "zarr"
    if cog and fmt != "tif":
        raise click.UsageError("--cog needs --output-format tif with several inputs")
    return fmt


def run_many(sources: tuple[str, ...], output: str, *, output_format: str,
             overwrite: bool, local_cluster: int | None, gpus: tuple[int, ...],
             dashboard: bool, scheduler: str, progress: bool | None,
             settings: dict[str, Any]) -> None:
    """Run every input into the folder ``output``, print the table; exit 1 if any failed."""
    from tilesegment.cli.run import _cluster, _stop_signals_handled
    from tilesegment.many import expand_sources, many_outputs, segment_many

    paths = expand_sources(sources)
    many_outputs(paths, output, output_format)  # a stem collision: refused before any work
    results = []

    def said(result, index: int, count: int) -> None:
        results.append(result)
        click.echo(f"[{index + 1}/{count}] {result.source}: {_state(result)}", err=True)

    try:
        with warnings.catch_warnings(), _stop_signals_handled(), _cluster(
                local_cluster, dashboard, gpus) as client:
            warnings.showwarning = _once(warnings.showwarning)
            segment_many(
                paths, output, output_format=output_format, overwrite=overwrite,
                scheduler=scheduler if client is None else client, on_result=said,
                progress=sys.stderr.isatty() if progress is None else progress, **settings)
    except KeyboardInterrupt:
        print_table(results, stopped=len(paths) - len(results))
        raise
    print_table(results)
    if any(r.status == "failed" for r in results):
        click.get_current_context().exit(1)


def _once(show):
    """``warnings.showwarning`` that says each warning once, not once per input (the
    pipeline's own ``catch_warnings`` blocks reset Python's "once" registry)."""
    shown: set[tuple] = set()

    def showwarning(message, category, filename, lineno, file=None, line=None) -> None:
        key = (category, str(message))
        if key not in shown:
            shown.add(key)
            show(message, category, filename, lineno, file, line)

    return showwarning


def _state(result) -> str:
    if result.status == "failed":
        return f"failed: {result.reason}"
    n = result.blocks
    blocks = "" if n is None else f", {n} block{'s' if n != 1 else ''}"
    return f"{result.status}{blocks}, {result.seconds:.1f} s → {result.output}"


def print_table(results: list, stopped: int = 0) -> None:
    """The summary on stdout: input, status, blocks, seconds, output, reason (failures);
    then the count of each status (and of inputs not run when ``stopped``)."""
    header = ("input", "status", "blocks", "seconds", "output", "reason")
    rows = [(r.source, r.status, "-" if r.blocks is None else str(r.blocks),
             f"{r.seconds:.1f}", str(r.output), r.reason or "") for r in results]
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]
    right = {2, 3}  # numbers
    for row in (header, *rows):
        cells = [cell.rjust(w) if i in right else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        click.echo("  ".join(cells).rstrip())
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    total = len(results) + stopped
    line = (f"{total} input{'s' if total != 1 else ''}: {counts['done']} done, "
            f"{counts['skipped']} skipped, {counts['failed']} failed")
    if stopped:
        line += f", {stopped} not run (interrupted)"
    click.echo(line)


def plan_many(sources: tuple[str, ...], output: str, *, output_format: str,
              as_json: bool, settings: dict[str, Any]) -> None:
    """Print each input's plan (or why it would be skipped or fails); exit 1 if any
    input's plan fails."""
    from tilesegment.many import expand_sources, many_outputs

    paths = expand_sources(sources)
    outputs = many_outputs(paths, output, output_format)
    overwrite = settings.pop("overwrite", False)
    records, failed = [], False
    with warnings.catch_warnings():
        warnings.showwarning = _once(warnings.showwarning)
        for source, out in zip(paths, outputs, strict=True):
            failed |= _plan_one(source, out, overwrite, as_json, settings, records)
    if as_json:
        click.echo(json.dumps(records, indent=2))
    if failed:
        click.get_current_context().exit(1)


def _plan_one(source: str, out, overwrite: bool, as_json: bool, settings: dict[str, Any],
              records: list[dict]) -> bool:
    """Print (or record) one input's plan; whether it fails."""
    from tilesegment.errors import TilesegmentError
    from tilesegment.many import plan_input
    from tilesegment.plan import describe_plan
    from tilesegment.plan.describe import format_plan

    try:
        plan, existing = plan_input(source, out, overwrite=overwrite, **settings)
    except TilesegmentError as exc:
        reason = " ".join(str(exc).split())
        records.append({"input": source, "output": str(out), "status": "fails",
                        "reason": reason})
        if not as_json:
            click.echo(f"== {source} → {out}\nError: {reason}\n")
        return True
    status = "skip" if existing is not None else "run"
    records.append({"input": source, "output": str(out), "status": status,
                    "plan": describe_plan(plan)})
    if not as_json:
        click.echo(f"== {source} → {out}")
        if existing is not None:
            click.echo("skip: the output is complete, with this plan's fingerprint")
        else:
            for line in format_plan(plan):
                click.echo(line)
        click.echo("")
    return False
