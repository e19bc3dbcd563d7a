"""``tilesegment run``: segment one raster or slide into a Zarr or GeoTIFF mask."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import click

from tilesegment.cli.config import load_recipe
from tilesegment.cli.evaluate import report_and_print, truth_options
from tilesegment.cli.sections import SectionedCommand

PAD_MODES = ("reflect", "symmetric", "edge", "constant")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals that stop a run cleanly: Ctrl-C, a polite kill, a closed terminal."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGTERM or SIGHUP. It unwinds like Ctrl-C (a KeyboardInterrupt), so
    the partial output is removed; the CLI exits with 128 + ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _check_scheduler(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """threads, synchronous, an address with a scheme, or an existing scheduler file."""
    if value in ("threads", "synchronous") or "://" in value:
        return value
    if value.endswith(".json"):
        if not Path(value).is_file():
            raise click.BadParameter(f"scheduler file {value!r} does not exist", ctx, param)
        return value
    raise click.BadParameter(
        f"{value!r}: use threads, synchronous, tcp://HOST:PORT or a scheduler file (.json)",
        ctx, param)


RUN_SECTIONS = (
    ("Input", ("source", "output", "config", "level", "mpp")),
    ("Model", ("model", "weights", "backbone_weights", "classes", "normalization", "device",
               "seed")),
    ("Tiling", ("tile", "halo", "pad_mode", "pad_value", "blend", "batch_size",
                "block_size")),
    ("Output", ("save_probabilities", "save_disagreement", "cog", "overwrite")),
    ("Execution", ("scheduler", "local_cluster", "dashboard", "workers", "progress")),
    ("Dense CRF", ("crf", "crf_preset", "crf_iterations", "crf_w1", "crf_theta_alpha",
                   "crf_theta_beta", "crf_w2", "crf_theta_gamma")),
    ("Scoring against a truth mask", ("truth", "ignore_index", "instances", "mapping",
                                      "allow_crs_alias", "resample_truth", "seam_width",
                                      "core", "json_out", "csv_out", "report_dir")),
)


@click.command(cls=SectionedCommand, sections=RUN_SECTIONS)
@click.argument("source", type=click.Path(exists=True, dir_okay=True))
@click.option("-o", "--output", type=click.Path(), required=True,
              help="Output mask: .zarr (Zarr v3) or .tif (GeoTIFF).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), is_eager=True,
              expose_value=False, callback=load_recipe,
              help="TOML recipe (see pipelines/) with these settings; flags override it.")
@click.option("-m", "--model", default="unet-tiny", show_default=True,
              help="Registered model name (see `tilesegment models`), a checkpoint "
              "(NAME.safetensors with its NAME.json card), a TorchScript file, or "
              "package.module:function returning a torch.nn.Module.")
@click.option("-w", "--weights", type=click.Path(exists=True, dir_okay=False),
              help="Weights file (.safetensors, or .pt read with weights_only). "
                   "Without it the model has RANDOM weights.")
@click.option("--backbone-weights", type=click.Path(exists=True, dir_okay=False),
              help="Local torchvision VGG16 state-dict file for the backbone of fcn*/"
                   "deeplab-largefov (fc6/fc7 included); the class scores stay random.")
@click.option("--classes", type=click.IntRange(min=1), help="Number of classes K.")
@click.option("--tile", type=click.IntRange(min=1), help="Tile side in px (model input). "
              "Default: the model's.")
@click.option("--halo", type=click.IntRange(min=0), help="Context in px on each side of a "
              "core. Default: the model's receptive radius, aligned to its output stride.")
@click.option("--pad-mode", type=click.Choice(PAD_MODES), default="reflect", show_default=True,
              help="How the raster edge is extended (NumPy names; 'symmetric' repeats the "
                   "edge pixel, as Dask's 'reflect').")
@click.option("--pad-value", type=float, default=0.0, show_default=True,
              help="Fill for --pad-mode constant, in raw pixel units.")
@click.option("--blend", type=click.Choice(["crop", "gaussian"]), default="crop",
              show_default=True, help="crop: each pixel from one tile's core; gaussian: "
              "overlapping tiles blended in logit space.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Tiles per model call.")
@click.option("--block-size", type=click.IntRange(min=1), help="Output block (= chunk) side "
              "in px. Default: a whole number of cores near 1024.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--level", type=click.IntRange(min=0), help="Pyramid level of a slide.")
@click.option("--mpp", type=click.FloatRange(min=0, min_open=True),
              help="Pixel size in the raster's unit (µm for slides, CRS units for "
                   "GeoTIFF): the coarsest level at or finer than it, resampled if finer.")
@click.option("--normalize", "normalization", type=click.Choice(["spec", "raster", "none"]),
              default="spec", show_default=True, help="Input normalisation: the model's, "
              "whole-raster statistics, or none.")
@click.option("--save-probabilities", is_flag=True, help="Also write per-class probabilities.")
@click.option("--save-disagreement", is_flag=True, help="With --blend gaussian: also write "
              "where overlapping tiles disagree on the class (a seam diagnostic).")
@click.option("--cog", is_flag=True, help="Write a Cloud-Optimized GeoTIFF with overviews.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--scheduler", default="threads", show_default=True,
              callback=_check_scheduler,
              help="threads, synchronous, a scheduler address (tcp://host:port) or a "
                   "scheduler file (.json).")
@click.option("--local-cluster", "local_cluster", type=click.IntRange(min=1),
              help="Start a distributed cluster of N worker processes (one per GPU) on "
                   "127.0.0.1, closed to other processes (TLS with temporary credentials).")
@click.option("--dashboard", is_flag=True,
              help="With --local-cluster: serve the Dask dashboard on 127.0.0.1 (readable "
                   "by every local user); without it the cluster runs no HTTP server.")
@click.option("--workers", type=click.IntRange(min=1),
              help="Concurrent block tasks on the local threaded scheduler (default: one "
                   "per CPU core; each runs torch on one thread).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of random weights (only without --weights).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar (default: on when stderr is a terminal).")
@click.option("--crf", is_flag=True, help="Refine each block with a fully connected CRF "
              "(Krähenbühl & Koltun 2011, as DeepLab v1) over the block plus its halo.")
@click.option("--crf-preset", type=click.Choice(["krahenbuhl", "deeplab"]),
              default="krahenbuhl", show_default=True,
              help="CRF kernel parameters: Krähenbühl's (w1 10, θα 80, θβ 13, w2 3, θγ 3) or "
                   "DeepLab-LargeFOV's (4, 121, 5, 3, 3).")
@click.option("--crf-iterations", type=click.IntRange(min=1), default=10, show_default=True,
              help="Mean-field iterations.")
@click.option("--crf-w1", type=click.FloatRange(min=0), help="Appearance kernel weight.")
@click.option("--crf-theta-alpha", type=click.FloatRange(min=0, min_open=True),
              help="Appearance kernel position scale θα (px).")
@click.option("--crf-theta-beta", type=click.FloatRange(min=0, min_open=True),
              help="Appearance kernel colour scale θβ (8-bit units).")
@click.option("--crf-w2", type=click.FloatRange(min=0), help="Smoothness kernel weight.")
@click.option("--crf-theta-gamma", type=click.FloatRange(min=0, min_open=True),
              help="Smoothness kernel position scale θγ (px).")
@click.option("--truth", type=click.Path(exists=True),
              help="Truth mask: evaluate the written mask against it (see `evaluate`).")
@truth_options
def run(source: str, output: str, model: str, weights: str | None,
        backbone_weights: str | None, classes: int | None,
        tile: int | None, halo: int | None, pad_mode: str, pad_value: float, blend: str,
        batch_size: int, block_size: int | None, device: str, level: int | None,
        mpp: float | None, normalization: str, save_probabilities: bool,
        save_disagreement: bool, cog: bool,
        overwrite: bool, scheduler: str, local_cluster: int | None, dashboard: bool,
        workers: int | None,
        seed: int, progress: bool | None, crf: bool, crf_preset: str, crf_iterations: int,
        crf_w1: float | None, crf_theta_alpha: float | None, crf_theta_beta: float | None,
        crf_w2: float | None, crf_theta_gamma: float | None, truth: str | None,
        **truth_settings) -> None:
    """Segment SOURCE (GeoTIFF, slide TIFF/SVS/OME-TIFF, or Zarr) into OUTPUT."""
    if level is not None and mpp is not None:
        raise click.UsageError("--level and --mpp are mutually exclusive")
    if cog and not output.lower().endswith((".tif", ".tiff")):
        raise click.UsageError("--cog needs a .tif output")
    if dashboard and not local_cluster:
        raise click.UsageError("--dashboard needs --local-cluster (a cluster of your own "
                               "serves its dashboard itself)")
    from tilesegment.pipeline import segment
    from tilesegment.write.lock import output_lock

    crf_params = None
    if crf:
        crf_params = _crf_params(crf_preset, crf_iterations, w1=crf_w1,
                                 theta_alpha=crf_theta_alpha, theta_beta=crf_theta_beta,
                                 w2=crf_w2, theta_gamma=crf_theta_gamma)

    if truth is not None:  # a truth off the mask's grid is refused before the run, not after
        from tilesegment.evaluation.align import check_truth_for_run

        check_truth_for_run(source, truth, level=level, mpp=mpp,
                            allow_crs_alias=truth_settings.get("allow_crs_alias", False),
                            resample_truth=truth_settings.get("resample_truth", False))
    # The output's lock before the cluster starts: a second run onto the same output is
    # refused before it spends anything (segment takes the same lock again, re-entrantly).
    with _stop_signals_handled(), output_lock(output), _cluster(local_cluster,
                                                                 dashboard) as client:
        summary = segment(
            source, output, model=model, weights=weights, backbone_weights=backbone_weights,
            classes=classes, tile=tile,
            halo=halo, pad_mode=pad_mode, pad_value=pad_value, blend=blend,
            batch_size=batch_size, block_size=block_size, device=device, level=level,
            mpp=mpp, normalization=normalization, save_probabilities=save_probabilities,
            save_disagreement=save_disagreement, crf=crf_params,
            cog=cog, overwrite=overwrite, scheduler=scheduler if client is None else client,
            workers=workers, seed=seed, protect=(truth,) if truth else (),
            progress=sys.stderr.isatty() if progress is None else progress)
    _report(summary)
    if truth is not None:
        report_and_print(str(summary.output), truth, classes=classes, **truth_settings)


@contextlib.contextmanager
def _cluster(workers: int | None, dashboard: bool) -> Iterator[object]:
    """The Client of a cluster of ``workers`` processes for this run (None without)."""
    if not workers:
        yield None
        return
    from tilesegment.execute import start_local_cluster

    # A closed terminal sends SIGHUP, and Ctrl-C SIGINT, to the whole job: this process
    # stops the run and closes the cluster, so its worker processes (and multiprocessing's
    # helper) must not die of it first — a worker's asyncio runner turns SIGINT into a
    # KeyboardInterrupt traceback. They inherit both blocked from the threads that start them.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGINT})
    client = None
    try:
        client = start_local_cluster(workers, dashboard=dashboard)
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
                    f".<output>.partial-* may be left)\n".encode())
    os._exit(128 + signum)


def _crf_params(preset: str, iterations: int, **overrides):
    import dataclasses

    from tilesegment.models.crf import CRFParams

    base = CRFParams.deeplab(iterations) if preset == "deeplab" else CRFParams.krahenbuhl(
        iterations)
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def _report(summary) -> None:
    h, w = summary.shape
    blocks = f"{summary.blocks} block{'s' if summary.blocks != 1 else ''}"
    click.echo(f"wrote {summary.output}  ({w} × {h} px, {summary.tiles} tiles in {blocks}, "
               f"{summary.seconds:.1f} s)")
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
