"""``tilesegment run``: segment one raster or slide into a Zarr or GeoTIFF mask."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import click

from tilesegment.cli.evaluate import report_and_print
from tilesegment.cli.options import (
    RESUME_OPTION,
    RUN_SECTIONS,
    TRUTH_SETTINGS,
    check_truth,
    check_usage,
    run_options,
    segment_settings,
)
from tilesegment.cli.polygons import (
    export_and_report,
    export_settings,
    precheck,
    run_polygon_options,
)
from tilesegment.cli.run_many import single_source
from tilesegment.cli.sections import SectionedCommand

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals that stop a run cleanly: Ctrl-C, a polite kill, a closed terminal."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGTERM or SIGHUP. It unwinds like Ctrl-C (a KeyboardInterrupt): the
    finished blocks are kept for ``--resume`` (the partial output is removed when there are
    none); the CLI exits with 128 + ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@click.command(cls=SectionedCommand, sections=RUN_SECTIONS)
@run_options
@RESUME_OPTION
@run_polygon_options
def run(sources: tuple[str, ...], output: str, level: int | None, mpp: float | None,
        cog: bool, overwrite: bool, resume: bool, local_cluster: int | None, dashboard: bool,
        scheduler: str, progress: bool | None, classes: int | None, truth: str | None,
        output_format: str | None, devices: str | None, **options: Any) -> None:
    """Segment SOURCE (GeoTIFF, slide TIFF/SVS/OME-TIFF, or Zarr) into OUTPUT.

    Several SOURCEs (or a quoted glob such as 'scenes/*.tif', or @paths.txt with one path
    a line) go into the folder OUTPUT, one <stem>.zarr each, with one model and one
    cluster; a summary table follows, exit 1 if any input failed.
    """
    source = single_source(sources, output, output_format)
    polygon_settings = export_settings(options)
    if source is None:
        if polygon_settings is not None:
            raise click.UsageError("--polygons and --qupath take one SOURCE")
        from tilesegment.cli.run_many import check_many_usage, run_many

        fmt = check_many_usage(truth, output_format, cog)
        from tilesegment.many import OUTPUT_FORMATS

        check_usage(f"x{OUTPUT_FORMATS[fmt]}", level, mpp, cog, dashboard, local_cluster,
                    devices, scheduler, options["device"])
        for name in TRUTH_SETTINGS:
            options.pop(name)
        settings = segment_settings(truth=None, **options)
        gpus = _gpu_indices(devices, settings)
        run_many(sources, output, output_format=fmt, overwrite=overwrite,
                 local_cluster=local_cluster, gpus=gpus, dashboard=dashboard,
                 scheduler=scheduler, progress=progress, settings=dict(
                     settings, classes=classes, level=level, mpp=mpp, cog=cog,
                     resume=resume))
        return
    check_usage(output, level, mpp, cog, dashboard, local_cluster, devices, scheduler,
                options["device"])
    from tilesegment.pipeline import segment
    from tilesegment.write.lock import output_lock

    truth_settings = {name: options.pop(name) for name in TRUTH_SETTINGS}
    settings = segment_settings(truth=truth, **options)
    gpus = _gpu_indices(devices, settings)
    check_truth(source, truth, level, mpp, truth_settings)
    protect = tuple(p for p in (source, truth, output) if p is not None)
    precheck(polygon_settings, list(protect), overwrite)
    # The output's lock before the cluster starts: a second run onto the same output is
    # refused before it spends anything (segment takes the same lock again, re-entrantly).
    with _stop_signals_handled(), output_lock(output), _cluster(local_cluster, dashboard,
                                                                 gpus) as client:
        summary = segment(
            source, output, classes=classes, level=level, mpp=mpp, cog=cog,
            overwrite=overwrite, resume=resume,
            scheduler=scheduler if client is None else client,
            progress=sys.stderr.isatty() if progress is None else progress, **settings)
    _report(summary)
    if polygon_settings is not None:
        export_and_report(summary.output, polygon_settings, overwrite=overwrite,
                          protect=protect)
    if truth is not None:
        report_and_print(str(summary.output), truth, classes=classes, **truth_settings)


def _gpu_indices(devices: str | None, settings: dict[str, Any]) -> tuple[int, ...]:
    """The CUDA indices ``--devices`` names (none without it); with it the run computes on
    CUDA (each worker's own ``cuda:0``)."""
    if devices is None:
        return ()
    from tilesegment.workers import parse_devices

    settings["device"] = "cuda"
    return parse_devices(devices)


@contextlib.contextmanager
def _cluster(workers: int | None, dashboard: bool,
             gpus: tuple[int, ...] = ()) -> Iterator[object]:
    """The Client of a cluster of ``workers`` CPU processes, or of one process per GPU
    index in ``gpus``, for this run (None without either)."""
    if not workers and not gpus:
        yield None
        return
    from tilesegment.execute import start_gpu_pool, start_local_cluster

    # A closed terminal sends SIGHUP, and Ctrl-C SIGINT, to the whole job: this process
    # stops the run and closes the cluster, so its worker processes (and multiprocessing's
    # helper) must not die of it first — a worker's asyncio runner turns SIGINT into a
    # KeyboardInterrupt traceback. They inherit both blocked from the threads that start them.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGINT})
    client = None
    try:
        client = (start_gpu_pool(gpus, dashboard=dashboard) if gpus
                  else start_local_cluster(workers, dashboard=dashboard))
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a pending signal lands here
        if dashboard:
            click.echo(f"dashboard: {client.dashboard_link}", err=True)
        yield client
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if client is not None:
            cluster = client.cluster
            client.close()
            cluster.close()


@contextlib.contextmanager
def _stop_signals_handled() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP unwind like Ctrl-C (:class:`Interrupted`), and
    a second stop signal ends the process at once; the previous handlers come back after.

    Only the main thread can set handlers: elsewhere (a command invoked from a worker
    thread) the block runs with the handlers it has.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        signal.signal(sig, _first_stop)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _first_stop(signum: int, frame) -> None:
    # The cleanup this starts (abort, closing a cluster) must not be cut by a second
    # signal's exception: a second signal ends the process instead.
    for sig in STOP_SIGNALS:
        signal.signal(sig, _second_stop)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(signum)


def _second_stop(signum: int, frame) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"{signal.Signals(signum).name} again: stopped at once (a hidden "
                    f".<output>.partial-* may be left: --resume finishes it)\n".encode())
    os._exit(128 + signum)


