"""Geometry of DeepLab-LargeFOV and DeepLab-MSc-LargeFOV (:mod:`tilesegment.models.deeplab`),
without torch: the VGG16 block table, the MSc heads' sources, and the layer lists from
which :mod:`tilesegment.models.geometry` derives the receptive radius.
"""

from __future__ import annotations

from tilesegment.models.geometry import Bilinear, Branches, Conv, Step, receptive_radius

# (block, convolutions, output channels, dilation, pool stride) — VGG16 "D" configuration.
VGG16_BLOCKS: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 2, 64, 1, 2), (2, 2, 128, 1, 2), (3, 3, 256, 1, 2), (4, 3, 512, 1, 1),
    (5, 3, 512, 2, 1),
)
OUTPUT_STRIDE = 8
FC6_DILATION = 12
MSC_SOURCES = ("input", "pool1", "pool2", "pool3", "pool4")
"""Where DeepLab-MSc attaches its extra heads (the paper's §4.2 "multi-scale prediction")."""
MSC_CHANNELS = 128


def msc_source_strides() -> dict[str, int]:
    """The stride of each MSc source map (input 1, pool1 2, pool2 4, pool3 8, pool4 8)."""
    strides, jump = {"input": 1}, 1
    for block, _, _, _, stride in VGG16_BLOCKS[:4]:
        jump *= stride
        strides[f"pool{block}"] = jump
    return strides


def msc_head_steps(source: str) -> list[Step]:
    """An MSc head on ``source``: a 3×3 conv of stride ``8 / stride(source)`` (pad 1) onto the
    stride-8 score grid, then 1×1 and 1×1 (to the classes)."""
    return [Conv(3, OUTPUT_STRIDE // msc_source_strides()[source], 1), Conv(1), Conv(1)]


def deeplab_steps(msc: bool = False) -> list[Step]:
    """DeepLab-LargeFOV as a step list (input to output; :mod:`~tilesegment.models.geometry`):
    the VGG16 body with 3×3 pools (pad 1) and dilated conv5, fc6 (3×3, dilation 12), fc7 and
    fc8 (1×1), bilinear ×8. ``msc``: the heads on the input and pool1..pool4, summed with fc8."""
    trunk: list[Step] = []
    taps: dict[str, list[Step]] = {"input": []}
    for block, convs, _, dilation, stride in VGG16_BLOCKS:
        trunk += [Conv(3, 1, dilation, dilation)] * convs + [Conv(3, stride, 1)]
        taps[f"pool{block}"] = list(trunk)
    main: list[Step] = [*trunk, Conv(3, 1, FC6_DILATION, FC6_DILATION), Conv(1), Conv(1)]
    if not msc:
        return [*main, Bilinear(OUTPUT_STRIDE)]
    heads = [tuple(taps[src] + msc_head_steps(src)) for src in MSC_SOURCES]
    return [Branches((tuple(main), *heads)), Bilinear(OUTPUT_STRIDE)]


def deeplab_radius(msc: bool = False) -> int:
    """Receptive radius of the network of :func:`deeplab_steps`, over the 8 phases."""
    return receptive_radius(deeplab_steps(msc), OUTPUT_STRIDE)
