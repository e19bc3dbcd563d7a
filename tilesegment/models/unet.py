"""U-Net (Ronneberger, Fischer, Brox 2015): contracting and expanding paths, copy-and-crop skips.

``padding="valid"`` is the paper's network: unpadded 3×3 convolutions, so a 572×572 tile gives
a 388×388 output (depth 4); ``padding="same"`` keeps the size. Input ``float32[N, C, T, T]``,
output ``float32[N, K, T', T']`` logits.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _conv_stack(c_in: int, c_out: int, convs: int, pad: int, norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(convs):
        layers.append(nn.Conv2d(c_in if k == 0 else c_out, c_out, 3, padding=pad, bias=not norm))
        if norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop ``x`` ``(N, C, H, W)`` to its central ``size`` (the paper's copy-and-crop)."""
    h, w = x.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return x[..., top:top + size[0], left:left + size[1]]


class UNet(nn.Module):
    """U-Net of ``depth`` poolings; ``width`` channels at the top level, doubling per level."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        depth: int = 4,
        width: int = 64,
        padding: str = "valid",
        convs_per_level: int = 2,
        batch_norm: bool = False,
    ):
        super().__init__()
        if padding not in ("valid", "same"):
            raise ValueError("padding must be 'valid' or 'same'")
        pad = 1 if padding == "same" else 0
        widths = [width * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList()
        c = in_channels
        for level in range(depth):
            self.down.append(_conv_stack(c, widths[level], convs_per_level, pad, batch_norm))
            c = widths[level]
        self.pool = nn.MaxPool2d(2)
        self.bottom = _conv_stack(c, widths[depth], convs_per_level, pad, batch_norm)
        self.up = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for level in reversed(range(depth)):
            self.up.append(nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2))
            self.up_convs.append(
                _conv_stack(2 * widths[level], widths[level], convs_per_level, pad, batch_norm))
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's initialisation: weights from N(0, 2/N), N = inputs of one unit, so
        every feature map keeps roughly unit variance; biases zero."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                # A 2×2 stride-2 up-convolution feeds each output pixel from one input pixel.
                fan_in = (m.weight[0].numel() if isinstance(m, nn.Conv2d)
                          else m.weight.shape[0])
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, block, skip in zip(self.up, self.up_convs, reversed(skips), strict=True):
            x = up(x)
            x = block(torch.cat([center_crop(skip, x.shape[-2:]), x], dim=1))
        return self.head(x)
