"""The options ``run`` and ``plan`` share, defined once: one decorator for them, the
sections ``--help`` groups them in, and the translation of their values into the keyword
arguments of ``segment()`` / ``build_plan()``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tilesegment.cli.config import load_recipe
from tilesegment.cli.evaluate import truth_alignment_options, truth_options

PAD_MODES = ("reflect", "symmetric", "edge", "constant")


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
    ("Input", ("sources", "output", "config", "level", "mpp")),
    ("Model", ("model", "weights", "backbone_weights", "classes", "normalization", "device",
               "seed")),
    ("Tiling", ("tile", "halo", "pad_mode", "pad_value", "blend", "batch_size",
                "block_size")),
    ("Output", ("output_format", "save_probabilities", "save_disagreement", "cog",
                "overwrite", "resume", "ome_zarr_image")),
    ("Execution", ("scheduler", "local_cluster", "devices", "dashboard", "workers",
                   "precision", "compile", "progress", "tta")),
    ("Dense CRF", ("crf", "crf_preset", "crf_iterations", "crf_w1", "crf_theta_alpha",
                   "crf_theta_beta", "crf_w2", "crf_theta_gamma")),
    ("Skipping empty tiles", ("tissue", "tissue_mask")),
    ("Scoring against a truth mask", ("truth", "ignore_index", "instances", "mapping",
                                      "allow_crs_alias", "resample_truth", "seam_width",
                                      "core", "json_out", "csv_out", "report_dir")),
    ("Polygons", ("polygons", "qupath", "qupath_objects", "min_area", "simplify",
                  "skip_classes")),
)


OPTIONS = (
    click.argument("sources", metavar="SOURCE...", nargs=-1, required=True),
    click.option("-o", "--output", type=click.Path(), required=True,
                 help="Output mask: .zarr (Zarr v3), .tif (GeoTIFF) or .ome.zarr (OME-Zarr "
                 "label pyramid). With several inputs "
                 "(or a glob, or @paths.txt): a folder, one <stem>.zarr per input."),
    click.option("--config", type=click.Path(exists=True, dir_okay=False), is_eager=True,
                 expose_value=False, callback=load_recipe,
                 help="TOML recipe (see pipelines/) with these settings; flags override it."),
    click.option("-m", "--model", default="nuclei", show_default=True,
                 help="Registered model name (see `tilesegment models`), a checkpoint "
                 "(NAME.safetensors with its NAME.json card), a TorchScript file, or "
                 "package.module:function returning a torch.nn.Module."),
    click.option("-w", "--weights", type=click.Path(exists=True, dir_okay=False),
                 help="Weights file (.safetensors, or .pt read with weights_only). "
                   "Without it the model has RANDOM weights."),
    click.option("--backbone-weights", type=click.Path(exists=True, dir_okay=False),
                 help="Local torchvision VGG16 state-dict file for the backbone of fcn*/"
                   "deeplab-largefov (fc6/fc7 included); the class scores stay random."),
    click.option("--classes", type=click.IntRange(min=1), help="Number of classes K."),
    click.option("--tile", type=click.IntRange(min=1), help="Tile side in px (model input). "
                 "Default: the model's."),
    click.option("--halo", type=click.IntRange(min=0), help="Context in px on each side of a "
                 "core. Default: the model's receptive radius, aligned to its output stride."),
    click.option("--pad-mode", type=click.Choice(PAD_MODES), default="reflect", show_default=True,
                 help="How the raster edge is extended (NumPy names; 'symmetric' repeats the "
                   "edge pixel, as Dask's 'reflect')."),
    click.option("--pad-value", type=float, default=0.0, show_default=True,
                 help="Fill for --pad-mode constant, in raw pixel units."),
    click.option("--blend", type=click.Choice(["crop", "gaussian", "gaussian:tilesegment",
                                                "gaussian:monai", "gaussian:nnunet"]),
                 default="crop", show_default=True, help="crop: each pixel from one tile's "
                 "core; gaussian: overlapping tiles blended in logit space, with a weight map "
                 "σ = side/8: gaussian (= :tilesegment, floor 1e-3), :monai (MONAI's), "
                 ":nnunet (nnU-Net's)."),
    click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
                 help="Tiles per model call."),
    click.option("--block-size", type=click.IntRange(min=1), help="Output block (= chunk) side "
                 "in px. Default: a whole number of cores near 1024."),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
    click.option("--level", type=click.IntRange(min=0), help="Pyramid level of a slide."),
    click.option("--mpp", type=click.FloatRange(min=0, min_open=True),
                 help="Pixel size in the raster's unit (µm for slides, CRS units for "
                   "GeoTIFF): the coarsest level at or finer than it, resampled if finer."),
    click.option("--normalize", "normalization", type=click.Choice(["spec", "raster", "none"]),
                 default="spec", show_default=True, help="Input normalisation: the model's, "
                 "whole-raster statistics, or none."),
    click.option("--save-probabilities", is_flag=True, help="Also write per-class probabilities."),
    click.option("--save-disagreement", is_flag=True, help="With --blend gaussian: also write "
                 "where overlapping tiles disagree on the class (a seam diagnostic)."),
    click.option("--output-format", type=click.Choice(["zarr", "tif", "ome-zarr"]),
                 help="With several inputs: the kind of each output in the -o folder "
                 "(default zarr). One input with a file -o: its extension decides."),
    click.option("--cog", is_flag=True, help="Write a Cloud-Optimized GeoTIFF with overviews."),
    click.option("--ome-zarr-image", "ome_zarr_image", type=click.Choice(["none", "copy"]),
                 default="none", show_default=True,
                 help="With -o *.ome.zarr: copy the input's image (its pyramid levels) into "
                 "the container, the labels under labels/mask, so viewers show both."),
    click.option("--overwrite", is_flag=True, help="Replace an existing output (or discard "
                 "an unfinished run of it)."),
    click.option("--scheduler", default="threads", show_default=True,
                 callback=_check_scheduler,
                 help="threads, synchronous, a scheduler address (tcp://host:port) or a "
                   "scheduler file (.json)."),
    click.option("--local-cluster", "local_cluster", type=click.IntRange(min=1),
                 help="Start a distributed cluster of N CPU worker processes on "
                   "127.0.0.1, closed to other processes (TLS with temporary credentials)."),
    click.option("--devices", metavar="cuda:0,cuda:1,...|all",
                 help="Start one worker process per GPU named (each sees only its own GPU, "
                   "two block tasks in flight), closed like --local-cluster; dask-cuda's "
                   "LocalCUDACluster when installed."),
    click.option("--dashboard", is_flag=True,
                 help="With --local-cluster or --devices: serve the Dask dashboard on "
                   "127.0.0.1 (readable by every local user); without it the cluster runs "
                   "no HTTP server."),
    click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32",
                 show_default=True, help="Model calls in float32, or under autocast in "
                 "bfloat16/float16 (fp16 needs CUDA; bf16 on the CPU is allowed but slow)."),
    click.option("--compile", "compile", is_flag=True,
                 help="torch.compile the model (once per worker process; the first blocks "
                   "wait for the compilation)."),
    click.option("--tta", type=click.Choice(["none", "flips", "d4"]), default="none",
                 show_default=True, help="Test-time augmentation: average each tile's "
                 "probabilities over flips (4 model passes) or flips and 90° turns (d4, 8)."),
    click.option("--workers", type=click.IntRange(min=1),
                 help="Concurrent block tasks on the local threaded scheduler (default: one "
                   "per CPU core; each runs torch on one thread)."),
    click.option("--seed", type=int, default=0, show_default=True,
                 help="Seed of random weights (only without --weights)."),
    click.option("--progress/--no-progress", default=None,
                 help="Progress bar (default: on when stderr is a terminal)."),
    click.option("--crf", is_flag=True, help="Refine each block with a fully connected CRF "
                 "(Krähenbühl & Koltun 2011, as DeepLab v1) over the block plus its halo."),
    click.option("--crf-preset", type=click.Choice(["krahenbuhl", "deeplab"]),
                 help="CRF kernel parameters: Krähenbühl's (w1 10, θα 80, θβ 13, w2 3, θγ 3) or "
                   "DeepLab-LargeFOV's (4, 121, 5, 3, 3). Default: the model card's tuned "
                   "setting (tilesegment tune-crf) if it has one, else krahenbuhl; any CRF "
                   "value given means the preset."),
    click.option("--crf-iterations", type=click.IntRange(min=1),
                 help="Mean-field iterations (default 10, or the card's tuned setting)."),
    click.option("--crf-w1", type=click.FloatRange(min=0), help="Appearance kernel weight."),
    click.option("--crf-theta-alpha", type=click.FloatRange(min=0, min_open=True),
                 help="Appearance kernel position scale θα (px)."),
    click.option("--crf-theta-beta", type=click.FloatRange(min=0, min_open=True),
                 help="Appearance kernel colour scale θβ (8-bit units)."),
    click.option("--crf-w2", type=click.FloatRange(min=0), help="Smoothness kernel weight."),
    click.option("--crf-theta-gamma", type=click.FloatRange(min=0, min_open=True),
                 help="Smoothness kernel position scale θγ (px)."),
    click.option("--tissue", type=click.Choice(["auto", "otsu", "none"]), default="auto",
                 show_default=True,
                 help="Skip tiles of glass: otsu computes a tissue mask from a low-resolution "
                 "level (Otsu on saturation); auto = otsu for RGB slides, none otherwise. "
                 "Tiles that are all nodata are skipped in every mode."),
    click.option("--tissue-mask", "tissue_mask", type=click.Path(exists=True),
                 help="Your own tissue mask (a raster at any resolution covering the input; "
                 "non-zero = tissue) instead of --tissue."),
    click.option("--truth", type=click.Path(exists=True),
                 help="Truth mask: evaluate the written mask against it (see `evaluate`)."),
    truth_options,
)
"""The parameters of ``run`` and ``plan``, in order (decorators, outermost first)."""


def run_options(f):
    """SOURCE, ``-o/--output`` and every option of ``run``."""
    for option in reversed(OPTIONS):
        f = option(f)
    return f


def plan_options(f):
    """The options of ``run`` less the truth's scoring and report options (``plan``
    checks the truth's grid, it scores nothing)."""
    for option in reversed((*OPTIONS[:-1], truth_alignment_options)):
        f = option(f)
    return f


