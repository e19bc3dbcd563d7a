"""``tilesegment plan``: print a run's plan (raster, model, tiles, blocks, halo and why,
memory per block task, output, fingerprint) without reading a pixel or building the model."""

from __future__ import annotations

import json
from typing import Any

import click

from tilesegment.cli.evaluate import TRUTH_ALIGNMENT
from tilesegment.cli.options import (
    RUN_SECTIONS,
    check_truth,
    check_usage,
    plan_options,
    segment_settings,
)
from tilesegment.cli.run_many import single_source
from tilesegment.cli.sections import SectionedCommand


@click.command(cls=SectionedCommand, sections=RUN_SECTIONS)
@plan_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(sources: tuple[str, ...], output: str, level: int | None, mpp: float | None,
         cog: bool, local_cluster: int | None, dashboard: bool, scheduler: str,
         progress: bool | None, truth: str | None, as_json: bool,
         output_format: str | None, devices: str | None, **options: Any) -> None:
    """Print what `run` with the same SOURCE and options would do, without running it.

    Reads the raster's metadata only and builds no model (torch is not even imported for a
    registered model name): the same checks and errors as `run`, then the plan and its
    fingerprint. Normalisation statistics of `--normalize raster` are computed only by the run;
    a tissue mask (--tissue otsu, or auto on a slide) is computed from a low-resolution read
    to count the tiles it skips.
    """
    source = single_source(sources, output, output_format)
    if source is None:  # each input's plan, or why it is skipped or fails
        from tilesegment.cli.run_many import check_many_usage, plan_many

        fmt = check_many_usage(truth, output_format, cog)
        from tilesegment.many import OUTPUT_FORMATS

        check_usage(f"x{OUTPUT_FORMATS[fmt]}", level, mpp, cog, dashboard, local_cluster,
                    devices, scheduler, options["device"])
        for name in TRUTH_ALIGNMENT:
            options.pop(name)
        settings = segment_settings(truth=None, **options)
        scheduler = _planned_scheduler(scheduler, local_cluster, devices, settings)
        plan_many(sources, output, output_format=fmt, as_json=as_json, settings=dict(
            settings, level=level, mpp=mpp, cog=cog, progress=bool(progress),
            scheduler=scheduler))
        return
    check_usage(output, level, mpp, cog, dashboard, local_cluster, devices, scheduler,
                options["device"])
    from tilesegment.plan import build_plan, describe_plan
    from tilesegment.plan.build import with_tissue_mask
    from tilesegment.plan.describe import format_plan

    truth_settings = {name: options.pop(name) for name in TRUTH_ALIGNMENT}
    settings = segment_settings(truth=truth, **options)
    check_truth(source, truth, level, mpp, truth_settings)
    scheduler = _planned_scheduler(scheduler, local_cluster, devices, settings)
    run_plan = build_plan(source, output, level=level, mpp=mpp, cog=cog,
                          scheduler=scheduler, progress=bool(progress), resolve=False,
                          **settings)
    run_plan = with_tissue_mask(run_plan)  # a low-resolution read: how many tiles it skips
    if as_json:
        click.echo(json.dumps(describe_plan(run_plan), indent=2))
    else:
        for line in format_plan(run_plan):
            click.echo(line)


def _planned_scheduler(scheduler: str, local_cluster: int | None, devices: str | None,
                       settings: dict[str, Any]) -> str:
    """The scheduler a run with these options would use, as the plan names it. A
    ``--local-cluster`` or ``--devices`` run computes in worker processes of its own: a
    distributed plan (no cluster is started to plan it); under ``--devices`` each worker
    computes on its own GPU."""
    if devices:
        settings["device"] = "cuda"
        return f"gpu pool ({devices})"
    return f"local-cluster ({local_cluster} workers)" if local_cluster else scheduler
