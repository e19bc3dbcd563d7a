"""Train a small U-Net on the nuclei image and save it as a tilesegment checkpoint.

    python pipelines/train_nuclei.py ../shared/data/nuclei nuclei-unet.safetensors

A recipe, not part of the package: it trains ``unet-tiny`` (1 band, 2 classes) on the LEFT
half of ``nuclei.tif`` against ``nuclei_labels.tif > 0`` (2018 Data Science Bowl, CC0), with
random 128-px tiles and flips, Adam, cross-entropy, on the CPU in minutes, and writes
``.safetensors`` + its JSON model card (classes, normalisation, tile defaults, training
provenance). Score it on the held-out right half:

    tilesegment run ../shared/data/nuclei/nuclei.tif -o nuclei_mask.tif \\
        --model nuclei-unet.safetensors
    python pipelines/train_nuclei.py --right-half-truth right_truth.tif ../shared/data/nuclei
    tilesegment evaluate nuclei_mask.tif right_truth.tif --ignore-index 255
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from torch import nn

from tilesegment.grid import TileSpec
from tilesegment.models import Normalization, create_model, get_spec
from tilesegment.models.checkpoint import ModelCard, save_checkpoint
from tilesegment.split import Splitter

CROP = 128
IGNORE = 255


def load(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    image = tifffile.imread(folder / "nuclei.tif").astype(np.float32)
    truth = (tifffile.imread(folder / "nuclei_labels.tif") > 0).astype(np.int64)
    return image, truth


def train(image: np.ndarray, truth: np.ndarray, steps: int, seed: int) -> tuple[nn.Module,
                                                                               dict]:
    half = image.shape[1] // 2
    region = (0, image.shape[0], 0, half)  # labels and tiles from the left half only
    x_all = image[:, :half]
    mean, std = float(x_all.mean()), float(x_all.std())
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = create_model("unet-tiny", 1, 2, seed=seed).train()
    spec = get_spec("unet-tiny", 1, 2)
    # The tiles and labels inference would see: the same padding, normalisation and the
    # label crop aligned with the model's output (its shrink; 0 for this same-padded net).
    shrink = spec.check_tile(CROP)
    splitter = Splitter(image, TileSpec(tile=CROP, halo=shrink, shrink=shrink),
                        mean=np.array([mean]), std=np.array([std]))
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    weights = torch.tensor([1.0, 2.0])  # nuclei are ~20 % of the pixels
    started = time.perf_counter()
    for step in range(steps):
        xs, ys = [], []
        for tile in splitter.random_tiles(rng, 8, region=region):
            x, y = splitter.training_pair(tile, truth, ignore_index=IGNORE, region=region)
            if rng.random() < 0.5:
                x, y = x[:, ::-1], y[::-1]
            if rng.random() < 0.5:
                x, y = x[:, :, ::-1], y[:, ::-1]
            xs.append(x.copy())
            ys.append(y.copy())
        batch = torch.from_numpy(np.stack(xs))
        target = torch.from_numpy(np.stack(ys))
        loss = nn.functional.cross_entropy(model(batch), target, weight=weights,
                                           ignore_index=IGNORE)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    record = {"data": "nuclei.tif left half (columns 0-255), labels > 0", "steps": steps,
              "crop": CROP, "batch": 8, "optimiser": "Adam lr 2e-3",
              "loss": "cross-entropy, class weights (1, 2)", "seed": seed,
              "seconds": round(time.perf_counter() - started, 1)}
    return model.eval(), {"mean": mean, "std": std, "training": record}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder with nuclei.tif and nuclei_labels.tif")
    parser.add_argument("output", nargs="?", type=Path, help="checkpoint (.safetensors)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--right-half-truth", type=Path,
                        help="write the truth with its left (training) half set to 255")
    args = parser.parse_args()
    image, truth = load(args.data)
    if args.right_half_truth:
        held_out = truth.astype(np.uint8)
        held_out[:, : truth.shape[1] // 2] = 255
        tifffile.imwrite(args.right_half_truth, held_out)
        print(f"wrote {args.right_half_truth} (left half = 255, use --ignore-index 255)")
    if args.output is None:
        return
    model, info = train(image, truth, args.steps, args.seed)
    spec = get_spec("unet-tiny", 1, 2)
    card = ModelCard(
        architecture="unet-tiny", in_channels=1, num_classes=2,
        class_names=("background", "nucleus"), class_colors=((0, 0, 0), (255, 80, 80)),
        normalization=Normalization("fixed", mean=(info["mean"],), std=(info["std"],)),
        tile=256, halo=spec.default_halo(256), training=info["training"])
    save_checkpoint(model, args.output, card, overwrite=args.overwrite)
    print(f"wrote {args.output} and {args.output.with_suffix('.json')}")


if __name__ == "__main__":
    main()