def check_usage(output: str, level: int | None, mpp: float | None, cog: bool,
                dashboard: bool, local_cluster: int | None,
                devices: str | None = None, scheduler: str = "threads",
                device: str = "auto") -> None:
    """The usage errors Click's own checks cannot express (exit 2)."""
    if level is not None and mpp is not None:
        raise click.UsageError("--level and --mpp are mutually exclusive")
    if cog and not output.lower().endswith((".tif", ".tiff")):
        raise click.UsageError("--cog needs a .tif output")
    if dashboard and not (local_cluster or devices):
        raise click.UsageError("--dashboard needs --local-cluster or --devices (a cluster "
                               "of your own serves its dashboard itself)")
    check_devices_usage(devices, local_cluster, scheduler, device)


def check_devices_usage(devices: str | None, local_cluster: int | None, scheduler: str,
                        device: str) -> None:
    """``--devices`` starts the run's own cluster: not with another one, and its workers
    compute on their GPU (``--device`` auto or cuda)."""
    if devices is None:
        return
    if local_cluster:
        raise click.UsageError("--devices and --local-cluster are mutually exclusive "
                               "(--local-cluster N starts N CPU worker processes)")
    if scheduler not in ("threads", "synchronous"):
        raise click.UsageError("--devices starts a cluster of its own: drop --scheduler")
    if device not in ("auto", "cuda"):
        raise click.UsageError(f"--devices puts each worker on its own GPU: drop --device "
                               f"{device}")


