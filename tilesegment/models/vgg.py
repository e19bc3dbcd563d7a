"""The VGG16 convolutional body (Simonyan & Zisserman 2015, configuration D), optionally with
batch normalisation after every convolution (torchvision's ``vgg16_bn``), and a loader for
torchvision's ImageNet VGG16 / VGG16-BN state dicts, read from a local file only.

Thirteen 3×3 convolutions (padding 1) with ReLU in five stages of 2, 2, 3, 3, 3 layers and
64, 128, 256, 512, 512 channels, each stage ending in a 2×2 stride-2 max-pool. Layers carry
the paper's names (``conv3_2``, ``pool4``); :meth:`VGG16.forward` returns the pool3, pool4
and pool5 maps, at strides 8, 16 and 32. Any number of input channels: see
:func:`adapt_first_conv` for how pretrained RGB weights are fitted to them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from tilesegment.errors import ModelError

# Channels of the convolutions of each stage (configuration D).
STAGES: tuple[tuple[int, ...], ...] = (
    (64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# torchvision's ``vgg16().classifier`` indices of its three Linear layers, with our names.
CLASSIFIER = {"fc6": 0, "fc7": 3, "fc8": 6}


class VGGFeatures(NamedTuple):
    """The maps the FCN skips use: ``float32[N, 4w, H/8, W/8]``, ``[N, 8w, H/16, W/16]``,
    ``[N, 8w, H/32, W/32]`` for width ``w`` (64 in the paper; sizes rounded as the pools
    round: down by default, up with ``ceil_mode``)."""

    pool3: torch.Tensor
    pool4: torch.Tensor
    pool5: torch.Tensor


def conv_names() -> list[str]:
    """``["conv1_1", "conv1_2", "conv2_1", ..., "conv5_3"]``."""
    return [f"conv{s + 1}_{i + 1}" for s, stage in enumerate(STAGES) for i in range(len(stage))]


def torchvision_feature_index(batch_norm: bool = False) -> dict[str, int]:
    """Where each convolution sits in torchvision's ``vgg16().features`` Sequential
    (``conv1_1`` → 0, ``conv1_2`` → 2, ``conv2_1`` → 5, ...): every conv is followed by a
    ReLU, every stage by a max-pool. ``batch_norm``: ``vgg16_bn``, where a BatchNorm2d
    follows each conv at the next index (``conv1_2`` → 3, ``conv2_1`` → 7, ...)."""
    index, i = {}, 0
    for s, stage in enumerate(STAGES):
        for c in range(len(stage)):
            index[f"conv{s + 1}_{c + 1}"] = i
            i += 3 if batch_norm else 2
        i += 1
    return index


class VGG16(nn.Module):
    """VGG16's convolutional body on ``in_channels`` bands.

    ``width`` scales every stage's channels (64 → the paper's 64-128-256-512-512); a smaller
    width keeps the geometry (strides, receptive field) for fast tests. ``ceil_mode``
    rounds pooled sizes up as Caffe does (the FCN needs it; torchvision rounds down — the two
    agree whenever every stage sees an even size, e.g. 224×224). ``batch_norm``: a
    BatchNorm2d (``bn1_1`` …) between each conv and its ReLU, as in ``vgg16_bn``; in eval mode
    it is a fixed per-channel affine map (running statistics), so geometry is unchanged.
    """

    def __init__(self, in_channels: int = 3, width: int = 64, ceil_mode: bool = False,
                 batch_norm: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.width = width
        self.batch_norm = batch_norm
        c = in_channels
        stages = []
        for s, stage in enumerate(STAGES):
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            for i, out in enumerate(stage):
                out = out * width // 64
                layers[f"conv{s + 1}_{i + 1}"] = nn.Conv2d(c, out, 3, padding=1)
                if batch_norm:
                    layers[f"bn{s + 1}_{i + 1}"] = nn.BatchNorm2d(out)
                layers[f"relu{s + 1}_{i + 1}"] = nn.ReLU(inplace=True)
                c = out
            layers[f"pool{s + 1}"] = nn.MaxPool2d(2, stride=2, ceil_mode=ceil_mode)
            stages.append(nn.Sequential(layers))
        self.stages = nn.ModuleList(stages)
        self.out_channels = c
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation (normal, fan-in, std √(2/fan_in)), biases zero: what one uses to
        train VGG16 from scratch without the paper's staged schedule."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def conv(self, name: str) -> nn.Conv2d:
        """The convolution called ``name`` (``"conv4_3"``)."""
        stage = int(name[4]) - 1
        return getattr(self.stages[stage], name)

    def bn(self, name: str) -> nn.BatchNorm2d:
        """The batch norm after convolution ``name`` (``"conv4_3"`` → ``bn4_3``)."""
        return getattr(self.stages[int(name[4]) - 1], "bn" + name[4:])

    def forward(self, x: torch.Tensor) -> VGGFeatures:
        """``float32[N, C, H, W]`` → pool3, pool4 and pool5 maps."""
        pools = []
        for stage in self.stages:
            x = stage(x)
            pools.append(x)
        return VGGFeatures(pools[2], pools[3], pools[4])

    def load_pretrained(self, weights: VGG16Weights) -> VGG16:
        """Copy the 13 convolutions of ``weights`` in, fitting ``conv1_1`` to this body's
        input channels (:func:`adapt_first_conv`). Needs ``width`` 64."""
        if self.width != 64:
            raise ModelError(f"pretrained VGG16 weights need width 64, not {self.width}")
        if bool(weights.bns) != self.batch_norm:
            raise ModelError("VGG16-BN weights need the batch-normalised body (a -bn model), "
                             "plain VGG16 weights the plain one" if weights.bns else
                             "a batch-normalised body needs vgg16_bn weights, not plain VGG16")
        with torch.no_grad():
            for name in conv_names():
                conv = self.conv(name)
                w = weights.convs[f"{name}.weight"]
                if name == "conv1_1":
                    w = adapt_first_conv(w, self.in_channels)
                conv.weight.copy_(w)
                conv.bias.copy_(weights.convs[f"{name}.bias"])
                if self.batch_norm:
                    self.bn(name).load_state_dict(weights.bns[name])
        return self


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Fit RGB ``conv1_1`` weights ``[64, 3, 3, 3]`` to ``in_channels`` bands.

    3 bands: unchanged (the bands are taken to be R, G, B in that order). Otherwise each band
    gets the mean of the RGB kernels scaled by ``3 / C``: a raster whose ``C`` bands all equal
    one grey image ``g`` then gives the same ``conv1_1`` response as the RGB image
    ``(g, g, g)`` does with the original weights, so activations keep their scale.
    """
    if weight.shape[1] != 3:
        raise ModelError(f"conv1_1 weights have {weight.shape[1]} input channels, expected 3")
    if in_channels == 3:
        return weight.clone()
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, 1, 1) * (3.0 / in_channels)


