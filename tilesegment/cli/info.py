"""``tilesegment info``: what a raster is, without reading its pixels."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=True))
@click.option("--level", type=click.IntRange(min=0), help="Pyramid level to describe.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(source: str, level: int | None, as_json: bool) -> None:
    """Describe SOURCE: size, bands, dtype, levels, CRS or pixel size, TIFF block layout."""
    from tilesegment.read import open_raster

    desc = open_raster(source, level=level).describe()
    if as_json:
        click.echo(json.dumps(desc, indent=2, ensure_ascii=False))
        return
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
    levels = desc.get("levels") or []
    if len(levels) > 1:
        click.echo(f"  levels    ({len(levels)}, using {desc['level']})")
        for i, lv in enumerate(levels):
            size = f"{lv['shape'][1]} × {lv['shape'][0]}"
            px = f"  {lv['pixel_size'][1]:.4g} {desc.get('unit') or ''}" if lv.get(
                "pixel_size") else ""
            click.echo(f"    {i}: {size}{px}")
