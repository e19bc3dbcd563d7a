"""Tune the dense CRF for the shipped ``nuclei`` model on its validation strip, and score
the result on the held-out right half.

    python pipelines/tune_crf_nuclei.py ../shared/data/nuclei [--json out.json] [--ship]

1. ``tilesegment run`` the whole image with the shipped model, ``--save-probabilities``;
2. ``tilesegment tune-crf`` on the trainer's validation strip (rows 0–511, columns 205–255:
   the right 0.2 of the left half, which chose the model's epoch; never trained on), with a
   truth that holds 0/1 only there (255 elsewhere, ``--ignore-index 255``), scored by
   foreground (nucleus) IoU; the tuned setting goes into a copy of the model (``tuned``);
3. ``tilesegment run --model tuned.safetensors --crf`` (the card's setting), and, for
   comparison, ``--crf-preset krahenbuhl`` and ``deeplab``; each mask and the no-CRF mask are
   scored with ``tilesegment evaluate --ignore-index 255`` against a truth that is 0/1 only on
   the held-out right half (columns 256–511), as ``pipelines/evaluate_nuclei.py`` does.

The CRF reads context around the strip (up to 480 px: the image and the network's
probabilities, never the truth of the held-out half). ``--ship`` writes the card's ``crf``
entry into ``tilesegment/models/pretrained/nuclei.json`` (the tensors do not change): the
tuned setting if it also holds on the held-out half (CRF ≥ no CRF there), else "no CRF".
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
STRIP = (0, 512, 205, 256)
CLI = [sys.executable, "-m", "tilesegment.cli.main"]


def _cli(*args: object) -> str:
    done = subprocess.run([*CLI, *map(str, args)], check=True, capture_output=True, text=True)
    return done.stdout


def _iou(mask: Path, truth: Path, work: Path) -> dict:
    report = work / f"{mask.stem}.json"
    _cli("evaluate", mask, truth, "--ignore-index", IGNORE, "--json", report)
    data = json.loads(report.read_text())
    return {"foreground_iou": round(data["per_class"][1]["iou"], 4),
            "mean_iou": round(data["measures"]["mean_iou"], 4)}


def tune(folder: Path, work: Path) -> dict:
    """The search on the strip and the held-out scores; see the module's docstring."""
    image = folder / "nuclei.tif"
    labels = tifffile.imread(folder / "nuclei_labels.tif") > 0
    cols = np.arange(labels.shape[1])[None, :]
    strip = work / "strip_truth.tif"
    held = work / "held_truth.tif"
    r0, r1, c0, c1 = STRIP
    rows = np.arange(labels.shape[0])[:, None]
    in_strip = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
    tifffile.imwrite(strip, np.where(in_strip, labels, IGNORE).astype(np.uint8))
    tifffile.imwrite(held, np.where(cols >= labels.shape[1] // 2, labels, IGNORE)
                     .astype(np.uint8))
    plain = work / "plain.zarr"
    _cli("run", image, "-o", plain, "--save-probabilities", "--no-progress")
    tuned = work / "tuned.safetensors"
    _cli("tune-crf", plain, image, "--truth", strip, "--ignore-index", IGNORE, "--window",
         f"{r0}:{r1},{c0}:{c1}", "--score", "foreground-iou", "--card", tuned,
         "--json", work / "tune.json")
    search = json.loads((work / "tune.json").read_text())
    held_out = {"no_crf": _iou(plain, held, work)}
    runs = {"tuned": ["--model", tuned, "--crf"],
            "krahenbuhl": ["--crf", "--crf-preset", "krahenbuhl"],
            "deeplab": ["--crf", "--crf-preset", "deeplab"]}
    for name, extra in runs.items():
        if name == "tuned" and search["best"] is None:
            continue
        mask = work / f"{name}.zarr"
        _cli("run", image, "-o", mask, *extra, "--no-progress")
        held_out[name] = _iou(mask, held, work)
    return {"search": search, "held_out": held_out}


def card_entry(result: dict) -> dict:
    """The ``crf`` entry shipped in the card: the tuned setting if it held on the held-out
    half (≥ no CRF), else "no CRF"; with the numbers behind the choice."""
    from tilesegment.models.crf import CRFParams, crf_card_entry

    search, held = result["search"], result["held_out"]
    best = search["best"]
    keep = best is not None and (held["tuned"]["foreground_iou"]
                                 >= held["no_crf"]["foreground_iou"])
    params = None if not keep else CRFParams(
        **{k: float(v) for k, v in best["params"].items() if k != "iterations"},
        iterations=int(best["params"]["iterations"]))
    r0, r1, c0, c1 = STRIP
    tuning = {
        "by": "tilesegment tune-crf (pipelines/tune_crf_nuclei.py)",
        "score": search["score_label"],
        "region": f"the validation strip: rows {r0}-{r1 - 1}, columns {c0}-{c1 - 1}",
        "candidates": len(search["candidates"]),
        "validation": {"no_crf": round(search["no_crf"]["score"], 4),
                       "best": None if best is None else round(best["score"], 4)},
        "held_out": {"region": "columns 256-511 (right half)",
                     **{name: v["foreground_iou"] for name, v in held.items()}},
    }
    return crf_card_entry(params, tuning)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder with nuclei.tif and nuclei_labels.tif")
    parser.add_argument("--json", type=Path, help="write the search and the scores here")
    parser.add_argument("--ship", action="store_true",
                        help="write the crf entry into the packaged nuclei card")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = tune(args.data, Path(tmp))
    print(result["search"]["summary"])
    for name, v in result["held_out"].items():
        print(f"held-out {name:11s} foreground IoU {v['foreground_iou']:.4f}  "
              f"mean IoU {v['mean_iou']:.4f}")
    entry = card_entry(result)
    result["card_crf"] = entry
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    if args.ship:
        from tilesegment.models.tuned_card import package_folder, write_tuned_card

        _, side = write_tuned_card("nuclei", package_folder() / "nuclei.json", entry,
                                   overwrite=True, allow_package=True)
        print(f"wrote the crf entry ({'crf' if entry['enabled'] else 'no CRF'}) into {side}")


if __name__ == "__main__":
    main()
