"""``tilesegment models``: the registry, with each model's tile rules."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("pattern", default="*")
@click.option("--channels", default=3, show_default=True, help="Input bands to describe for.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models(pattern: str, channels: int, as_json: bool) -> None:
    """List registered models matching PATTERN (shell-style, e.g. 'unet*')."""
    from tilesegment.models.registry import describe_models

    rows = describe_models(pattern, channels)
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    for row in rows:
        click.echo(f"{row['name']}")
        click.echo(f"    {row['summary']}")
        click.echo(f"    tiles: {row['tile_rule']}")
        click.echo(f"    default tile {row['default_tile']} → output {row['default_output']} "
                   f"(shrink {row['shrink']}), halo {row['default_halo']}, core "
                   f"{row['default_core']}; receptive radius {row['receptive_radius']}")
