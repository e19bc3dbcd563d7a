"""Small nets and references shared by the tests (an independent whole-image computation)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tilesegment.split import read_canvas


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


def tiff_claiming(path, width: int = 10**6, height: int = 10**6, *, tiled: bool = False,
                  geo: bool = False, compression: int = 1, data_bytes: int = 16):
    """Write by hand a ~150–200-byte little-endian TIFF whose tags declare a ``width`` ×
    ``height`` 8-bit image in ONE strip (or one 256 × 256 tile) of ``data_bytes`` bytes.

    ``geo`` adds a ModelPixelScale tag, so it is read as a GeoTIFF (rasterio/GDAL path);
    without it, as a slide (tifffile path). ``compression``: the TIFF code (1 none, 8 DEFLATE).
    """
    import struct
    from pathlib import Path

    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8),
               (259, 3, 1, compression), (262, 3, 1, 1), (277, 3, 1, 1)]
    if tiled:
        entries += [(322, 3, 1, 256), (323, 3, 1, 256), (324, 4, 1, 8), (325, 4, 1, data_bytes)]
    else:
        entries += [(273, 4, 1, 8), (278, 4, 1, height), (279, 4, 1, data_bytes)]
    if geo:
        entries.append((33550, 12, 3, None))  # ModelPixelScale: three doubles, after the IFD
    entries.sort(key=lambda e: e[0])
    ifd_offset = 8 + data_bytes
    extra_offset = ifd_offset + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if value is None:
            ifd += struct.pack("<HHII", tag, kind, count, extra_offset)
        elif kind == 3:
            ifd += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            ifd += struct.pack("<HHII", tag, kind, count, value)
    ifd += struct.pack("<I", 0)
    extra = struct.pack("<3d", 1.0, 1.0, 0.0) if geo else b""
    raw = b"II*\x00" + struct.pack("<I", ifd_offset) + bytes(data_bytes) + ifd + extra
    Path(path).write_bytes(raw)
    return Path(path)
