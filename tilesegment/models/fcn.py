"""Fully convolutional networks (Long, Shelhamer, Darrell 2015): FCN-32s, FCN-16s, FCN-8s on
a VGG16 body, with the paper's (Caffe reference) geometry.

- fc6/fc7 become convolutions (7×7 512→4096, 1×1 4096→4096, ReLU + dropout), and a 1×1
  ``score_fr`` gives ``K`` class scores at stride 32.
- FCN-32s: ``upscore``, a ×32 transposed convolution fixed to bilinear interpolation.
- FCN-16s: ``upscore2`` (×2, bilinear-initialised, learned) plus ``score_pool4`` (1×1 on
  pool4, zero-initialised), summed; ``upscore16`` (×16, fixed bilinear).
- FCN-8s: as FCN-16s, then ``upscore_pool4`` (×2, learned) plus ``score_pool3`` (zero-init);
  ``upscore8`` (×8, fixed bilinear).

Any input size works: conv1_1 sees 100 zero pixels of padding per side, so even a 1×1 input
leaves a 7×7 pool5 for fc6, and each coarse map is cropped onto the finer one at an offset
derived (not guessed) in :func:`crop_offsets`. Input ``float32[N, C, H, W]``, output
``float32[N, K, H, W]`` logits. Output stride 32: the output is shift-equivariant for shifts
that are multiples of 32, and each output pixel depends on input pixels at most
:func:`receptive_radius` away.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tilesegment.errors import ModelError
from tilesegment.models.vgg import STAGES, VGG16, VGG16Weights, load_torchvision_vgg16

VARIANTS = ("32s", "16s", "8s")
FINER = {"32s": "16s", "16s": "8s"}
PAD = 100  # conv1_1's zero padding in the paper's nets (Caffe ``pad: 100``)


# --- geometry: where the pixels of each map sit on the input ------------------------------


@dataclass(frozen=True)
class Layer:
    """A geometric step: ``"conv"``/``"pool"`` (kernel, stride, padding) or ``"up"`` (a
    transposed convolution of that kernel and stride, no padding)."""

    kind: str
    kernel: int
    stride: int = 1
    pad: int = 0


def vgg_layers(stages: int) -> list[Layer]:
    """VGG16 up to ``pool{stages}``, conv1_1 padded by :data:`PAD`, the others by 1."""
    layers = []
    for s in range(stages):
        for i in range(len(STAGES[s])):
            layers.append(Layer("conv", 3, 1, PAD if s == i == 0 else 1))
        layers.append(Layer("pool", 2, 2))
    return layers


FC = [Layer("conv", 7), Layer("conv", 1), Layer("conv", 1)]  # fc6, fc7, score_fr


def up(factor: int) -> Layer:
    """The paper's ×``factor`` upsampler: kernel ``2·factor``, stride ``factor``."""
    return Layer("up", 2 * factor, factor)


def centre_grid(layers: list[Layer]) -> tuple[float, float]:
    """``(step, origin)``: pixel ``i`` of the map after ``layers`` is centred on input
    coordinate ``origin + step·i`` (input pixel ``j`` covers ``[j - ½, j + ½]``).

    A conv or pool of kernel ``k``, stride ``s``, padding ``p`` centres its output ``i`` on
    its input ``s·i - p + (k-1)/2``; a transposed conv spreads input ``i`` over outputs
    ``s·i … s·i + k - 1``, centred on ``s·i + (k-1)/2``, so its output ``o`` sits on input
    ``(o - (k-1)/2) / s``.
    """
    step, origin = 1.0, 0.0
    for layer in layers:
        if layer.kind == "up":
            origin -= step * (layer.kernel - 1) / 2 / layer.stride
            step /= layer.stride
        else:
            origin += step * ((layer.kernel - 1) / 2 - layer.pad)
            step *= layer.stride
    return step, origin


