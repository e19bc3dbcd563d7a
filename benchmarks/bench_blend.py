"""Gaussian blend presets against one whole-image pass, next to MONAI's sliding window.

The shipped ``nuclei`` model (trained ``unet-tiny``, receptive radius 51) on the real
``nuclei.tif`` (512 × 512 uint16, ``/work/shared/data/nuclei``), normalised once with the
image's own mean and std (the model's ``raster`` normalisation, given explicitly so every
method sees the same floats). Reference: one forward pass of the model over the whole image
reflect-padded by 64 px (numpy.pad), cropped back. Compared with it, over all 512 × 512
pixels: the fraction of mask pixels that differ and the largest and mean |Δ p(nucleus)|.

- tilesegment, ``--blend crop`` and ``gaussian:{tilesegment,monai,nnunet}``; tile 256 at
  halo 32 (tile step 192 = MONAI's at overlap 0.25; below the radius: whole outputs are
  blended), 56 (the default: blend restricted to full-context pixels) and 64 (tile step
  128 = MONAI's at overlap 0.5); tile 128 (more seams) at halo 16 and 32 (MONAI's steps at
  0.25 and 0.5; both below the radius);
- MONAI's ``sliding_window_inference`` (roi = the tile, ``mode="gaussian"``,
  ``sigma_scale`` 0.125, batch 1) at overlap 0.25 and 0.5, on the same padded canvas as
  the reference (so image edges have the same context), logits blended as tilesegment
  blends them.

    python benchmarks/bench_blend.py [DATA_DIR]   # benchmarks/results/blend.json

Seconds are wall time of each call in this process; on a shared machine they are noisy.
"""

from __future__ import annotations

import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name, stamp

from tilesegment import segment
from tilesegment.models import create_model

ROOT = Path(__file__).resolve().parents[1]
PAD = 64
CASES = {  # tile → halo → note
    256: {32: "tile step 192 = MONAI overlap 0.25 (below the radius 51)",
          56: "the default (radius 51 on the 8-grid)",
          64: "tile step 128 = MONAI overlap 0.5"},
    128: {16: "tile step 96 = MONAI overlap 0.25 (below the radius)",
          32: "tile step 64 = MONAI overlap 0.5 (below the radius)"},
}
BLENDS = ("crop", "gaussian:tilesegment", "gaussian:monai", "gaussian:nnunet")


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def _compare(probs: np.ndarray, ref: np.ndarray) -> dict:
    diff = np.abs(probs[1].astype(np.float64) - ref[1])
    return {"mask_pixels_differing": float((probs.argmax(0) != ref.argmax(0)).mean()),
            "max_abs_prob_diff": float(diff.max()), "mean_abs_prob_diff": float(diff.mean())}


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/data/nuclei"
    image = tifffile.imread(data / "nuclei.tif").astype(np.float64)[None]
    mean, std = float(image.mean()), float(image.std())
    x = ((image - mean) / std).astype(np.float32)
    net = create_model("nuclei", 1).eval()
    torch.set_num_threads(1)
    canvas = torch.from_numpy(np.pad(x, ((0, 0), (PAD, PAD), (PAD, PAD)), mode="reflect"))[None]
    h, w = image.shape[1:]
    t0 = time.perf_counter()
    with torch.inference_mode():
        whole = net(canvas)[0].numpy()[:, PAD:PAD + h, PAD:PAD + w]
    rows = [{"method": "whole image (reference)", "seconds": time.perf_counter() - t0}]
    ref = _softmax(whole.astype(np.float64))
    from monai import __version__ as monai_version
    from monai.inferers import sliding_window_inference

    for tile, halos in CASES.items():
        for halo, note in halos.items():
            for blend in BLENDS:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the short halo's SeamWarning
                    t0 = time.perf_counter()
                    probs = segment(image.astype(np.float32), model="nuclei", tile=tile,
                                    halo=halo, blend=blend, normalization=((mean,), (std,)),
                                    returns="probabilities", device="cpu")
                    seconds = time.perf_counter() - t0
                rows.append({"method": f"tilesegment --blend {blend}", "tile": tile,
                             "halo": halo, "note": note, "seconds": seconds,
                             **_compare(probs, ref)})
                print(rows[-1], flush=True)
        for overlap in (0.25, 0.5):
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = sliding_window_inference(canvas, (tile, tile), 1, net, overlap=overlap,
                                               mode="gaussian", sigma_scale=0.125)
            seconds = time.perf_counter() - t0
            logits = out[0].numpy()[:, PAD:PAD + h, PAD:PAD + w].astype(np.float64)
            rows.append({"method": f"MONAI sliding_window_inference overlap {overlap}",
                         "tile": tile, "seconds": seconds,
                         **_compare(_softmax(logits), ref)})
            print(rows[-1], flush=True)
    result = {"machine": {"cpu": cpu_name(), "python": platform.python_version(),
                          "torch": torch.__version__, "monai": monai_version,
                          "torch_threads": 1, "note": "2-core VM shared with other jobs"},
              **stamp(ROOT),
              "model": "nuclei (shipped)", "input": str(data / "nuclei.tif"),
              "reference_pad": PAD, "rows": rows}
    out_path = ROOT / "benchmarks/results/blend.json"
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
