"""Train the shipped ``nuclei`` model with ``tilesegment train``: unet-tiny on the LEFT half.

    OMP_NUM_THREADS=1 python pipelines/train_nuclei.py ../shared/data/nuclei nuclei.safetensors

A recipe, not part of the package (it reproduces ``tilesegment/models/pretrained/nuclei.*``).
Data: ``nuclei.tif`` / ``nuclei_labels.tif`` (2018 Data Science Bowl, BBBC038, CC0), instance
labels → foreground 1. Only columns 0–255 (the left half) are read: they are written as
their own image/truth pair (``left.tif``, ``left_labels.tif``, in a temporary folder) and
the project's trainer (:func:`tilesegment.train.train`) trains on them; inside them the
trainer's validation strip (right 20 %: columns 205–255) picks the best epoch, and no
training tile's input reaches it. The right half (columns 256–511) is never read in
training and is the held-out region ``pipelines/evaluate_nuclei.py`` scores. The call is
this command (the arguments below are its defaults)::

    tilesegment train left.tif --truth left_labels.tif --instances --model unet-tiny \
        --class-names background,nucleus --tile 128 --card-tile 256 --halo 56 \
        --batch-size 8 --epochs 12 --steps-per-epoch 100 --lr 2e-3 --weight-decay 1e-4 \
        --val-fraction 0.2 --augment flip,rot90,scale,intensity --class-weights 1,2 \
        --foreground-bias 0.5 --normalization raster --seed 0 -o nuclei.safetensors

``--tile 128`` is the training tile; ``--card-tile 256 --halo 56`` the card's defaults for
runs (validation runs with them too). Afterwards the recipe adds to the card's ``training``
record what the trainer cannot know (the data's provenance, the regions in the whole
image's columns, the held-out scores) and the class colours.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

COLORS = ((0, 0, 0), (255, 80, 80))


def write_left_half(folder: Path, work: Path) -> tuple[Path, Path]:
    """Write columns 0–255 of the image (uint16) and its instance labels as a TIFF pair."""
    image = tifffile.imread(folder / "nuclei.tif")
    truth = tifffile.imread(folder / "nuclei_labels.tif")
    half = image.shape[1] // 2
    left, left_truth = work / "left.tif", work / "left_labels.tif"
    tifffile.imwrite(left, np.ascontiguousarray(image[:, :half]))
    tifffile.imwrite(left_truth, np.ascontiguousarray(truth[:, :half]))
    return left, left_truth


def held_out(data: Path, checkpoint: Path) -> dict:
    """The held-out scores of ``checkpoint`` (``pipelines/evaluate_nuclei.py``: the right
    half through ``tilesegment run`` + ``tilesegment evaluate``, as is and transformed)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from evaluate_nuclei import score  # a sibling recipe, not a package module

    with tempfile.TemporaryDirectory() as tmp:
        results = score(data, str(checkpoint), Path(tmp))
    return {"region": "columns 256-511 (right half)", "evaluated_by":
            "pipelines/evaluate_nuclei.py (tilesegment run + tilesegment evaluate)",
            "foreground_iou": round(results["identity"]["foreground_iou"], 4),
            "mean_iou": round(results["identity"]["mean_iou"], 4),
            "robustness_foreground_iou": {k: round(v["foreground_iou"], 4)
                                          for k, v in results.items() if k != "identity"},
            "otsu_foreground_iou_whole_image": 0.717}


def parser() -> argparse.ArgumentParser:
    """The recipe's options (their defaults are the shipped model's)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder with nuclei.tif and nuclei_labels.tif")
    parser.add_argument("output", type=Path, help="checkpoint (.safetensors)")
    parser.add_argument("--model", default="unet-tiny")
    parser.add_argument("--tile", type=int, default=128, help="training tile side")
    parser.add_argument("--card-tile", type=int, default=256, help="the card's tile for runs")
    parser.add_argument("--halo", type=int, default=56, help="the card's halo for runs")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--augment", default="flip,rot90,scale,intensity")
    parser.add_argument("--class-weights", default="1,2")
    parser.add_argument("--foreground-bias", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-held-out", action="store_true",
                        help="skip scoring the right half (the card then states no score)")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    return parser


def main() -> None:
    args = parser().parse_args()  # before torch is imported: --help stays quick

    from tilesegment.models.checkpoint import build_from_checkpoint, save_checkpoint
    from tilesegment.train import train

    args.data, args.output = args.data.resolve(), args.output.resolve()
    if args.output.exists() and not args.overwrite:
        sys.exit(f"{args.output} exists (pass --overwrite to replace it)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        left, left_truth = write_left_half(args.data, work)
        os.chdir(work)  # the card names the pair left.tif / left_labels.tif, not a temp path
        weights = tuple(float(v) for v in args.class_weights.split(","))
        summary = train(
            left.name, left_truth.name, model=args.model, output=work / "trained.safetensors",
            class_names="background,nucleus", instances=True, tile=args.tile,
            card_tile=args.card_tile, halo=args.halo, batch_size=args.batch_size,
            epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, lr=args.lr,
            weight_decay=args.weight_decay, val_fraction=args.val_fraction,
            augment=args.augment, class_weights=weights,
            foreground_bias=args.foreground_bias, normalization="raster", seed=args.seed,
            progress=args.progress,
            command=shlex.join(["python", "pipelines/train_nuclei.py", *sys.argv[1:]]))
        for row in summary.history:
            print(json.dumps(row), flush=True)
        model, card = build_from_checkpoint(summary.output)
        w = tifffile.imread(left).shape[1]
        val0 = w - round(w * args.val_fraction)
        digest = hashlib.sha256()
        for name in ("nuclei.tif", "nuclei_labels.tif"):
            digest.update((args.data / name).read_bytes())
        record = {
            "input": "one fluorescence channel (nuclear stain), any dtype",
            "data_source": "2018 Data Science Bowl (BBBC038) nuclei.tif / nuclei_labels.tif "
                           "(CC0), instance labels > 0 as foreground; the trainer's images "
                           "are its left half (columns 0-255) written as a TIFF pair",
            "data_source_sha256": digest.hexdigest(),
            "region": {"train": f"rows 0-511, columns 0-{val0 - 1}",
                       "validation": f"columns {val0}-255",
                       "held_out": "columns 256-511 (never read in training)"},
            "recipe": "pipelines/train_nuclei.py (tilesegment.train.train)",
            **card.training}
        card = dataclasses.replace(card, class_colors=COLORS, training=record)
        if not args.no_held_out:
            trial = work / "trial.safetensors"
            save_checkpoint(model, trial, card)
            record["held_out"] = held_out(args.data, trial)
            print(json.dumps(record["held_out"], indent=1))
        save_checkpoint(model, args.output, dataclasses.replace(card, training=record),
                        overwrite=args.overwrite)
    print(f"wrote {args.output} and {args.output.with_suffix('.json')}")


if __name__ == "__main__":
    main()
