"""Train the shipped ``nuclei`` model: unet-tiny on the LEFT half of the nuclei image.

    python pipelines/train_nuclei.py ../shared/data/nuclei nuclei.safetensors

A recipe, not part of the package (it reproduces ``tilesegment/models/pretrained/nuclei.*``).
Data: ``nuclei.tif`` / ``nuclei_labels.tif`` (2018 Data Science Bowl, BBBC038, CC0), instance
labels → foreground 1. Only columns 0–255 (the left half) are read for training; inside
them the right 20 % (columns 205–255) is the validation strip that picks the best epoch,
and no training tile's input reaches it. The right half (columns 256–511) is never seen and
is the held-out region ``pipelines/evaluate_nuclei.py`` scores.

Every option maps 1:1 onto ``tilesegment train`` (issue 10, item 1; same names), once
the left half is written as its own image/truth pair (columns 0–255)::

    tilesegment train left.tif --truth left_labels.tif --instances --model unet-tiny \
        --tile 128 --batch-size 8 --epochs 12 --steps-per-epoch 100 --lr 2e-3 \
        --weight-decay 1e-4 --val-fraction 0.2 --augment flip,rot90,scale,intensity \
        --class-weights 1,2 --foreground-bias 0.5 --normalization raster --seed 0 \
        -o nuclei.safetensors

``--tile 128`` is the training tile; the card's run defaults are tile 256, halo 56
(``--tile-default`` here). Optimiser AdamW; ``scale`` draws a factor log-uniformly in
[0.7, 1.5] and resamples the tile (image bilinear, antialiased when shrinking; labels
nearest); ``intensity`` a gain in [0.8, 1.25] and an offset in ±0.2 (normalised units).

The loop here is the trainer's contract done by hand with the project's splitter
(``Splitter.random_tiles`` / ``training_pair``: the tiles inference feeds the model) and
the project's own validation (``tilesegment.segment`` + the exact confusion matrix).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from torch import nn

from tilesegment.evaluation.confusion import LabelRules, count_block
from tilesegment.evaluation.metrics import class_scores
from tilesegment.grid import Tile, TileSpec
from tilesegment.models import Normalization, create_model, get_spec
from tilesegment.models.checkpoint import ModelCard, save_checkpoint
from tilesegment.split import Splitter

IGNORE = 255
SCALE = (0.7, 1.5)
GAIN = (0.8, 1.25)
OFFSET = 0.2


def load(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The LEFT half: image ``(H, 256)`` uint16 and foreground labels ``(H, 256)`` int64."""
    image = tifffile.imread(folder / "nuclei.tif")
    truth = tifffile.imread(folder / "nuclei_labels.tif")
    half = image.shape[1] // 2
    return image[:, :half], (truth[:, :half] > 0).astype(np.int64)


