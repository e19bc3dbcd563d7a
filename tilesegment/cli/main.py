"""The ``tilesegment`` command group. Library errors become one line on stderr and exit 1;
Click's usage errors exit 2. Commands are small modules that each call one library function."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import warnings

import click

from tilesegment import __version__
from tilesegment.cli.evaluate import evaluate
from tilesegment.cli.info import info
from tilesegment.cli.models import models
from tilesegment.cli.plan import plan
from tilesegment.cli.polygons import polygons
from tilesegment.cli.run import run
from tilesegment.cli.train import train
from tilesegment.cli.tune_crf import tune_crf


class TilesegmentGroup(click.Group):
    """Translates every :class:`~tilesegment.errors.TilesegmentError`, in one place."""

    def invoke(self, ctx: click.Context):
        from tilesegment.errors import TilesegmentError

        try:
            return super().invoke(ctx)
        except TilesegmentError as exc:
            click.echo(f"Error: {_one_line(exc)}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt as exc:
            # Ctrl-C, or SIGTERM/SIGHUP during `run` (its Interrupted carries the signal)
            signum = getattr(exc, "signum", signal.SIGINT)
            how = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
            # only `run` writes: it kept its finished blocks, or removed its partial output
            done = ": partial output removed." if ctx.invoked_subcommand == "run" else "."
            kept = getattr(exc, "kept", None)
            if kept is not None:
                from tilesegment.resume import kept_line

                done = f": {kept_line(kept)}"
            with contextlib.suppress(OSError):  # a closed terminal (SIGHUP) cannot be told
                click.echo(f"Interrupted{how}{done}", err=True)
            ctx.exit(128 + signum)


def _one_line(exc: BaseException) -> str:
    text = " ".join(" ".join([str(exc), *getattr(exc, "__notes__", ())]).split())
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
cli.add_command(plan)
cli.add_command(info)
cli.add_command(evaluate)
cli.add_command(models)
cli.add_command(train)
cli.add_command(tune_crf)
cli.add_command(polygons)


STOPPED_CODES = frozenset(128 + sig for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP))


def main() -> None:
    """Console-script entry point."""
    try:
        cli(prog_name="tilesegment")
    except SystemExit as exc:
        # The command is over, but Python still joins block threads that are finishing
        # their tasks. A stop signal then ends the process at once, with no traceback, and
        # a run already stopped by one does not wait for them at all (its output is gone).
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        if exc.code in STOPPED_CODES:
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(exc.code)
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
