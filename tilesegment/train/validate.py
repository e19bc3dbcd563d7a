"""Validation: the model run on a validation window exactly as ``tilesegment run`` would run
it, scored with the project's exact confusion matrix and the FCN paper's measures.

The window is cut into blocks and each block goes through the inference path itself
(split → infer → merge: :class:`~tilesegment.split.Splitter` over the whole image, so the
context around the window is the image's own pixels and padding; the global tile grid of
the card's tile and halo; :class:`~tilesegment.infer.Predictor` with one tile per call on the
CPU; the ``crop`` merger; argmax with nodata 255). The mask therefore equals, pixel for
pixel, what ``tilesegment run IMAGE --model OUT.safetensors`` writes there.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import torch

from tilesegment.block import merge_window, to_mask
from tilesegment.evaluation.confusion import LabelRules, count_block, merge
from tilesegment.evaluation.metrics import class_scores, fcn_measures
from tilesegment.grid import TileSpec, iter_blocks
from tilesegment.split import Splitter
from tilesegment.train.data import Window

PRED_NODATA = 255


def predict_window(module: torch.nn.Module, raster: Any, spec: TileSpec, mean, std,
                   window: Window, num_classes: int, device: torch.device,
                   batch_size: int = 8, block: int = 1024) -> np.ndarray:
    """Class ids ``uint8 (h, w)`` of ``window`` (nodata 255) from a copy of ``module`` in
    eval mode, through the inference path."""
    from tilesegment.infer import Predictor

    threads = torch.get_num_threads()
    model = copy.deepcopy(module)
    predictor = Predictor(model, device, batch_size, spec.out_side, num_classes,
                          channels_last=True, threads=1)
    splitter = Splitter(raster, spec, mean, std)
    r0, r1, c0, c1 = window
    out = np.empty((r1 - r0, c1 - c0), np.uint8)
    try:
        for a0, a1, b0, b1 in iter_blocks((r1 - r0, c1 - c0), (block, block)):
            part = (r0 + a0, r0 + a1, c0 + b0, c0 + b1)
            result = merge_window(splitter, predictor, part, num_classes)
            out[a0:a1, b0:b1] = to_mask(result, np.dtype(np.uint8), PRED_NODATA)
    finally:
        torch.set_num_threads(threads)  # the predictor sets one thread per call on the CPU
    return out


def score(masks: list[np.ndarray], truths: list[np.ndarray],
          rules: LabelRules | list[LabelRules], class_names: tuple[str, ...]) -> dict[str, Any]:
    """FCN measures, per-class IoU and the score the best checkpoint is chosen by
    (``selection``: foreground IoU for 2 classes, mean IoU otherwise) of ``masks`` against
    raw ``truths`` counted as ``evaluate`` counts them (``rules``: one for all, or one per
    truth, each with that truth's nodata)."""
    each = rules if isinstance(rules, list) else [rules] * len(truths)
    each = [dataclasses.replace(r, pred_nodata=PRED_NODATA) for r in each]
    cm = merge([count_block(m, t, r) for m, t, r in zip(masks, truths, each, strict=True)])
    k = each[0].num_classes
    cm = cm[:k, :k]
    measures = fcn_measures(cm)
    iou = class_scores(cm).iou
    per_class = {name: (None if np.isnan(v) else float(v))
                 for name, v in zip(class_names, iou, strict=True)}
    selection = (per_class[class_names[1]] if k == 2 else measures["mean_iou"])
    return {**{k_: (None if np.isnan(v) else float(v)) for k_, v in measures.items()},
            "class_iou": per_class,
            "selection": None if selection is None or np.isnan(selection) else float(selection),
            "pixels": int(cm.sum())}
