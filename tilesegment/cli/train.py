"""``tilesegment train``: fit a zoo architecture to labelled rasters (``tilesegment.train``)."""

from __future__ import annotations

import shlex
import sys
from typing import Any

import click

from tilesegment.cli.evaluate import parse_mapping


def _names(ctx, param, value: str | None) -> tuple[str, ...] | None:
    return None if not value else tuple(v.strip() for v in value.split(","))


def _weights(ctx, param, value: str) -> str | tuple[float, ...]:
    if value in ("auto", "none"):
        return value
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: use auto, none or w1,w2,...", ctx,
                                 param) from None


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--truth", "truths", multiple=True, required=True, type=click.Path(exists=True),
              help="Truth (class ids) of each IMAGE, in the same order; repeat per image.")
@click.option("--model", help="Registered architecture to train (e.g. unet-tiny, fcn8s).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint to write (*.safetensors; its card *.json beside it).")
@click.option("--classes", type=click.IntRange(min=1), help="Number of classes K "
              "(default: from --class-names or --init, else 2).")
@click.option("--class-names", callback=_names, help="Comma-separated class names.")
@click.option("--ignore-index", type=int, help="Truth value left out of the loss and scores.")
@click.option("--instances", is_flag=True, help="Truth holds instance ids: every id > 0 is 1.")
@click.option("--map", "--mapping", "mapping", callback=parse_mapping,
              help="Truth value → class id, e.g. '1:0,2:1,7:1'.")
@click.option("--tile", type=click.IntRange(min=1), help="Training tile side (default: the "
              "largest valid tile ≤ 256 for the model).")
@click.option("--halo", type=click.IntRange(min=0), help="Halo stored in the card as the runs' "
              "default (default: the model's seamless halo).")
@click.option("--card-tile", type=click.IntRange(min=1), help="Tile stored in the card as the "
              "runs' default, also validation's (default: the model's inference tile).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--steps-per-epoch", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3,
              show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=1e-4, show_default=True)
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.2,
              show_default=True, help="Columns at the right of each image kept for validation.")
@click.option("--val-image", "val_images", multiple=True, type=click.Path(exists=True),
              help="Validation image instead of --val-fraction (repeat; with --val-truth).")
@click.option("--val-truth", "val_truths", multiple=True, type=click.Path(exists=True))
@click.option("--augment", default="flip,rot90", show_default=True,
              help="Comma list of flip, rot90, scale, intensity ('' for none).")
@click.option("--class-weights", default="none", callback=_weights, show_default=True,
              help="auto (inverse square-root frequency), none, or w1,w2,...")
@click.option("--foreground-bias", type=click.FloatRange(0, 1), default=0.0,
              show_default=True,
              help="Probability that a tile is centred on a non-background pixel.")
@click.option("--normalization", type=click.Choice(["raster", "spec", "none"]),
              default="raster", show_default=True)
@click.option("--backbone-weights", type=click.Path(exists=True, dir_okay=False),
              help="Local torchvision backbone state dict (VGG16 for FCN/DeepLab).")
@click.option("--init", type=click.Path(exists=True, dir_okay=False),
              help="Checkpoint to fine-tune (its architecture and classes).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N, auto.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32",
              show_default=True, help="Autocast precision of the forward pass.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from the state saved beside OUTPUT.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
@click.option("--progress/--no-progress", default=None,
              help="Bar on stderr with loss and validation IoU (default: on a terminal).")
def train(images: tuple[str, ...], truths: tuple[str, ...], output: str,
          progress: bool | None, **options: Any) -> None:
    """Train a model on IMAGE... against their --truth masks and write the best checkpoint
    (by validation IoU) to OUTPUT (.safetensors + .json model card)."""
    from tilesegment.train import train as run_training

    summary = run_training(
        list(images), list(truths), output=output,
        progress=sys.stderr.isatty() if progress is None else progress,
        command=shlex.join(["tilesegment", *sys.argv[1:]]), **options)
    best = "n/a" if summary.best_score is None else f"{summary.best_score:.4f}"
    click.echo(f"wrote {summary.output} and {summary.card_path}: {summary.epochs} epochs, "
               f"{summary.steps} steps, best epoch {summary.best_epoch} (validation {best})")
