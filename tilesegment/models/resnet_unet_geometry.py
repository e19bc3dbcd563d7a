"""Geometry of the U-Nets on ResNet encoders (:mod:`tilesegment.models.resnet_unet`), without
torch: the layer list of :func:`resnet_unet_steps` mirrors the network step by step
(torchvision's ResNet, the decoder of ``segmentation_models_pytorch.Unet``); the receptive
radius is derived from it by :mod:`tilesegment.models.geometry`, not written down.
"""

from __future__ import annotations

from tilesegment.models.geometry import Branches, Conv, Step, Up, output_stride, receptive_radius

RESNETS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
"""torchvision's ResNets: block kind and blocks per stage (layer1..layer4)."""

DECODER_CHANNELS = (256, 128, 64, 32, 16)
"""Output channels of the five decoder blocks (stride 16 → 1), as in smp's ``Unet``."""

DEFAULT_TILE = {"resnet18": 1024, "resnet34": 1536, "resnet50": 1024}
"""Default tiles: a core of at least 384 px at the default halo (320; 544 for ResNet-34,
whose 3-block layer4 reaches farther)."""


def _block(kind: str, stride: int) -> Branches:
    """One residual block: the convolution path and the shortcut (identity, or a 1×1 of
    ``stride``). Bottlenecks stride in their 3×3 (torchvision's "ResNet v1.5")."""
    if kind == "basic":
        body: tuple[Step, ...] = (Conv(3, stride, 1), Conv(3, 1, 1))
    else:
        body = (Conv(1), Conv(3, stride, 1), Conv(1))
    return Branches((body, (Conv(1, stride),)))


def encoder_steps(arch: str) -> list[list[Step]]:
    """Steps from the input to each skip feature: ``[stem, layer1, layer2, layer3, layer4]``
    at strides 2, 4, 8, 16, 32 (the stem is conv1 → bn1 → relu)."""
    kind, counts = RESNETS[arch]
    steps: list[Step] = [Conv(7, 2, 3)]
    features = [list(steps)]
    steps.append(Conv(3, 2, 1))  # maxpool
    for stage, count in enumerate(counts):
        for i in range(count):
            steps.append(_block(kind, 2 if stage > 0 and i == 0 else 1))
        features.append(list(steps))
    return features


def decoder_steps(features: list[list[Step]]) -> list[Step]:
    """The U-Net decoder over encoder features ``[stride 2, 4, 8, 16, 32]``: five blocks,
    each ×2 nearest upsampling, concatenation with the skip of that stride (none at stride
    1), two 3×3 convolutions; then the 3×3 segmentation head."""
    two_convs = [Conv(3, 1, 1), Conv(3, 1, 1)]
    x: list[Step] = list(features[-1])
    for skip in [*reversed(features[:-1]), None]:
        up: list[Step] = [*x, Up(2)]
        x = [Branches((tuple(up), tuple(skip))) if skip is not None else Branches((tuple(up),)),
             *two_convs]
    return [*x, Conv(3, 1, 1)]


def resnet_unet_steps(arch: str) -> list[Step]:
    """The whole network of ``unet-{arch}`` as a step list, input to output."""
    return decoder_steps(encoder_steps(arch))


def resnet_unet_radius(arch: str) -> int:
    """Receptive radius of ``unet-{arch}`` over the 32 phases of its output stride."""
    deepest = encoder_steps(arch)[-1]
    return receptive_radius(resnet_unet_steps(arch), output_stride(deepest))