@dataclass(frozen=True)
class VGG16Weights:
    """torchvision VGG16 tensors under our names.

    ``convs``: ``"conv1_1.weight"`` … ``"conv5_3.bias"`` (RGB, 3 input channels);
    ``fc6``, ``fc7``, ``fc8``: the classifier's Linear layers (25088→4096, 4096→4096,
    4096→1000), as :class:`torch.nn.Linear` modules. ``bns``: for ``vgg16_bn``, each
    conv's BatchNorm2d state (``"conv1_1"`` → weight, bias, running_mean, running_var,
    num_batches_tracked); empty for plain VGG16.
    """

    convs: dict[str, torch.Tensor]
    fc6: nn.Linear
    fc7: nn.Linear
    fc8: nn.Linear
    bns: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def expected_torchvision_shapes(batch_norm: bool = False) -> dict[str, tuple[int, ...]]:
    """Every tensor of torchvision's ``vgg16().state_dict()`` (``vgg16_bn()`` with
    ``batch_norm``) and its shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    c = 3
    for name, i in torchvision_feature_index(batch_norm).items():
        stage, layer = int(name[4]) - 1, int(name[6]) - 1
        out = STAGES[stage][layer]
        shapes[f"features.{i}.weight"] = (out, c, 3, 3)
        shapes[f"features.{i}.bias"] = (out,)
        if batch_norm:
            for t in BN_TENSORS:
                shapes[f"features.{i + 1}.{t}"] = () if t == "num_batches_tracked" else (out,)
        c = out
    for (fin, fout), i in zip(((512 * 7 * 7, 4096), (4096, 4096), (4096, 1000)),
                              CLASSIFIER.values(), strict=True):
        shapes[f"classifier.{i}.weight"] = (fout, fin)
        shapes[f"classifier.{i}.bias"] = (fout,)
    return shapes


def load_torchvision_vgg16(state_dict_path: str | Path,
                           batch_norm: bool = False) -> VGG16Weights:
    """Read a local torchvision VGG16 state-dict file (``vgg16-397923af.pth`` or a
    ``.safetensors`` copy; ``torch.load`` with ``weights_only=True``) and rename its tensors;
    with ``batch_norm`` a ``vgg16_bn`` file (``vgg16_bn-6c64b313.pth``), BN states included.

    Raises :class:`ModelError` naming missing, unexpected and wrongly shaped tensors (a
    ``vgg16_bn`` file where plain VGG16 is expected, say, or a truncated one). Nothing is
    ever downloaded.
    """
    from tilesegment.models.weights import check_state_fits, read_state_dict

    state = read_state_dict(state_dict_path)
    is_bn = any(k.endswith("running_mean") for k in state)
    kind = "VGG16-BN" if batch_norm else "VGG16"
    hint = ""
    if is_bn != batch_norm:
        hint = (" (it holds vgg16_bn weights: use an fcn*-bn model)" if is_bn else
                " (it holds plain vgg16 weights: use fcn32s, fcn16s or fcn8s)")
    check_state_fits(expected_torchvision_shapes(batch_norm), state, str(state_dict_path),
                     problem=f"not a torchvision {kind} state dict{hint}", show_shapes=True,
                     limit=6)
    convs, bns = {}, {}
    for name, i in torchvision_feature_index(batch_norm).items():
        convs[f"{name}.weight"] = state[f"features.{i}.weight"].float()
        convs[f"{name}.bias"] = state[f"features.{i}.bias"].float()
        if batch_norm:
            bns[name] = {t: state[f"features.{i + 1}.{t}"] for t in BN_TENSORS}
    fcs = {}
    for name, i in CLASSIFIER.items():
        w = state[f"classifier.{i}.weight"]
        linear = nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0])  # no random init
        with torch.no_grad():
            linear.weight.copy_(w)
            linear.bias.copy_(state[f"classifier.{i}.bias"])
        fcs[name] = linear
    return VGG16Weights(convs, **fcs, bns=bns)