def segment_settings(*, crf: bool, crf_preset: str | None, crf_iterations: int | None,
                     crf_w1: float | None, crf_theta_alpha: float | None,
                     crf_theta_beta: float | None, crf_w2: float | None,
                     crf_theta_gamma: float | None, truth: str | None,
                     **settings: Any) -> dict[str, Any]:
    """The keyword arguments of ``segment()`` for these option values (the CRF options
    become one CRFParams; the truth mask is protected from the output)."""
    from tilesegment.plan.recipe import crf_params

    kernel = dict(w1=crf_w1, theta_alpha=crf_theta_alpha, theta_beta=crf_theta_beta,
                  w2=crf_w2, theta_gamma=crf_theta_gamma)
    given = crf_preset is not None or crf_iterations is not None or any(
        v is not None for v in kernel.values())
    # --crf alone: True, the model card's tuned setting or Krähenbühl's (build_plan decides)
    settings["crf"] = (None if not crf else True if not given else crf_params(
        crf_preset or "krahenbuhl", crf_iterations or 10, **kernel))
    settings["protect"] = (truth,) if truth else ()
    return settings


def check_truth(source: str, truth: str | None, level: int | None, mpp: float | None,
                truth_settings: dict[str, Any]) -> None:
    """A truth mask off the mask's grid is refused before the run, not after."""
    if truth is None:
        return
    from tilesegment.evaluation.align import check_truth_for_run

    check_truth_for_run(source, truth, level=level, mpp=mpp,
                        allow_crs_alias=truth_settings.get("allow_crs_alias", False),
                        resample_truth=truth_settings.get("resample_truth", False))


RESUME_OPTION = click.option(
    "--resume", is_flag=True,
    help="Finish the unfinished run of OUTPUT (interrupted, failed or killed): only the "
    "blocks it did not store are computed. Refused if its settings differ.")
"""``run`` only: ``plan`` plans a run from scratch."""


TRUTH_SETTINGS = ("ignore_index", "instances", "mapping", "allow_crs_alias", "resample_truth",
                  "seam_width", "core", "json_out", "csv_out", "report_dir")