def _report(summary) -> None:
    h, w = summary.shape
    blocks = f"{summary.blocks} block{'s' if summary.blocks != 1 else ''}"
    click.echo(f"wrote {summary.output}  ({w} × {h} px, {summary.tiles} tiles in {blocks}, "
               f"{summary.seconds:.1f} s)")
    if summary.tiles_skipped:
        click.echo(f"  skipped {summary.tiles_skipped} tile"
                   f"{'s' if summary.tiles_skipped != 1 else ''} with no tissue or only "
                   "nodata (background class 0 / nodata, model not run)")
    total = max(int(summary.class_counts.sum()), 1)
    for name, count in zip(summary.class_names, summary.class_counts, strict=True):
        click.echo(f"  {name:<16} {count / total:7.2%}")
    if summary.nodata_pixels:
        click.echo(f"  {'(nodata)':<16} {summary.nodata_pixels} px")
    if summary.settings.get("random_weights"):
        click.echo("  RANDOM weights: this mask is a test fixture, it means nothing "
                   "(pass --weights or a trained checkpoint)")
    if summary.nonfinite_logit_pixels:
        click.echo(f"  {'(NaN/inf logits)':<16} {summary.nonfinite_logit_pixels} px "
                   "(nodata in the mask)")
    if summary.nonfinite_input_pixels:
        click.echo(f"  {'(±inf input)':<16} {summary.nonfinite_input_pixels} px "
                   "(treated as missing)")