def _offset(layers: list[Layer], onto: list[Layer]) -> int:
    """Crop offset putting the map after ``layers`` onto the grid of the map after ``onto``."""
    (step, origin), (ref_step, ref_origin) = centre_grid(layers), centre_grid(onto)
    c = (ref_origin - origin) / step
    if step != ref_step or c != int(c) or c < 0:
        raise AssertionError(f"maps do not align: {step, origin} onto {ref_step, ref_origin}")
    return int(c)


def branches() -> dict[str, list[Layer]]:
    """The layers from the input to each map that is fused or cropped, by layer name."""
    score = [*vgg_layers(5), *FC]
    fuse4 = [*score, up(2)]
    return {
        "score_fr": score, "score_pool4": [*vgg_layers(4), Layer("conv", 1)],
        "score_pool3": [*vgg_layers(3), Layer("conv", 1)],
        "upscore": [*score, up(32)], "fuse_pool4": fuse4, "upscore16": [*fuse4, up(16)],
        "fuse_pool3": [*fuse4, up(2)], "upscore8": [*fuse4, up(2), up(8)],
    }


def crop_offsets(variant: str) -> dict[str, int]:
    """Offsets of the crops, derived from :func:`centre_grid`.

    score_fr pixel ``k`` is centred on input ``32k + 12.5`` (pool5 on ``32k - 83.5``: conv1_1's
    padding of 100 less its half kernel puts its first pixel on ``-99``; each pool adds half
    its step; fc6's 7×7 adds 3 steps). ``upscore`` (kernel 64, stride 32) then puts its pixel
    ``o`` on ``o - 19``: crop 19. For FCN-16s, ``upscore2`` pixels sit on ``16j - 11.5`` and
    score_pool4's on ``16m - 91.5``: crop 5 for the skip, 27 after ``upscore16``. For FCN-8s
    the pool3 skip (``8m - 95.5``) is cropped by 9 onto ``8j - 23.5``; 31 after ``upscore8``.
    These are the Caffe reference nets' numbers (19; 5, 27; 9, 31).
    """
    b = branches()
    data: list[Layer] = []
    if variant == "32s":
        return {"output": _offset(b["upscore"], data)}
    if variant == "16s":
        return {"score_pool4": _offset(b["score_pool4"], b["fuse_pool4"]),
                "output": _offset(b["upscore16"], data)}
    if variant == "8s":
        return {"score_pool4": _offset(b["score_pool4"], b["fuse_pool4"]),
                "score_pool3": _offset(b["score_pool3"], b["fuse_pool3"]),
                "output": _offset(b["upscore8"], data)}
    raise ModelError(f"FCN variant {variant!r} unknown; use one of {VARIANTS}")


