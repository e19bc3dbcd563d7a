"""Small nets and references shared by the tests (an independent whole-image computation)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tilesegment.tile import read_canvas


class ConvStack(nn.Module):
    """``layers`` same-padded 3×3 convolutions with dilation ``d``: receptive radius
    ``layers · d`` exactly. Zero padding inside, so tile borders do show without a halo."""

    def __init__(self, c_in: int, k: int, layers: int = 4, dilation: int = 1, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        mods: list[nn.Module] = []
        c = c_in
        for i in range(layers):
            out = k if i == layers - 1 else 6
            conv = nn.Conv2d(c, out, 3, padding=dilation, dilation=dilation)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) / (3 * c) ** 0.5)
                conv.bias.copy_(torch.randn(out, generator=gen) * 0.1)
            mods += [conv, nn.Tanh()] if i < layers - 1 else [conv]
            c = out
        self.net = nn.Sequential(*mods)
        self.radius = layers * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def whole_image_logits(module: nn.Module, image: np.ndarray, pad: int, mode: str,
                       multiple: int = 1, shrink: int = 0) -> np.ndarray:
    """Run ``module`` once on the whole raster mirror-padded by ``pad`` (numpy semantics),
    extended at the bottom/right to a size the model accepts, and crop back to ``(K, H, W)``.

    The padded canvas here is ``numpy.pad`` itself, independent of the pipeline's padding.
    """
    _, h, w = image.shape
    extra_h = (-(h + 2 * pad)) % multiple
    extra_w = (-(w + 2 * pad)) % multiple
    big = max(h, w) + 2 * pad + multiple
    padded = np.pad(image, ((0, 0), (big, big), (big, big)), mode=mode)
    canvas = padded[:, big - pad:big + h + pad + extra_h, big - pad:big + w + pad + extra_w]
    with torch.inference_mode():
        out = module.eval()(torch.from_numpy(np.ascontiguousarray(canvas))[None])[0].numpy()
    off = pad - shrink
    return out[:, off:off + h, off:off + w]


def padded_window(image: np.ndarray, window, mode: str) -> np.ndarray:
    return read_canvas(lambda w: image[:, w[0]:w[1], w[2]:w[3]], image.shape[1:], window, mode)
