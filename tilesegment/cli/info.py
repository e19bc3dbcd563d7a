"""``tilesegment info``: what a raster is, without reading its pixels."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=True))
@click.option("--level", type=click.IntRange(min=0), help="Pyramid level to describe.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(source: str, level: int | None, as_json: bool) -> None:
    """Describe SOURCE: size, bands, dtype, levels, CRS or pixel size, TIFF block layout.

    For a tilesegment output also whether it is complete; an incomplete or mixed output is
    described, then flagged with exit status 1.
    """
    from tilesegment.read import open_raster

    check = _output_check(source)
    desc = open_raster(source, level=level).describe()
    if check is not None:
        desc["output_check"] = check
    if as_json:
        click.echo(json.dumps(desc, indent=2, ensure_ascii=False))
    else:
        _print(desc)
    if check is not None and check["problems"]:
        from tilesegment.errors import IncompleteOutputError

        raise IncompleteOutputError(f"{check['path']} is not a complete tilesegment output: "
                                    + "; ".join(check["problems"]))


def _output_check(source: str) -> dict | None:
    """``{"path", "complete", "run_id", "layers", "problems"}`` for a tilesegment output
    (``problems`` empty when it is complete and consistent); None for anything else."""
    from tilesegment.errors import IncompleteOutputError
    from tilesegment.write import read_output_meta
    from tilesegment.write.verify import output_problems

    try:
        meta = read_output_meta(source)
    except IncompleteOutputError as exc:
        return {"path": source, "complete": False, "run_id": None, "layers": [],
                "problems": [str(exc)]}
    except Exception:  # not one of ours
        return None
    problems = output_problems(meta)
    completion = meta.get("completion") or {}
    prov = meta.get("provenance") or {}
    return {"path": meta["path"], "complete": not problems,
            "run_id": completion.get("run_id"), "layers": meta["layers"],
            "problems": problems, "model": prov.get("model"),
            "random_weights": bool(prov.get("random_weights"))}


def _print(desc: dict) -> None:
    c, h, w = desc["shape"]
    click.echo(f"{desc['source']}  ({desc['kind']})")
    click.echo(f"  size      {w} × {h} px, {c} band(s), {desc['dtype']}"
               + (f", nodata {desc['nodata']}" if desc.get("nodata") is not None else ""))
    if desc.get("crs_wkt"):
        name = desc["crs_wkt"].split('"')[1] if '"' in desc["crs_wkt"] else desc["crs_wkt"][:60]
        click.echo(f"  crs       {name}")
        click.echo(f"  transform {desc['transform']}")
    if desc.get("pixel_size"):
        click.echo(f"  pixel     {desc['pixel_size'][1]:.6g} × {desc['pixel_size'][0]:.6g} "
                   f"{desc.get('unit') or ''}".rstrip())
    if desc.get("block_shape"):
        comp = f", {desc['compression']}" if desc.get("compression") else ""
        click.echo(f"  blocks    {desc['block_shape'][1]} × {desc['block_shape'][0]}{comp}")
    if desc.get("reader") == "openslide":
        click.echo(f"  reader    OpenSlide ({desc.get('format')})")
    levels = desc.get("levels") or []
    if len(levels) > 1:
        click.echo(f"  levels    ({len(levels)}, using {desc['level']})")
        for i, lv in enumerate(levels):
            size = f"{lv['shape'][1]} × {lv['shape'][0]}"
            px = f"  {lv['pixel_size'][1]:.4g} {desc.get('unit') or ''}" if lv.get(
                "pixel_size") else ""
            click.echo(f"    {i}: {size}{px}")
    check = desc.get("output_check")
    if check is not None:
        state = ("complete" if not check["problems"] else
                 "INCOMPLETE OR INCONSISTENT, see the error below")
        run = f", run {check['run_id']}" if check.get("run_id") else ""
        click.echo(f"  output    tilesegment {state}{run}; layers "
                   f"{', '.join(check['layers'])}")
        if check.get("model"):
            note = (" with RANDOM weights: the mask is a test fixture, it means nothing"
                    if check.get("random_weights") else "")
            click.echo(f"  model     {check['model']}{note}")
