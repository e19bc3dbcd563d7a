"""Land cover from Landsat-7: train on the left part of the scene, run the whole scene to a
COG, evaluate on the right half, compare with a per-pixel random forest on the same split.

    python pipelines/landcover_landsat7.py --figure docs/img --ship
    python pipelines/landcover_landsat7.py \
        --checkpoint tilesegment/models/pretrained/landcover-landsat7.safetensors

The first trains (data ../shared/data/landsat, work folder ./landcover-work), runs,
evaluates, draws the figures and copies the checkpoint into the package; the second only
runs and evaluates a checkpoint.

A recipe, not part of the package. The data: GRASS's North Carolina sample scene
(``landsat7_multiband.tif``: Landsat-7 ETM+ bands 1, 2, 3, 4, 5 of ``lsat7_2000_*``, 443×489
px of 28.5 m, nodata −99999) and its land-cover strata (1..7 = developed, agriculture,
herbaceous, shrubland, forest, water, sediment; truth 1..7 → class ids 0..6, anything else
ignored). The split, in columns of the scene (489 wide):

- ``[0, 195)``: training tiles; every tile's whole input lies here;
- ``[195, 244)``: validation (the best step by validation mean IoU is kept), never in a
  training tile's input — so there are 49 px between any training input and the evaluation;
- ``[244, 489)``: evaluation (the right half), never seen in training, only by
  ``tilesegment run`` + ``tilesegment evaluate`` at the end.

Steps: (1) write the left half as ``train_image.tif``/``train_truth.tif`` and the truth of
the right half as ``eval_truth.tif`` (left half = nodata); (2) train DeepLab-LargeFOV,
narrowed (width 16, fc6/fc7 of 128: 1.09 M parameters, 4.4 MB) from random weights on
96-px tiles with 90° rotations and flips, cross-entropy weighted by 1/√(class frequency)
in the training columns, the image normalised by the training image's statistics, which
the card stores as ``fixed`` normalisation (``--normalization raster`` leaves each input's
own); (3) choose the run's tile and halo among :data:`GEOMETRIES` by pixel accuracy on the
validation columns (a ``tilesegment.segment`` run of ``train_image.tif``) and write them
into the card; (4) ``tilesegment run`` the WHOLE scene to a georeferenced COG with the
card's defaults; (5) ``tilesegment evaluate --allow-crs-alias`` against
``eval_truth.tif``; (6) a random forest (scikit-learn, 50 trees, 20 000 pixels of the left
half, seed 0) on the same split; (7) a table of both, the scores into the card, figures
(``--figure``), and with ``--ship`` the checkpoint copied into the package.

``--trainer loop`` (default) is the loop below, which made the shipped checkpoint;
``--trainer cli`` runs the same recipe through ``tilesegment train`` (its options map 1:1:
``--init`` a randomly initialised narrow DeepLab to carry the width options,
``--val-fraction 0.2`` is the validation strip above, ``--augment flip,rot90``,
``--class-weights`` the same 1/√frequency weights as a list, ``--normalization raster``
(the card's ``fixed`` statistics are written afterwards, as for the loop),
``--ignore-index 255``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "landsat"
NAME = "landcover-landsat7"
NODATA = -99999.0
IGNORE = 255
CLASS_NAMES = ("developed", "agriculture", "herbaceous", "shrubland", "forest", "water",
               "sediment")
CLASS_COLORS = ((230, 25, 75), (255, 225, 25), (188, 246, 160), (170, 110, 40),
                (0, 100, 0), (0, 90, 230), (200, 190, 170))
MAPPING = ",".join(f"{v}:{v - 1}" for v in range(1, 8))  # truth 1..7 → ids 0..6
BANDS = ("ETM+ band 1, blue 0.45-0.52 um", "ETM+ band 2, green 0.52-0.60 um",
         "ETM+ band 3, red 0.63-0.69 um", "ETM+ band 4, near infrared 0.77-0.90 um",
         "ETM+ band 5, shortwave infrared 1.55-1.75 um")
ARCH, OPTIONS = "deeplab-largefov", {"width": 16, "fc_channels": 128}
TRAIN_TILE, RUN_TILE, RUN_HALO = 96, 1024, 224
VAL_FRACTION = 0.2


def split_columns(width: int) -> tuple[int, int]:
    """``(val_start, half)``: training columns ``[0, val_start)``, validation
    ``[val_start, half)``, evaluation ``[half, width)``."""
    half = width // 2
    return half - round(VAL_FRACTION * half), half


def write_split(data: Path, work: Path) -> dict[str, Path]:
    """The training image/truth (left half) and the evaluation truth (right half; the left
    half set to the truth's nodata), georeferenced as the scene."""
    work.mkdir(parents=True, exist_ok=True)
    paths = {"image": data / "landsat7_multiband.tif", "truth": data / "landcover_strata.tif",
             "train_image": work / "train_image.tif", "train_truth": work / "train_truth.tif",
             "eval_truth": work / "eval_truth.tif"}
    with rasterio.open(paths["image"]) as src:
        image, profile = src.read(), src.profile
    with rasterio.open(paths["truth"]) as src:
        truth, tprofile = src.read(), src.profile
    half = split_columns(image.shape[2])[1]
    window = rasterio.windows.Window(0, 0, half, image.shape[1])
    for key, arr, prof in (("train_image", image, profile), ("train_truth", truth, tprofile)):
        p = dict(prof, width=half, transform=rasterio.windows.transform(window, prof["transform"]),
                 tiled=False, compress="deflate")
        p.pop("blockxsize", None)
        p.pop("blockysize", None)
        with rasterio.open(paths[key], "w", **p) as dst:
            dst.write(arr[:, :, :half])
    held_out = truth.copy()
    held_out[:, :, :half] = tprofile["nodata"]
    p = dict(tprofile, compress="deflate")
    with rasterio.open(paths["eval_truth"], "w", **p) as dst:
        dst.write(held_out)
    return paths


def class_ids(truth: np.ndarray) -> np.ndarray:
    """Truth values 1..7 → ``int64`` ids 0..6; anything else (nodata) → :data:`IGNORE`."""
    return np.where((truth >= 1) & (truth <= 7), truth - 1, IGNORE).astype(np.int64)


# --- training (the loop that made the shipped checkpoint) ---------------------------------


def sqrt_weights(counts: np.ndarray) -> np.ndarray:
    """Class weights ``1/sqrt(frequency)`` scaled to mean 1 over the classes present (0 for
    absent ones): milder than inverse frequency, so rare classes are not over-predicted."""
    f = counts / counts.sum()
    w = np.where(f > 0, 1 / np.sqrt(np.maximum(f, 1e-12)), 0.0)
    return w / w[f > 0].mean()


def training_counts(paths: dict[str, Path]) -> np.ndarray:
    """Pixels of each class in the training columns ``[0, val_start)``."""
    with rasterio.open(paths["train_truth"]) as src:
        labels = class_ids(src.read(1))
    part = labels[:, :split_columns(2 * labels.shape[1])[0]]
    return np.bincount(part[part != IGNORE], minlength=7).astype(float)


def train_loop(paths: dict[str, Path], steps: int, seed: int, batch: int, lr: float,
               eval_every: int, class_weights: str) -> tuple[object, dict]:
    """Train on ``train_image.tif`` columns ``[0, val_start)``; keep the best step by
    validation mean IoU on ``[val_start, half)``. Returns ``(module, training record)``."""
    import torch
    from torch import nn

    from tilesegment.grid import TileSpec
    from tilesegment.models import create_model
    from tilesegment.normalize import missing_values, normalize, raster_statistics
    from tilesegment.read import open_raster
    from tilesegment.split import Splitter

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    raster = open_raster(paths["train_image"])
    labels = class_ids(open_raster(paths["train_truth"]).read((0, raster.height, 0,
                                                                raster.width))[0])
    h, w = raster.height, raster.width
    val_start = split_columns(2 * w)[0]
    stats = raster_statistics(raster)
    mean, std = stats.mean, stats.std
    region = (0, h, 0, val_start)
    splitter = Splitter(raster, TileSpec(tile=TRAIN_TILE, halo=0, shrink=0), mean=mean,
                        std=std)
    model = create_model(ARCH, 5, 7, seed=seed, **OPTIONS).train()
    counts = np.bincount(labels[:, :val_start][labels[:, :val_start] != IGNORE],
                         minlength=7).astype(float)
    weight = None
    if class_weights == "sqrt":
        weight = torch.tensor(sqrt_weights(counts), dtype=torch.float32)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)

    whole = raster.read((0, h, 0, w))
    canvas = normalize(whole, mean, std)
    canvas[missing_values(whole, raster.nodata)] = 0.0
    pad = ((0, 0), (0, -h % 8), (0, -w % 8))
    canvas = torch.from_numpy(np.pad(canvas, pad, mode="reflect"))[None]
    truth_val = labels[:, val_start:]
    valid_val = ~missing_values(whole, raster.nodata).all(axis=0)[:, val_start:]

    def validate() -> dict[str, float]:
        from tilesegment.evaluation.metrics import fcn_measures

        model.eval()
        with torch.no_grad():
            pred = model(canvas)[0, :, :h, :w].argmax(0).numpy()[:, val_start:]
        model.train()
        keep = (truth_val != IGNORE) & valid_val
        cm = np.bincount(truth_val[keep] * 7 + pred[keep], minlength=49).reshape(7, 7)
        return {k: round(float(v), 4) for k, v in fcn_measures(cm).items()}

    history, best, best_state = [], None, None
    started = time.perf_counter()
    for step in range(1, steps + 1):
        xs, ys = [], []
        for tile in splitter.random_tiles(rng, batch, region=region):
            x, y = splitter.training_pair(tile, labels, ignore_index=IGNORE, region=region)
            k = int(rng.integers(4))
            x, y = np.rot90(x, k, (1, 2)), np.rot90(y, k)
            if rng.random() < 0.5:
                x, y = x[:, :, ::-1], y[:, ::-1]
            xs.append(x.copy())
            ys.append(y.copy())
        loss = nn.functional.cross_entropy(model(torch.from_numpy(np.stack(xs))),
                                           torch.from_numpy(np.stack(ys)), weight=weight,
                                           ignore_index=IGNORE)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % eval_every == 0 or step == steps:
            scores = validate()
            history.append({"step": step, "loss": round(float(loss.detach()), 4), **scores})
            print(f"step {step:5d}  loss {float(loss.detach()):.4f}  val pixel acc "
                  f"{scores['pixel_accuracy']:.4f}  mean IoU {scores['mean_iou']:.4f}  "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
            if best is None or scores["mean_iou"] > best["mean_iou"]:
                best = history[-1]
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    record = {
        "trainer": "pipelines/landcover_landsat7.py --trainer loop",
        "data": "landsat7_multiband.tif columns 0-243 (train_image.tif); labels "
                "landcover_strata.tif 1..7 -> 0..6",
        "train_region": f"columns [0, {val_start}) of the scene: every training tile's "
                        "input lies inside",
        "validation_region": f"columns [{val_start}, {w})",
        "evaluation_region": f"columns [{w}, {2 * w + 1}) (right half), never trained on",
        "tile": TRAIN_TILE, "batch": batch, "steps": steps, "seed": seed,
        "augment": "rot90 (k uniform in 0..3), then horizontal flip p=0.5",
        "optimiser": f"Adam lr {lr}, weight decay 1e-4", "loss": "cross-entropy, ignore 255",
        "class_weights": class_weights,
        "normalization": "per-band mean/std of train_image (raster_statistics)",
        "best_step": best["step"], "validation": history,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return model.eval(), record


def train_cli(paths: dict[str, Path], out: Path, steps: int, seed: int, batch: int, lr: float,
              eval_every: int, class_weights: str) -> None:
    """The same recipe through ``tilesegment train`` (initialised from a random narrow
    DeepLab checkpoint, which carries ``width``/``fc_channels`` in its card)."""
    if class_weights == "sqrt":  # the trainer takes explicit weights
        class_weights = ",".join(f"{w:.6f}" for w in sqrt_weights(training_counts(paths)))
    init = out.with_name("init-random.safetensors")
    save_card(random_model(seed), init, {"note": "random initialisation"})
    cmd = ["tilesegment", "train", str(paths["train_image"]), "--truth",
           str(paths["train_truth"]), "--model", ARCH, "--init", str(init), "-o", str(out),
           "--classes", "7", "--class-names", ",".join(CLASS_NAMES), "--mapping", MAPPING,
           "--ignore-index", str(IGNORE), "--tile", str(TRAIN_TILE),
           "--batch-size", str(batch), "--steps-per-epoch", str(eval_every), "--epochs",
           str(steps // eval_every), "--lr", str(lr), "--weight-decay", "1e-4",
           "--val-fraction", str(VAL_FRACTION), "--augment", "flip,rot90",
           "--class-weights", class_weights, "--normalization", "raster", "--seed", str(seed),
           "--device", "cpu", "--overwrite"]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def random_model(seed: int):
    from tilesegment.models import create_model

    return create_model(ARCH, 5, 7, seed=seed, **OPTIONS)


def card_normalization(paths: dict[str, Path], mode: str):
    """``fixed``: the per-band mean/std of ``train_image.tif`` (valid pixels), the values
    training normalised with, so a pixel's radiance means the same at inference whatever
    the rest of the scene holds; ``raster``: each input's own statistics."""
    from tilesegment.models.spec import Normalization
    from tilesegment.normalize import raster_statistics
    from tilesegment.read import open_raster

    if mode == "raster":
        return Normalization("raster")
    stats = raster_statistics(open_raster(paths["train_image"]))
    return Normalization("fixed", tuple(float(v) for v in stats.mean),
                         tuple(float(v) for v in stats.std))


def save_card(module, path: Path, training: dict, normalization=None,
              geometry: tuple[int, int] = (RUN_TILE, RUN_HALO)) -> None:
    """Write ``module`` as a checkpoint with the landcover card (tile/halo for runs)."""
    from tilesegment.models.checkpoint import ModelCard, save_checkpoint
    from tilesegment.models.spec import Normalization

    card = ModelCard(architecture=ARCH, in_channels=5, num_classes=7, options=dict(OPTIONS),
                     class_names=CLASS_NAMES, class_colors=CLASS_COLORS,
                     normalization=normalization or Normalization("raster"),
                     tile=geometry[0], halo=geometry[1],
                     resolution=28.5, resolution_unit="m",
                     training={"bands": list(BANDS), **training})
    save_checkpoint(module, path, card, overwrite=True)


# --- run geometry, chosen on the validation strip -----------------------------------------

GEOMETRIES = ((32, 8), (48, 8), (64, 16), (96, 24), (1024, 224))
"""Candidate ``(tile, halo)`` for runs: the training tile's size and below, and the
model's seamless default (1024, 224)."""


def choose_geometry(paths: dict[str, Path], checkpoint: Path) -> tuple[tuple[int, int],
                                                                        list[dict]]:
    """The ``(tile, halo)`` of :data:`GEOMETRIES` whose ``tilesegment`` run of
    ``train_image.tif`` scores the best pixel accuracy on the validation columns (the
    evaluation half is never read), and every candidate's scores."""
    import warnings

    import tilesegment
    from tilesegment.evaluation.metrics import fcn_measures

    with rasterio.open(paths["train_truth"]) as src:
        labels = class_ids(src.read(1))
    with rasterio.open(paths["train_image"]) as src:
        valid = (src.read() != NODATA).any(axis=0)
    val_start = split_columns(2 * labels.shape[1])[0]
    keep = (labels != IGNORE) & valid
    keep[:, :val_start] = False
    rows = []
    for tile, halo in GEOMETRIES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # halos below the receptive radius warn
            mask = tilesegment.segment(str(paths["train_image"]), model=str(checkpoint),
                                       tile=tile, halo=halo, returns="mask")
        mask = np.asarray(mask).reshape(labels.shape)
        cm = np.bincount(labels[keep] * 7 + mask[keep], minlength=49).reshape(7, 7)
        rows.append({"tile": tile, "halo": halo,
                     **{k: float(v) for k, v in fcn_measures(cm).items()}})
        print(f"validation  tile {tile:4d} halo {halo:3d}  pixel acc "
              f"{rows[-1]['pixel_accuracy']:.4f}  mean IoU {rows[-1]['mean_iou']:.4f}",
              flush=True)
    best = max(rows, key=lambda r: r["pixel_accuracy"])
    return (best["tile"], best["halo"]), rows


# --- run, evaluate, compare ---------------------------------------------------------------


def tilesegment(*args: str) -> str:
    """Run the ``tilesegment`` CLI of this interpreter; returns its stdout."""
    cmd = [sys.executable, "-m", "tilesegment.cli.main", *args]
    print("$ tilesegment", " ".join(args), flush=True)
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    print(done.stdout, end="", file=sys.stderr)
    return done.stdout


def run_and_evaluate(paths: dict[str, Path], checkpoint: Path, work: Path) -> dict:
    """``tilesegment run`` the whole scene to a COG, ``evaluate`` on the right half."""
    mask = work / "landcover.tif"
    tilesegment("run", str(paths["image"]), "-o", str(mask), "--model", str(checkpoint),
                "--cog", "--overwrite", "--no-progress")
    report = work / "evaluation.json"
    tilesegment("evaluate", str(mask), str(paths["eval_truth"]), "--map", MAPPING,
                "--classes", "7", "--allow-crs-alias", "--json", str(report))
    return json.loads(report.read_text())


def random_forest(paths: dict[str, Path], seed: int = 0, trees: int = 50,
                  sample: int = 20_000) -> dict[str, float]:
    """Per-pixel random forest on the same split: fit on valid pixels of the left half,
    score on the right half's (pixels whose image is valid and truth 1..7)."""
    from sklearn.ensemble import RandomForestClassifier

    from tilesegment.evaluation.metrics import fcn_measures

    with rasterio.open(paths["image"]) as src:
        image = src.read()
    with rasterio.open(paths["truth"]) as src:
        truth = class_ids(src.read(1))
    half = image.shape[2] // 2
    ok = (image != NODATA).all(axis=0) & (truth != IGNORE)
    left, right = ok.copy(), ok.copy()
    left[:, half:] = False
    right[:, :half] = False
    x_train, y_train = image[:, left].T, truth[left]
    pick = np.random.default_rng(seed).choice(len(y_train), min(sample, len(y_train)),
                                              replace=False)
    forest = RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=1)
    forest.fit(x_train[pick], y_train[pick])
    pred = forest.predict(image[:, right].T)
    cm = np.bincount(truth[right] * 7 + pred, minlength=49).reshape(7, 7)
    return {k: float(v) for k, v in fcn_measures(cm).items()}


MEASURES = ("pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou")


def table(cnn: dict[str, float], forest: dict[str, float]) -> str:
    rows = [f"{'measure (right half)':<26}{'DeepLab (tilesegment)':>23}{'random forest':>15}"]
    for m in MEASURES:
        rows.append(f"{m:<26}{cnn[m]:>23.4f}{forest[m]:>15.4f}")
    return "\n".join(rows)


def figure(paths: dict[str, Path], mask: Path, folder: Path) -> list[Path]:
    """``landcover-scene.png`` (RGB of bands 3, 2, 1), ``landcover-truth.png``,
    ``landcover-predicted.png``; dotted line: start of the validation strip, dashed: start
    of the evaluation half."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    with rasterio.open(paths["image"]) as src:
        image = src.read()
    with rasterio.open(paths["truth"]) as src:
        truth = class_ids(src.read(1))
    with rasterio.open(mask) as src:
        pred = src.read(1)
    missing = (image == NODATA).all(axis=0)
    rgb = np.zeros((*image.shape[1:], 3), np.float32)
    for i, b in enumerate((2, 1, 0)):
        band = image[b][~missing]
        lo, hi = np.percentile(band, (2, 98))
        rgb[..., i] = np.clip((image[b] - lo) / (hi - lo), 0, 1)
    rgb[missing] = 1.0
    cmap = ListedColormap([np.array(c) / 255 for c in CLASS_COLORS] + [(1, 1, 1)])
    val_start, half = split_columns(image.shape[2])
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, data, title in (
            ("scene", rgb, "Landsat-7 ETM+ bands 3-2-1"),
            ("truth", np.where(truth == IGNORE, 7, truth), "land-cover strata (truth)"),
            ("predicted", np.where(pred > 6, 7, pred), f"{NAME} (tilesegment run)")):
        fig, ax = plt.subplots(figsize=(5.2, 5.4), dpi=100)
        if data.ndim == 3:
            ax.imshow(data, interpolation="nearest")
        else:
            ax.imshow(data, cmap=cmap, vmin=0, vmax=7, interpolation="nearest")
        ax.axvline(val_start - 0.5, color="k", ls=":", lw=1)
        ax.axvline(half - 0.5, color="k", ls="--", lw=1)
        ax.set_title(f"{title}\ntrain | validation ¦ evaluation (right half)", fontsize=9)
        ax.set_axis_off()
        if name == "predicted":
            ax.legend(handles=[Patch(color=np.array(c) / 255, label=n)
                               for n, c in zip(CLASS_NAMES, CLASS_COLORS, strict=True)],
                      loc="lower center", bbox_to_anchor=(0.5, -0.2), ncol=4, fontsize=7,
                      frameon=False)
        fig.tight_layout()
        path = folder / f"landcover-{name}.png"
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        from PIL import Image  # a 256-colour palette keeps the figures small in the repo

        with Image.open(path) as im:
            im.convert("RGB").quantize(256).save(path, optimize=True)
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=DATA,
                        help="folder with landsat7_multiband.tif and landcover_strata.tif")
    parser.add_argument("--workdir", type=Path, default=Path("landcover-work"))
    parser.add_argument("--checkpoint", type=Path,
                        help="evaluate this checkpoint instead of training one")
    parser.add_argument("--trainer", choices=("loop", "cli"), default="loop")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--class-weights", choices=("none", "sqrt"), default="sqrt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure", type=Path, help="folder for landcover-*.png")
    parser.add_argument("--normalization", choices=("fixed", "raster"), default="fixed",
                        help="the card's: the training image's statistics, or each input's")
    parser.add_argument("--renormalize", action="store_true",
                        help="with --checkpoint: first set its card's normalisation to "
                             "--normalization (training is the same either way)")
    parser.add_argument("--update-card", action="store_true",
                        help="with --checkpoint: write the scores into its card too")
    parser.add_argument("--ship", action="store_true",
                        help=f"copy the checkpoint to tilesegment/models/pretrained/{NAME}.*")
    args = parser.parse_args(argv)
    work = args.workdir
    paths = write_split(args.data, work)
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = work / f"{NAME}.safetensors"
        options = (args.steps, args.seed, args.batch_size, args.lr, args.eval_every,
                   args.class_weights)
        if args.trainer == "cli":
            train_cli(paths, checkpoint, *options)
            from tilesegment.models.checkpoint import build_from_checkpoint

            module, card = build_from_checkpoint(checkpoint)  # the card's normalisation
            save_card(module, checkpoint, dict(card.training),
                      card_normalization(paths, args.normalization))
        else:
            model, record = train_loop(paths, *options)
            record["command"] = " ".join(["python", "pipelines/landcover_landsat7.py",
                                          *(sys.argv[1:] if argv is None else argv)])
            record["data_sha256"] = {p.name: _sha256(p) for p in (paths["image"],
                                                                    paths["truth"])}
            save_card(model, checkpoint, record,
                      card_normalization(paths, args.normalization))
    if args.checkpoint is not None and args.renormalize:
        from tilesegment.models.checkpoint import build_from_checkpoint

        module, card = build_from_checkpoint(checkpoint)
        save_card(module, checkpoint, {k: v for k, v in card.training.items() if k != "bands"},
                  card_normalization(paths, args.normalization), (card.tile, card.halo))
    if args.checkpoint is None or args.update_card:  # the run geometry, on validation only
        from tilesegment.models.checkpoint import build_from_checkpoint

        geometry, tried = choose_geometry(paths, checkpoint)
        module, card = build_from_checkpoint(checkpoint)
        save_card(module, checkpoint, {**{k: v for k, v in card.training.items()
                                          if k != "bands"}, "run_geometry_validation": tried},
                  card.normalization, geometry)
    scores = run_and_evaluate(paths, checkpoint, work)
    measures = scores["measures"]
    forest = random_forest(paths, seed=args.seed)
    print(table(measures, forest))
    (work / "scores.json").write_text(json.dumps({"deeplab": measures, "random_forest": forest},
                                                 indent=2) + "\n")
    if args.checkpoint is None or args.update_card:  # the scores go into its card
        from tilesegment.models.checkpoint import build_from_checkpoint

        module, card = build_from_checkpoint(checkpoint)
        evaluation = {
            "region": "right half, columns [244, 489) of landsat7_multiband.tif",
            "command": "tilesegment run landsat7_multiband.tif --model CKPT --cog; "
                       f"tilesegment evaluate MASK eval_truth.tif --map {MAPPING} "
                       "--classes 7 --allow-crs-alias",
            **{m: measures[m] for m in MEASURES},
            "per_class_iou": _per_class(scores),
            "random_forest": {**{m: forest[m] for m in MEASURES},
                              "fit": "scikit-learn RandomForestClassifier, 50 trees, "
                                     "20 000 left-half pixels, seed 0"},
        }
        save_card(module, checkpoint, {**{k: v for k, v in card.training.items()
                                          if k != "bands"}, "evaluation": evaluation},
                  card.normalization, (card.tile, card.halo))
    if args.figure:
        for p in figure(paths, work / "landcover.tif", args.figure):
            print(f"wrote {p}")
    if args.ship:
        target = REPO / "tilesegment" / "models" / "pretrained"
        target.mkdir(parents=True, exist_ok=True)
        for suffix in (".safetensors", ".json"):
            source, dest = checkpoint.with_suffix(suffix), target / f"{NAME}{suffix}"
            if not (dest.exists() and source.resolve() == dest.resolve()):
                shutil.copyfile(source, dest)
        print(f"shipped {target / NAME}.safetensors and .json")


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _per_class(scores: dict) -> dict[str, float | None]:
    """Class name → IoU from an ``evaluate --json`` report."""
    return {row["name"]: None if row["iou"] is None else round(float(row["iou"]), 4)
            for row in scores["per_class"]}


if __name__ == "__main__":
    main()