def _support(ops: list[tuple[str, Layer | int]], lo: int, hi: int) -> tuple[int, int]:
    """Input pixels ``[lo', hi']`` that output pixels ``[lo, hi]`` of ``ops`` (listed from
    the output back to the input) may depend on."""
    for kind, op in ops:
        if kind == "crop":
            assert isinstance(op, int)
            lo, hi = lo + op, hi + op
        else:
            assert isinstance(op, Layer)
            if op.kind == "up":  # inputs i with 0 <= o - s·i <= k - 1
                lo, hi = -((op.kernel - 1 - lo) // op.stride), hi // op.stride
            else:
                lo, hi = op.stride * lo - op.pad, op.stride * hi - op.pad + op.kernel - 1
    return lo, hi


def receptive_radius(variant: str) -> int:
    """Largest distance between an output pixel and an input pixel it depends on, over all
    32 phases (every tap of a bilinear kernel is non-zero, so supports are exact)."""
    off = crop_offsets(variant)

    def rev(layers: list[Layer]) -> list[tuple[str, Layer | int]]:
        return [("layer", x) for x in reversed(layers)]

    score = rev([*vgg_layers(5), *FC])
    pool4 = [("crop", off.get("score_pool4", 0)), *rev([*vgg_layers(4), Layer("conv", 1)])]
    pool3 = [("crop", off.get("score_pool3", 0)), *rev([*vgg_layers(3), Layer("conv", 1)])]
    out: list[tuple[str, Layer | int]] = [("crop", off["output"])]
    paths = {
        "32s": [[*out, ("layer", up(32)), *score]],
        "16s": [[*out, ("layer", up(16)), ("layer", up(2)), *score],
                [*out, ("layer", up(16)), *pool4]],
        "8s": [[*out, ("layer", up(8)), ("layer", up(2)), ("layer", up(2)), *score],
               [*out, ("layer", up(8)), ("layer", up(2)), *pool4],
               [*out, ("layer", up(8)), *pool3]],
    }[variant]
    reach = 0
    for x in range(32):
        for path in paths:
            lo, hi = _support(path, x, x)
            reach = max(reach, x - lo, hi - x)
    return reach


# --- layers --------------------------------------------------------------------------------


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """The bilinear upsampling filter ``float32[channels, channels, k, k]``: channel ``c`` to
    channel ``c`` only. For factor ``f = ⌈k/2⌉`` and centre ``f - 1`` (odd ``k``) or
    ``f - ½`` (even ``k``), tap ``(i, j)`` is ``(1 - |i - centre|/f)(1 - |j - centre|/f)``."""
    factor = (kernel_size + 1) // 2
    centre = factor - 1 if kernel_size % 2 else factor - 0.5
    taps = 1 - np.abs(np.arange(kernel_size) - centre) / factor
    filt = torch.from_numpy(np.outer(taps, taps).astype(np.float32))
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = filt
    return weight


def upsampler(channels: int, factor: int, learnable: bool) -> nn.ConvTranspose2d:
    """×``factor`` transposed convolution (kernel ``2·factor``, no bias), set to bilinear
    interpolation; ``learnable=False`` fixes it (``requires_grad=False``)."""
    layer = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, bias=False)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, 2 * factor))
    layer.weight.requires_grad_(learnable)
    return layer


