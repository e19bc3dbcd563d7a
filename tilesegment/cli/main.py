"""The ``tilesegment`` command group. Library errors become one line on stderr and exit 1;
Click's usage errors exit 2. Commands are small modules that each call one library function."""

from __future__ import annotations

import sys
import warnings

import click

from tilesegment import __version__
from tilesegment.cli.evaluate import evaluate
from tilesegment.cli.info import info
from tilesegment.cli.models import models
from tilesegment.cli.run import run


class TilesegmentGroup(click.Group):
    """Translates every :class:`~tilesegment.errors.TilesegmentError`, in one place."""

    def invoke(self, ctx: click.Context):
        from tilesegment.errors import TilesegmentError

        try:
            return super().invoke(ctx)
        except TilesegmentError as exc:
            click.echo(f"Error: {_one_line(exc)}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted: partial output removed.", err=True)
            ctx.exit(130)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"Warning: {message}\n"


@click.group(cls=TilesegmentGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tilesegment")
def cli() -> None:
    """Semantic segmentation of rasters and slides far larger than memory.

    Cuts the raster into overlapping tiles (the U-Net overlap-tile strategy, mirror-padded at
    the border), runs a segmentation network on batches of tiles, stitches the logits and
    writes a full-size mask as Zarr or GeoTIFF.
    """
    warnings.formatwarning = _format_warning


cli.add_command(run)
cli.add_command(info)
cli.add_command(evaluate)
cli.add_command(models)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="tilesegment")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
