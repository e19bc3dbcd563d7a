"""The dense-CRF refiner (:mod:`tilesegment.models.crf`, imported when first used)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tilesegment.merge.base import softmax
from tilesegment.refine.base import Refiner, Window


@dataclass(frozen=True)
class CRFRefiner(Refiner):
    """Dense CRF over the merged probabilities and the raw image. ``params``:
    :class:`~tilesegment.models.crf.CRFParams`; ``image_range``: the raster's value range
    mapped to 8-bit (``None`` for 8-bit rasters). Its logits are ``log q`` of the refined
    probabilities, so argmax and softmax downstream mean what they meant before."""

    params: Any = None
    image_range: Any = None
    name = "crf"

    @property
    def reach(self) -> int:
        from tilesegment.models.crf import crf_halo

        return crf_halo(self.params)

    def refine(self, logits: np.ndarray, image: np.ndarray | None, have: Window,
               want: Window) -> np.ndarray:
        from tilesegment.models.crf import crf_block

        margins = (want[0] - have[0], have[1] - want[1], want[2] - have[2], have[3] - want[3])
        q = crf_block(softmax(logits), image, margins, self.params, origin=(have[0], have[2]),
                      image_range=self.image_range)
        return np.log(np.maximum(q, 1e-30))
