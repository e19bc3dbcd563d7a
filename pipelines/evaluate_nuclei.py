"""Score a nuclei model on the held-out RIGHT half, as is and under five transforms.

    python pipelines/evaluate_nuclei.py ../shared/data/nuclei [--model nuclei] [--json out]
        [--tta flips|d4]

For each variant the WHOLE image and its labels are transformed (labels and the held-out
region resampled nearest), the image is segmented with ``tilesegment run`` and the mask
scored with ``tilesegment evaluate`` against a truth that is 0/1 on the pixels that came
from the right half (columns 256–511) and 255 (``--ignore-index 255``) elsewhere. Variants:
``identity``; ``rot90`` (a quarter turn); ``fliplr``, ``flipud``; ``scale0.75``, ``scale1.5``
(image resampled bilinearly with antialiasing, rounded back to uint16); ``uint16-stretch``
(values × 65535/235, so the brightest pixel becomes 65535). Prints a table of foreground
(nucleus) IoU; ``--json`` writes it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

IGNORE = 255


def _resample_image(image: np.ndarray, factor: float) -> np.ndarray:
    import torch

    h, w = image.shape
    size = (round(h * factor), round(w * factor))
    x = torch.from_numpy(image.astype(np.float32))[None, None]
    y = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False,
                                        antialias=factor < 1)[0, 0].numpy()
    return np.clip(np.round(y), 0, np.iinfo(image.dtype).max).astype(image.dtype)


def _resample_nearest(a: np.ndarray, factor: float) -> np.ndarray:
    h, w = a.shape
    rows = np.minimum(((np.arange(round(h * factor)) + 0.5) / factor).astype(int), h - 1)
    cols = np.minimum(((np.arange(round(w * factor)) + 0.5) / factor).astype(int), w - 1)
    return a[rows][:, cols]


def variants(image: np.ndarray, labels: np.ndarray) -> dict[str, tuple]:
    """name → (image, labels, held-out mask) of the transformed whole image."""
    held = np.zeros(labels.shape, bool)
    held[:, labels.shape[1] // 2:] = True
    out = {"identity": (image, labels, held),
           "rot90": tuple(np.rot90(a) for a in (image, labels, held)),
           "fliplr": tuple(a[:, ::-1] for a in (image, labels, held)),
           "flipud": tuple(a[::-1] for a in (image, labels, held))}
    for f in (0.75, 1.5):
        out[f"scale{f}"] = (_resample_image(image, f), _resample_nearest(labels, f),
                            _resample_nearest(held, f))
    gain = 65535 / float(image.max())
    out["uint16-stretch"] = (np.clip(np.round(image * gain), 0, 65535).astype(np.uint16),
                             labels, held)
    return out


def score(folder: Path, model: str, work: Path, names: list[str] | None = None,
          run_options: tuple[str, ...] = ()) -> dict[str, dict]:
    """Foreground IoU (and the counts behind it) per variant, through the CLI;
    ``run_options`` are added to each ``tilesegment run`` (e.g. ``("--tta", "d4")``)."""
    image = tifffile.imread(folder / "nuclei.tif")
    labels = tifffile.imread(folder / "nuclei_labels.tif")
    results = {}
    for name, (img, lab, held) in variants(image, labels).items():
        if names and name not in names:
            continue
        src, truth = work / f"{name}.tif", work / f"{name}_truth.tif"
        mask, report = work / f"{name}_mask.tif", work / f"{name}.json"
        tifffile.imwrite(src, np.ascontiguousarray(img))
        tifffile.imwrite(truth, np.where(held, lab > 0, IGNORE).astype(np.uint8))
        cmd = [sys.executable, "-m", "tilesegment.cli.main"]
        run = [*cmd, "run", str(src), "-o", str(mask), "--overwrite", "--no-progress",
               *run_options]
        if model != "default":
            run += ["--model", model]
        subprocess.run(run, check=True, capture_output=True)
        subprocess.run([*cmd, "evaluate", str(mask), str(truth), "--ignore-index",
                        str(IGNORE), "--json", str(report)], check=True, capture_output=True)
        data = json.loads(report.read_text())
        results[name] = {"shape": list(img.shape),
                         "foreground_iou": data["per_class"][1]["iou"],
                         "mean_iou": data["measures"]["mean_iou"],
                         "pixel_accuracy": data["measures"]["pixel_accuracy"]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder with nuclei.tif and nuclei_labels.tif")
    parser.add_argument("--model", default="nuclei",
                        help="registered name or checkpoint ('default': no --model)")
    parser.add_argument("--only", help="comma list of variants")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--tta", default="none", help="test-time augmentation of each run "
                        "(none, flips, d4)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = score(args.data, args.model, Path(tmp),
                        args.only.split(",") if args.only else None,
                        ("--tta", args.tta) if args.tta != "none" else ())
    for name, r in results.items():
        print(f"{name:15s} {r['shape'][0]:4d}×{r['shape'][1]:<4d} "
              f"foreground IoU {r['foreground_iou']:.4f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