def convolutionize(linear: nn.Linear, in_channels: int, kernel: int) -> nn.Conv2d:
    """The ``kernel×kernel`` convolution computing ``linear`` on every window: a classifier's
    ``[out, in_channels·k·k]`` weight (inputs flattened as C, H, W) becomes
    ``[out, in_channels, k, k]``. VGG16's classifier.0 → fc6 ``4096×512×7×7``; classifier.3
    → fc7 ``4096×4096×1×1``."""
    if linear.in_features != in_channels * kernel * kernel:
        raise ModelError(f"a Linear of {linear.in_features} inputs is not a {kernel}×{kernel} "
                         f"convolution over {in_channels} channels")
    w = linear.weight
    conv = nn.utils.skip_init(nn.Conv2d, in_channels, linear.out_features, kernel,
                              bias=linear.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        conv.weight.copy_(w.reshape(linear.out_features, in_channels, kernel, kernel))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


def _crop(x: torch.Tensor, offset: int, size: tuple[int, ...]) -> torch.Tensor:
    return x[..., offset:offset + size[0], offset:offset + size[1]]


class FCN(nn.Module):
    """FCN-``variant`` (``"32s"``, ``"16s"``, ``"8s"``) on a VGG16 body.

    ``width`` (64) and ``fc_channels`` (4096) are the paper's; smaller values keep every
    geometric property for fast tests. ``score_std``: ``score_fr`` weights drawn from
    N(0, score_std²), or zero when 0 (the paper zero-initialises its class scores).
    ``batch_norm``: the body is VGG16-BN (torchvision's ``vgg16_bn``: a BatchNorm2d after
    each of the 13 convolutions; fc6/fc7 have none), run with its running statistics in
    eval mode.
    """

    def __init__(self, variant: str = "32s", in_channels: int = 3, num_classes: int = 21,
                 width: int = 64, fc_channels: int = 4096, score_std: float = 0.0,
                 batch_norm: bool = False):
        super().__init__()
        if variant not in VARIANTS:
            raise ModelError(f"FCN variant {variant!r} unknown; use one of {VARIANTS}")
        self.variant = variant
        self.in_channels, self.num_classes = in_channels, num_classes
        self.width, self.fc_channels = width, fc_channels
        self.batch_norm = batch_norm
        self.offsets = crop_offsets(variant)
        k = num_classes
        self.backbone = VGG16(in_channels, width, ceil_mode=True, batch_norm=batch_norm)
        c5 = self.backbone.out_channels
        self.fc6, self.relu6, self.drop6 = nn.Conv2d(c5, fc_channels, 7), nn.ReLU(True), \
            nn.Dropout(0.5)
        self.fc7, self.relu7, self.drop7 = nn.Conv2d(fc_channels, fc_channels, 1), \
            nn.ReLU(True), nn.Dropout(0.5)
        self.score_fr = nn.Conv2d(fc_channels, k, 1)
        if variant == "32s":
            self.upscore = upsampler(k, 32, learnable=False)
        else:
            self.upscore2 = upsampler(k, 2, learnable=True)
            self.score_pool4 = nn.Conv2d(8 * width, k, 1)
        if variant == "16s":
            self.upscore16 = upsampler(k, 16, learnable=False)
        if variant == "8s":
            self.upscore_pool4 = upsampler(k, 2, learnable=True)
            self.score_pool3 = nn.Conv2d(4 * width, k, 1)
            self.upscore8 = upsampler(k, 8, learnable=False)
        for layer in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        self.reset_scores(score_std)
        self.reset_head()

    def reset_scores(self, score_std: float = 0.0) -> None:
        """``score_fr`` weights from N(0, score_std²), or zero when ``score_std`` is 0 (the
        paper: "we initialize the class scoring layer to zero"); its bias zero."""
        with torch.no_grad():
            if score_std:
                self.score_fr.weight.normal_(0.0, score_std)
            else:
                self.score_fr.weight.zero_()
            self.score_fr.bias.zero_()

    def reset_head(self) -> None:
        """Every upsampler to bilinear, the skip scores (score_pool4, score_pool3) to zero."""
        with torch.no_grad():
            for name in ("upscore", "upscore2", "upscore16", "upscore_pool4", "upscore8"):
                layer = getattr(self, name, None)
                if layer is not None:
                    layer.weight.copy_(bilinear_kernel(self.num_classes, layer.kernel_size[0]))
            for name in ("score_pool4", "score_pool3"):
                layer = getattr(self, name, None)
                if layer is not None:
                    layer.weight.zero_()
                    layer.bias.zero_()

    def fc(self, pool5: torch.Tensor) -> torch.Tensor:
        """fc6 → ReLU → dropout → fc7 → ReLU → dropout: ``[N, 512, h, w]`` →
        ``[N, 4096, h - 6, w - 6]``."""
        x = self.drop6(self.relu6(self.fc6(pool5)))
        return self.drop7(self.relu7(self.fc7(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``float32[N, C, H, W]`` → logits ``float32[N, K, H, W]``."""
        size = tuple(x.shape[-2:])
        # conv1_1's own padding is 1; 99 more zeros make the paper's 100. Kept outside the
        # body so that the body stays torchvision's VGG16 features exactly.
        feats = self.backbone(F.pad(x, (PAD - 1,) * 4))
        score = self.score_fr(self.fc(feats.pool5))
        if self.variant == "32s":
            return _crop(self.upscore(score), self.offsets["output"], size)
        fuse = self.upscore2(score)
        fuse = fuse + _crop(self.score_pool4(feats.pool4), self.offsets["score_pool4"],
                            tuple(fuse.shape[-2:]))
        if self.variant == "16s":
            return _crop(self.upscore16(fuse), self.offsets["output"], size)
        fuse = self.upscore_pool4(fuse)
        fuse = fuse + _crop(self.score_pool3(feats.pool3), self.offsets["score_pool3"],
                            tuple(fuse.shape[-2:]))
        return _crop(self.upscore8(fuse), self.offsets["output"], size)

    def load_backbone(self, weights: VGG16Weights) -> FCN:
        """Load VGG16's 13 convolutions and its fc6/fc7 (convolutionized) from ``weights``."""
        if self.width != 64 or self.fc_channels != 4096:
            raise ModelError("pretrained VGG16 weights need width 64 and fc_channels 4096")
        self.backbone.load_pretrained(weights)
        with torch.no_grad():
            for layer, linear, c_in, k in ((self.fc6, weights.fc6, 512, 7),
                                           (self.fc7, weights.fc7, 4096, 1)):
                conv = convolutionize(linear, c_in, k)
                layer.weight.copy_(conv.weight)
                layer.bias.copy_(conv.bias)
        return self

    @classmethod
    def from_coarser(cls, coarser: FCN) -> FCN:
        """The next finer net (32s → 16s → 8s) as the paper trains it: every layer the two
        share (body, fc6, fc7, score_fr; from FCN-16s also upscore2 and score_pool4) copied,
        the new skip zero and the new ×2 upsampler bilinear, so it starts from the coarser
        net's predictions. Exactly, except near the coarse samples: ×2-then-×16 bilinear
        rounds off the kink that ×32 bilinear has at each score_fr centre, by ⅛ of the local
        second difference, within 8 px of it (×2-then-×8 vs ×16: within 4 px of each
        fuse_pool4 centre)."""
        if coarser.variant not in FINER:
            raise ModelError(f"FCN-{coarser.variant} is the finest variant")
        param = next(coarser.parameters())
        with torch.device("meta"):  # no random init of 134 M weights about to be overwritten
            finer = cls(FINER[coarser.variant], coarser.in_channels, coarser.num_classes,
                        coarser.width, coarser.fc_channels, batch_norm=coarser.batch_norm)
        finer = finer.to_empty(device=param.device).to(param.dtype)
        finer.reset_head()
        own, theirs = finer.state_dict(), coarser.state_dict()
        shared = {k: v for k, v in theirs.items() if k in own}
        assert all(own[k].shape == v.shape for k, v in shared.items())
        missing = finer.load_state_dict(shared, strict=False).missing_keys
        new = ("upscore2.", "score_pool4.", "upscore16.", "upscore_pool4.", "score_pool3.",
               "upscore8.")
        assert all(k.startswith(new) for k in missing), missing
        return finer.train(coarser.training)


def build_fcn(variant: str, in_channels: int, num_classes: int,
              backbone_weights: str | Path | None = None,
              score_std: float | None = None, batch_norm: bool = False) -> FCN:
    """FCN-``variant`` in eval mode; ``backbone_weights``: a local torchvision VGG16
    state-dict file for the body and fc6/fc7 (conv1_1 adapted to ``in_channels``); with
    ``batch_norm`` the body is VGG16-BN and the file a ``vgg16_bn`` one (fc6/fc7 from its
    classifier.0/.3, as for plain VGG16).

    ``score_std`` defaults to the paper's zero ``score_fr`` when fine-tuning from a backbone
    and to 0.01 without one, so that a random-weights net (tests, benchmarks) gives varied,
    O(1) logits rather than zeros.
    """
    if score_std is None:
        score_std = 0.0 if backbone_weights else 0.01
    if not backbone_weights:
        return FCN(variant, in_channels, num_classes, score_std=score_std,
                   batch_norm=batch_norm).eval()
    # fails fast, before any allocation
    weights = load_torchvision_vgg16(backbone_weights, batch_norm=batch_norm)
    with torch.device("meta"):  # skip the random init of what the file overwrites
        model = FCN(variant, in_channels, num_classes, batch_norm=batch_norm)
    model = model.to_empty(device="cpu")
    model.reset_scores(score_std)
    model.reset_head()
    return model.load_backbone(weights).eval()


def parameter_count(model: nn.Module) -> tuple[int, int]:
    """``(all, learnable)`` parameter counts (the fixed upsamplers are not learnable)."""
    total = sum(p.numel() for p in model.parameters())
    learn = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, learn


__all__ = ["FCN", "VARIANTS", "bilinear_kernel", "build_fcn", "convolutionize",
           "crop_offsets", "parameter_count", "receptive_radius", "upsampler"]