def augment_pair(splitter: Splitter, labels: np.ndarray, region, tile: int,
                 rng: np.random.Generator, augment: set[str], bias: float,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One training sample ``float32 (1, T, T)`` image and ``int64 (T, T)`` labels."""
    factor = 1.0
    if "scale" in augment:
        factor = math.exp(rng.uniform(math.log(SCALE[0]), math.log(SCALE[1])))
    side = max(8, round(tile / factor))
    spec = TileSpec(tile=side, halo=0, shrink=0)
    sp = Splitter(splitter.raster, spec, mean=splitter.mean, std=splitter.std)
    r0, r1, c0, c1 = region
    if bias > 0 and rng.random() < bias:
        ys, xs = np.nonzero(labels[r0:r1, c0:c1] > 0)
        k = rng.integers(len(ys))
        top = int(np.clip(ys[k] + r0 - side // 2, r0, r1 - side))
        left = int(np.clip(xs[k] + c0 - side // 2, c0, c1 - side))
        t = Tile(-1, -1, top, left)
    else:
        t = sp.random_tiles(rng, 1, region=region)[0]
    x, y = sp.training_pair(t, labels, ignore_index=IGNORE, region=region)
    if side != tile:
        xt = torch.from_numpy(x)[None]
        x = nn.functional.interpolate(xt, size=(tile, tile), mode="bilinear",
                                      antialias=side > tile, align_corners=False)[0].numpy()
        yt = torch.from_numpy(y.astype(np.float32))[None, None]
        y = nn.functional.interpolate(yt, size=(tile, tile), mode="nearest")[0, 0].numpy()
        y = y.astype(np.int64)
    if "flip" in augment and rng.random() < 0.5:
        x, y = x[:, :, ::-1], y[:, ::-1]
    if "rot90" in augment:
        k = int(rng.integers(4))
        x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k)
    if "intensity" in augment:
        gain = math.exp(rng.uniform(math.log(GAIN[0]), math.log(GAIN[1])))
        x = x * gain + rng.uniform(-OFFSET, OFFSET)
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y)


def validate(model: nn.Module, image: np.ndarray, labels: np.ndarray, val: tuple[int, int],
             tile: int, halo: int) -> dict:
    """Foreground IoU on the validation columns through the project's own inference."""
    from tilesegment import segment

    model.eval()
    mask = segment(image, model=model, tile=tile, halo=halo, normalization="raster",
                   classes=2, device="cpu", block_size=512)
    model.train()
    cm = count_block(mask[:, val[0]:val[1]], labels[:, val[0]:val[1]], LabelRules(num_classes=2))
    iou = class_scores(cm).iou
    return {"foreground_iou": round(float(iou[1]), 4), "mean_iou": round(float(np.mean(iou)), 4)}


def train(args: argparse.Namespace) -> tuple[nn.Module, dict, dict]:
    image, labels = load(args.data)
    h, w = labels.shape
    val0 = w - round(w * args.val_fraction)
    region = (0, h, 0, val0)
    augment = {a for a in args.augment.split(",") if a}
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)
    model = create_model(args.model, 1, 2, seed=args.seed).train()
    spec = get_spec(args.model, 1, 2)
    x = image.astype(np.float64)
    mean, std = np.array([x.mean()]), np.array([x.std()])  # "raster": the image's own
    splitter = Splitter(image, TileSpec(tile=args.tile, halo=0), mean=mean, std=std)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr,
                                  weight_decay=args.weight_decay)
    weights = torch.tensor([float(v) for v in args.class_weights.split(",")])
    halo = spec.default_halo(args.tile_default)
    best, best_state, history = -1.0, None, []
    started = time.perf_counter()
    step = 0
    for epoch in range(args.epochs):
        losses = []
        for _ in range(args.steps_per_epoch):
            pairs = [augment_pair(splitter, labels, region, args.tile, rng, augment,
                                  args.foreground_bias) for _ in range(args.batch_size)]
            batch = torch.from_numpy(np.stack([p[0] for p in pairs]))
            target = torch.from_numpy(np.stack([p[1] for p in pairs]))
            loss = nn.functional.cross_entropy(model(batch), target, weight=weights,
                                               ignore_index=IGNORE)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            step += 1
        scores = validate(model, image, labels, (val0, w), args.tile_default, halo)
        history.append({"epoch": epoch + 1, "step": step,
                        "loss": round(float(np.mean(losses)), 4), **scores})
        print(json.dumps(history[-1]), flush=True)
        if scores["foreground_iou"] > best:
            best = scores["foreground_iou"]
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    digest = hashlib.sha256()
    for name in ("nuclei.tif", "nuclei_labels.tif"):
        digest.update((args.data / name).read_bytes())
    record = {
        "input": "one fluorescence channel (nuclear stain), any dtype",
        "resolution": "unknown (the source states no pixel size)",
        "data": "2018 Data Science Bowl (BBBC038) nuclei.tif / nuclei_labels.tif (CC0), "
                "instance labels > 0 as foreground",
        "data_sha256": digest.hexdigest(),
        "region": {"train": "rows 0-511, columns 0-204", "validation": f"columns {val0}-255",
                   "held_out": "columns 256-511 (never read in training)"},
        "recipe": "pipelines/train_nuclei.py", "model": args.model, "tile": args.tile,
        "batch_size": args.batch_size, "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch, "steps": step,
        "optimiser": f"AdamW lr {args.lr} weight decay {args.weight_decay}",
        "loss": f"cross-entropy, class weights ({args.class_weights})",
        "augmentations": sorted(augment), "scale_range": list(SCALE),
        "intensity": {"gain": list(GAIN), "offset": OFFSET},
        "foreground_bias": args.foreground_bias, "normalization": "raster", "seed": args.seed,
        "validation": history, "best_validation_foreground_iou": best,
        "seconds": round(time.perf_counter() - started, 1),
        "device": "cpu", "torch_threads": torch.get_num_threads(),
    }
    return model.eval(), record, {"halo": halo}


def held_out(data: Path, checkpoint: Path) -> dict:
    """The held-out scores of ``checkpoint`` (``pipelines/evaluate_nuclei.py``: the right
    half through ``tilesegment run`` + ``tilesegment evaluate``, as is and transformed)."""
    import sys
    import tempfile

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
    parser.add_argument("--tile-default", type=int, default=256,
                        help="the card's tile for runs")
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
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-held-out", action="store_true",
                        help="skip scoring the right half (the card then states no score)")
    parser.add_argument("--overwrite", action="store_true")
    return parser


def main() -> None:
    args = parser().parse_args()
    torch.set_num_threads(args.threads)
    model, record, extra = train(args)

    def card(training: dict) -> ModelCard:
        return ModelCard(
            architecture=args.model, in_channels=1, num_classes=2,
            class_names=("background", "nucleus"), class_colors=((0, 0, 0), (255, 80, 80)),
            normalization=Normalization("raster"), tile=args.tile_default,
            halo=extra["halo"], training=training)

    if not args.no_held_out:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            trial = Path(tmp) / "trial.safetensors"
            save_checkpoint(model, trial, card(record))
            record["held_out"] = held_out(args.data, trial)
        print(json.dumps(record["held_out"], indent=1))
    save_checkpoint(model, args.output, card(record), overwrite=args.overwrite)
    print(f"wrote {args.output} and {args.output.with_suffix('.json')}")


if __name__ == "__main__":
    main()
