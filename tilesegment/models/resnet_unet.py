"""U-Net with a torchvision ResNet encoder (the everyday ``Unet("resnet50")`` of
segmentation_models_pytorch), same-padded, output stride 32.

Encoder: torchvision's ResNet-18/34/50 up to ``layer4`` (its own block classes and module
names: ``conv1``, ``bn1``, ``layer1`` …; no ``avgpool``/``fc``). Decoder: five blocks from
stride 32 to 1, each ×2 nearest upsampling, concatenation with the encoder feature of that
stride (stem at 2, ``layer1..3`` at 4, 8, 16; none at 1), and two 3×3 conv → BN → ReLU
(256, 128, 64, 32, 16 channels); a 3×3 convolution gives the ``K`` class logits.

The module names are smp's (``encoder.…``, ``decoder.blocks.{i}.conv{1,2}.{0,1}``,
``segmentation_head.0``), so a state dict of ``smp.Unet("resnet50", classes=K)`` loads as it
is (``--weights``), and a torchvision classification ResNet state dict initialises the
encoder (``--backbone-weights``; ``fc.*`` ignored). Input ``float32[N, C, H, W]`` with ``H``
and ``W`` multiples of 32, output ``float32[N, K, H, W]``. BatchNorm uses its running
statistics in eval mode (the registry returns models in eval mode), so a pixel's output
does not depend on what else is in the batch or the tile.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from tilesegment.errors import ModelError
from tilesegment.models.resnet_unet_geometry import DECODER_CHANNELS, RESNETS


class ResNetEncoder(nn.Module):
    """torchvision's ResNet ``arch`` without its classifier, returning the features at
    strides 2 (stem), 4, 8, 16, 32. ``width`` (64) scales every stage's channels."""

    def __init__(self, arch: str, in_channels: int = 3, width: int = 64):
        super().__init__()
        kind, counts = RESNETS[arch]
        block: type[BasicBlock | Bottleneck] = BasicBlock if kind == "basic" else Bottleneck
        self.arch, self.in_channels = arch, in_channels
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, counts[0], 1)
        self.layer2 = self._make_layer(block, 2 * width, counts[1], 2)
        self.layer3 = self._make_layer(block, 4 * width, counts[2], 2)
        self.layer4 = self._make_layer(block, 8 * width, counts[3], 2)
        self.out_channels = (width, *(w * block.expansion for w in
                                      (width, 2 * width, 4 * width, 8 * width)))
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int,
                    stride: int) -> nn.Sequential:
        """As ``torchvision.models.ResNet._make_layer`` (a 1×1 + BN shortcut where the shape
        changes)."""
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride,
                          bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``float32[N, C, H, W]`` → ``[stem, layer1, layer2, layer3, layer4]`` features."""
        stem = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(stem))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [stem, f1, f2, f3, self.layer4(f3)]


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """3×3 conv (no bias) → BN → ReLU, smp's ``Conv2dReLU`` layout."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """×2 nearest upsampling, concatenation with ``skip`` (if any), two conv → BN → ReLU."""

    def __init__(self, c_in: int, c_skip: int, c_out: int):
        super().__init__()
        self.conv1 = conv_bn_relu(c_in + c_skip, c_out)
        self.conv2 = conv_bn_relu(c_out, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UNetDecoder(nn.Module):
    """Five :class:`DecoderBlock` from stride 32 to stride 1."""

    def __init__(self, encoder_channels: tuple[int, ...], channels: tuple[int, ...]):
        super().__init__()
        skips = [*reversed(encoder_channels[:-1]), 0]
        ins = [encoder_channels[-1], *channels[:-1]]
        self.blocks = nn.ModuleList(DecoderBlock(i, s, o)
                                    for i, s, o in zip(ins, skips, channels, strict=True))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        skips = [*reversed(features[:-1]), None]
        for block, skip in zip(self.blocks, skips, strict=True):
            x = block(x, skip)
        return x


class ResNetUNet(nn.Module):
    """``unet-{arch}``: ``float32[N, C, H, W]`` → logits ``float32[N, K, H, W]`` (``H, W``
    multiples of 32). ``width`` scales encoder and decoder channels (64: the real net)."""

    def __init__(self, arch: str = "resnet50", in_channels: int = 3, num_classes: int = 2,
                 width: int = 64):
        super().__init__()
        if arch not in RESNETS:
            raise ModelError(f"ResNet {arch!r} unknown; use one of {', '.join(RESNETS)}")
        if width < 1 or (64 % width and width % 64):
            raise ModelError(f"width {width} must divide 64 or be a multiple of it")
        self.arch, self.in_channels, self.num_classes, self.width = (
            arch, in_channels, num_classes, width)
        self.encoder = ResNetEncoder(arch, in_channels, width)
        channels = tuple(max(1, c * width // 64) for c in DECODER_CHANNELS)
        self.decoder = UNetDecoder(self.encoder.out_channels, channels)
        self.segmentation_head = nn.Sequential(nn.Conv2d(channels[-1], num_classes, 3,
                                                         padding=1))
        for m in self.decoder.modules():  # smp's initialize_decoder / initialize_head
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        head = self.segmentation_head[0]
        nn.init.xavier_uniform_(head.weight)
        nn.init.zeros_(head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ModelError(f"unet-{self.arch} needs sides that are multiples of 32, "
                             f"not {tuple(x.shape[-2:])}")
        return self.segmentation_head(self.decoder(self.encoder(x)))

    def load_backbone(self, state: Mapping[str, Any], source: str) -> ResNetUNet:
        """Load a torchvision ResNet state dict (``fc.*`` dropped) into the encoder; a
        3-band ``conv1`` is fitted to other band counts as the torchvision wrapper does
        (:func:`tilesegment.models.tv.adapt_rgb_kernel`). Needs ``width`` 64."""
        from tilesegment.models.tv import adapt_rgb_kernel
        from tilesegment.models.weights import check_state_fits

        if self.width != 64:
            raise ModelError(f"ResNet backbone weights need width 64, not {self.width}")
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        kernel = state.get("conv1.weight")
        if (kernel is not None and self.in_channels != 3 and kernel.ndim == 4
                and kernel.shape[1] == 3):
            state["conv1.weight"] = adapt_rgb_kernel(kernel, self.in_channels)
        own = {k: tuple(v.shape) for k, v in self.encoder.state_dict().items()}
        check_state_fits(own, state, source, problem=f"not a torchvision {self.arch} state "
                         "dict", show_shapes=True, limit=4)
        self.encoder.load_state_dict(state, strict=True)
        return self


def build_resnet_unet(arch: str, in_channels: int, num_classes: int,
                      backbone_weights: str | Path | Mapping[str, Any] | None = None,
                      width: int = 64) -> ResNetUNet:
    """``unet-{arch}`` in eval mode; ``backbone_weights``: a local torchvision ResNet
    state-dict file (or mapping) for the encoder. Nothing is ever downloaded."""
    model = ResNetUNet(arch, in_channels, num_classes, width)
    if backbone_weights is not None:
        source = str(backbone_weights) if isinstance(backbone_weights, str | Path) else "state"
        if isinstance(backbone_weights, str | Path):
            from tilesegment.models.weights import read_state_dict

            backbone_weights = read_state_dict(backbone_weights)
        model.load_backbone(backbone_weights, source)
    return model.eval()


__all__ = ["ResNetEncoder", "ResNetUNet", "build_resnet_unet"]
