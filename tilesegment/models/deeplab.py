"""DeepLab v1, LargeFOV variant (Chen, Papandreou, Kokkinos, Murphy, Yuille, ICLR 2015).

VGG16's thirteen 3×3 convolutions with two changes that keep the resolution at 1/8 of the
input ("hole" / atrous algorithm): pool4 and pool5 are 3×3 stride-1 pad-1 max-pools, and
conv5_x are dilated by 2. The fully connected layers become convolutions: fc6 a 3×3 conv of
dilation 12 with 1024 filters (the "LargeFOV" choice), fc7 a 1×1 conv of 1024, fc8 a 1×1
conv to the classes, with 0.5 dropout after fc6 and fc7 (train mode only). The stride-8
score map is bilinearly upsampled to the input size.

Input ``float32[N, C, H, W]`` (any ``C``, any ``H, W``), output ``float32[N, K, H, W]``
logits; :meth:`DeepLabV1.score_map` gives the ``[N, K, ⌈H/8⌉, ⌈W/8⌉]`` fc8 scores.

Geometry for tiling: output stride 8 (tile sides a multiple of 8 keep output pixels on the
score grid), no shrink, receptive radius :data:`RECEPTIVE_RADIUS` = 220 px (see
:func:`deeplab_receptive_radius`).

Backbone weights come from a local torchvision VGG16 state dict (:func:`load_vgg16_weights`):
``features.*`` map onto conv1_1…conv5_3 unchanged; fc6/fc7 are decimated from the
classifier as the paper does (its §4.1 and Table 2, "DeepLab-LargeFOV"), see
:func:`subsample_fc6` and :func:`subsample_fc7`. fc8 is always freshly initialised.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tilesegment.errors import ModelError
from tilesegment.models.deeplab_geometry import (
    FC6_DILATION,
    MSC_CHANNELS,
    MSC_SOURCES,
    OUTPUT_STRIDE,
    VGG16_BLOCKS,
    msc_source_strides,
)

FC_CHANNELS = 1024
# torchvision's ``vgg16().features`` indices of the 13 convolutions, in order.
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
CONV_NAMES = tuple(f"conv{b}_{i}" for b, n, *_ in VGG16_BLOCKS for i in range(1, n + 1))


def deeplab_receptive_radius() -> int:
    """How far (px) from an output pixel its inputs may lie: 220, whatever its phase.

    Score-map field by the size/jump recurrence: 3×3 convs add ``2·d·j``, 3×3 pools add
    ``2j`` (and double ``j`` at stride 2): 419 px, i.e. ±209 around score pixel ``i``,
    centred on input pixel ``8i`` (all paddings are symmetric). The bilinear upsampling
    (``align_corners=False``) reads score pixels ``i-1, i`` for output ``8i + r``, r ≤ 3,
    and ``i, i+1`` for r ≥ 4; the worst phase is r = 3: ``3 + 8 + 209 = 220``. Checked
    against :func:`tilesegment.models.probe.measure_receptive_radius` in the tests.
    """
    size, jump = 1, 1
    for _, convs, _, dilation, stride in VGG16_BLOCKS:
        size += convs * 2 * dilation * jump
        size += 2 * jump  # 3×3 max-pool
        jump *= stride
    size += 2 * FC6_DILATION * jump  # fc6; fc7 and fc8 are 1×1
    half = size // 2
    reach = 0
    for r in range(OUTPUT_STRIDE):
        # Score pixels read by output 8i + r (align_corners=False): i-1, i or i, i+1.
        lo, hi = (-1, 0) if r < OUTPUT_STRIDE // 2 else (0, 1)
        reach = max(reach, r - (lo * OUTPUT_STRIDE - half), hi * OUTPUT_STRIDE + half - r)
    return reach


RECEPTIVE_RADIUS = 220


class DeepLabV1(nn.Module):
    """DeepLab-LargeFOV: ``float32[N, in_channels, H, W] → float32[N, num_classes, H, W]``.

    ``width`` scales every VGG channel count (64 is the paper's) and ``fc_channels`` is the
    fc6/fc7 width (1024 for LargeFOV); smaller values only serve fast tests.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 21, width: int = 64,
                 fc_channels: int = FC_CHANNELS, dropout: float = 0.5):
        super().__init__()
        if in_channels < 1 or num_classes < 1:
            raise ValueError("in_channels and num_classes must be positive")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        c = in_channels
        for block, convs, channels, dilation, stride in VGG16_BLOCKS:
            out = channels * width // 64
            for i in range(1, convs + 1):
                layers[f"conv{block}_{i}"] = nn.Conv2d(c, out, 3, padding=dilation,
                                                       dilation=dilation)
                layers[f"relu{block}_{i}"] = nn.ReLU(inplace=True)
                c = out
            layers[f"pool{block}"] = nn.MaxPool2d(3, stride=stride, padding=1)
        self.backbone = nn.Sequential(layers)
        self.head = nn.Sequential(OrderedDict([
            ("fc6", nn.Conv2d(c, fc_channels, 3, padding=FC6_DILATION,
                              dilation=FC6_DILATION)),
            ("relu6", nn.ReLU(inplace=True)),
            ("drop6", nn.Dropout(dropout)),
            ("fc7", nn.Conv2d(fc_channels, fc_channels, 1)),
            ("relu7", nn.ReLU(inplace=True)),
            ("drop7", nn.Dropout(dropout)),
        ]))
        self.fc8 = nn.Conv2d(fc_channels, num_classes, 1)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal (fan-in) convolutions with zero biases, so random-weight activations
        keep their scale through 15 ReLU layers; fc8 ~ N(0, 0.01²) as in the paper."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc8.weight, 0.0, 0.01)

    def score_map(self, x: torch.Tensor) -> torch.Tensor:
        """fc8 scores ``float32[N, K, ⌈H/8⌉, ⌈W/8⌉]`` (exactly ``H/8 × W/8`` for multiples
        of 8)."""
        return self.fc8(self.head(self.backbone(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.score_map(x)
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)


class DeepLabMSc(DeepLabV1):
    """DeepLab-MSc-LargeFOV (the paper's §4.2, "multi-scale prediction"): LargeFOV plus a
    two-layer MLP on the input and on each of pool1..pool4 (a 3×3 conv of ``msc_channels``
    (128), a 1×1 conv of 128, ReLU after each), whose features join fc7's before the class
    layer. The paper concatenates them (5 × 128 = 640 more channels) and applies fc8; a 1×1
    layer on a concatenation is the sum of 1×1 layers on the parts, so each head here ends
    in its own 1×1 conv to the classes and the scores are summed with fc8's (as the released
    Caffe nets do). Each head's 3×3 conv strides by ``8 / stride`` of its source (8 on the
    input, 4 on pool1, 2 on pool2, 1 on pool3/pool4), which centres its pixel ``i`` on input
    pixel ``8i``, where fc8's pixel ``i`` lies. Same input/output contract as LargeFOV.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 21, width: int = 64,
                 fc_channels: int = FC_CHANNELS, dropout: float = 0.5,
                 msc_channels: int = MSC_CHANNELS):
        super().__init__(in_channels, num_classes, width, fc_channels, dropout)
        source_channels = {"input": in_channels}
        for block, _, channels, _, _ in VGG16_BLOCKS[:4]:
            source_channels[f"pool{block}"] = channels * width // 64
        strides = msc_source_strides()
        self.msc = nn.ModuleDict()
        for src in MSC_SOURCES:
            self.msc[src] = nn.Sequential(OrderedDict([
                ("conv1", nn.Conv2d(source_channels[src], msc_channels, 3,
                                    stride=OUTPUT_STRIDE // strides[src], padding=1)),
                ("relu1", nn.ReLU(inplace=True)),
                ("conv2", nn.Conv2d(msc_channels, msc_channels, 1)),
                ("relu2", nn.ReLU(inplace=True)),
                ("score", nn.Conv2d(msc_channels, num_classes, 1)),
            ]))
        self.reset_parameters()
        for head in self.msc.values():
            nn.init.normal_(head.score.weight, 0.0, 0.01)

    def score_map(self, x: torch.Tensor) -> torch.Tensor:
        """fc8 scores plus the five heads' scores, ``float32[N, K, ⌈H/8⌉, ⌈W/8⌉]``."""
        maps = {"input": x}
        h = x
        for name, layer in self.backbone.named_children():
            h = layer(h)
            if name in self.msc:
                maps[name] = h
        score = self.fc8(self.head(h))
        for src, head in self.msc.items():
            score = score + head(maps[src])
        return score


def build_deeplab(in_channels: int, num_classes: int,
                  backbone_weights: str | Path | Mapping[str, torch.Tensor] | None = None,
                  width: int = 64, fc_channels: int = FC_CHANNELS, msc: bool = False,
                  msc_channels: int = MSC_CHANNELS) -> DeepLabV1:
    """A :class:`DeepLabV1` (``width``, ``fc_channels``: see the class), or with ``msc`` a
    :class:`DeepLabMSc`; with ``backbone_weights`` (a local torchvision VGG16 state dict
    file or mapping) its conv layers and fc6/fc7 are initialised from VGG16, which needs the
    full width (the MSc heads keep their random initialisation)."""
    if width < 1 or fc_channels < 1:
        raise ModelError(f"width {width} and fc_channels {fc_channels} must be positive")
    if msc:
        model: DeepLabV1 = DeepLabMSc(in_channels, num_classes, width=width,
                                      fc_channels=fc_channels, msc_channels=msc_channels)
    else:
        model = DeepLabV1(in_channels, num_classes, width=width, fc_channels=fc_channels)
    if backbone_weights is not None:
        if width != 64 or fc_channels != FC_CHANNELS:
            raise ModelError("VGG16 backbone weights need width 64 and fc_channels "
                             f"{FC_CHANNELS}")
        load_vgg16_weights(model, backbone_weights)
    return model


# --- VGG16 weights -----------------------------------------------------------------------


def subsample_fc6(weight: torch.Tensor, bias: torch.Tensor, channels: int = FC_CHANNELS,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """VGG16 fc6 ``(4096, 25088)`` or ``(4096, 512, 7, 7)`` → LargeFOV fc6 ``(1024, 512,
    3, 3)`` and bias ``(1024,)``, by decimation as in the paper (§4.1, Table 2).

    Filters ``0, 4, 8, …`` are kept (every ``4096 / channels``-th), and of each 7×7 kernel
    the taps at rows and columns ``0, 3, 6``. Why 3 and dilation 12: VGG's fc6 sees pool5
    at stride 32; DeepLab's pool5 is at stride 8, 4× denser, so a 7×7 window of the
    original spans 4·6 = 24 pool5 pixels. Its taps 0, 3, 6 are 3 original steps apart, i.e.
    3·4 = 12 DeepLab pool5 pixels: a 3×3 kernel of dilation 12 covers the same 24-pixel
    field. The rows of the flattened torchvision weight are (channel, row, col) in C order.
    """
    out_total = weight.shape[0]
    if weight.ndim == 2:
        if weight.shape[1] != 512 * 7 * 7:
            raise ModelError(f"fc6 weight {tuple(weight.shape)} is not VGG16's (4096, 25088)")
        weight = weight.reshape(out_total, 512, 7, 7)
    if weight.shape[1:] != (512, 7, 7) or out_total % channels:
        raise ModelError(f"fc6 weight {tuple(weight.shape)} cannot give {channels} filters "
                         "of 512×3×3")
    step = out_total // channels
    taps = torch.arange(0, 7, 3)
    w = weight[::step][:, :, taps][:, :, :, taps]
    return w.contiguous().clone(), bias[::step].contiguous().clone()


def subsample_fc7(weight: torch.Tensor, bias: torch.Tensor, channels: int = FC_CHANNELS,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """VGG16 fc7 ``(4096, 4096)`` → ``(1024, 1024, 1, 1)``: every 4th output filter and,
    to match the decimated fc6, every 4th input."""
    if weight.ndim != 2 or weight.shape[0] % channels or weight.shape[1] % channels:
        raise ModelError(f"fc7 weight {tuple(weight.shape)} cannot give {channels}×{channels}")
    so, si = weight.shape[0] // channels, weight.shape[1] // channels
    w = weight[::so, ::si].reshape(channels, channels, 1, 1)
    return w.contiguous().clone(), bias[::so].contiguous().clone()


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """conv1_1 ``(64, 3, 3, 3)`` → ``(64, in_channels, 3, 3)``: unchanged for 3 bands;
    otherwise every band gets the RGB-mean kernel scaled by ``3 / in_channels`` (the sum for
    one band). Band order is unknown, so colour-opponent filters do not transfer, but a
    grey image (all bands equal) gives exactly the RGB network's conv1_1 response."""
    if in_channels == weight.shape[1]:
        return weight.clone()
    mean = weight.mean(dim=1, keepdim=True) * (weight.shape[1] / in_channels)
    return mean.repeat(1, in_channels, 1, 1)


def vgg16_to_deeplab(state: Mapping[str, torch.Tensor], in_channels: int = 3,
                     ) -> dict[str, torch.Tensor]:
    """A torchvision ``vgg16`` state dict → this module's names: ``backbone.conv*`` from
    ``features.*`` and, when the classifier is present, ``head.fc6``/``head.fc7``."""
    if any("running_mean" in k for k in state):
        raise ModelError("these are vgg16_bn weights; DeepLab v1 uses plain VGG16")
    out: dict[str, torch.Tensor] = {}
    for name, index in zip(CONV_NAMES, TORCHVISION_CONV_INDICES, strict=True):
        for part in ("weight", "bias"):
            key = f"features.{index}.{part}"
            if key not in state:
                raise ModelError(f"not a torchvision VGG16 state dict: {key} is missing")
            out[f"backbone.{name}.{part}"] = state[key]
    out["backbone.conv1_1.weight"] = adapt_first_conv(out["backbone.conv1_1.weight"],
                                                      in_channels)
    if "classifier.0.weight" in state:
        w, b = subsample_fc6(state["classifier.0.weight"], state["classifier.0.bias"])
        out["head.fc6.weight"], out["head.fc6.bias"] = w, b
    if "classifier.3.weight" in state:
        w, b = subsample_fc7(state["classifier.3.weight"], state["classifier.3.bias"])
        out["head.fc7.weight"], out["head.fc7.bias"] = w, b
    return out


def load_vgg16_weights(model: DeepLabV1,
                       source: str | Path | Mapping[str, torch.Tensor]) -> list[str]:
    """Copy VGG16 weights (a local file read safely, or a mapping) into ``model``.

    Returns the names of the tensors loaded; fc8 (and fc6/fc7 if the file holds only
    ``features.*``) keep their random initialisation. Shapes are checked by name.
    """
    if isinstance(source, str | Path):
        from tilesegment.models.weights import read_state_dict

        source = read_state_dict(source)
    mapped = vgg16_to_deeplab(source, model.in_channels)
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} ≠ {tuple(own[k].shape)}" for k, v in mapped.items()
             if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise ModelError("VGG16 weights do not fit this DeepLab: " + "; ".join(wrong[:3]))
    with torch.no_grad():
        for k, v in mapped.items():
            own[k].copy_(v)
    return sorted(mapped)
