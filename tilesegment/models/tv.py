"""torchvision's segmentation models under the model contract.

``build_torchvision(name, in_channels, num_classes, weights=None)`` builds one of
:data:`TV_MODELS` with ``weights=None, weights_backbone=None`` (nothing is ever downloaded),
the auxiliary head off, any number of input bands and classes, wrapped so that
``forward(float32[N, C, T, T])`` returns the plain tensor ``model(x)["out"]`` of shape
``[N, K, T, T]`` (torchvision upsamples its logits bilinearly to the input size).

Weights come from a LOCAL file only (:func:`tilesegment.models.weights.read_state_dict`:
safetensors, or ``torch.load(weights_only=True)``). Three layouts are recognised:

- tilesegment's own (keys ``model.…``, as :func:`~tilesegment.models.checkpoint.save_checkpoint`
  writes them): loaded as they are;
- a whole torchvision segmentation model (``backbone.…``, ``classifier.…``, perhaps
  ``aux_classifier.…``, which is dropped);
- a backbone only: torchvision's classification ResNet/MobileNetV3 (``conv1.…``/``layer1.…``
  or ``features.…``; its ``fc``/``classifier`` is dropped) or a ``backbone.…``-only dict. The
  segmentation head then keeps its seeded random weights, with a ``RandomWeightsWarning``.

Pretrained 3-band (RGB) weights fit a model of ``C ≠ 3`` bands by replacing the first
convolution's kernel ``W[out, 3, k, k]`` with its mean over RGB, repeated ``C`` times and scaled
by ``3 / C``: a grey image copied into all ``C`` bands then gives the activations (up to
rounding) that the RGB model gives for that grey image. The first convolution of a freshly
built ``C ≠ 3`` model is initialised the same way from torchvision's own random RGB kernel.

Receptive fields (see ``TVModel.receptive_radius``): the FCNs are bounded (ResNet-50: 232 px,
by back-propagation with :mod:`tilesegment.models.probe` at 576 px over 8 phases; ResNet-101:
504 px, by single-pixel perturbation at 1152 px, the method that also gives 232 for ResNet-50);
DeepLabV3's ASPP has an image-pooling
branch and MobileNetV3 has squeeze-and-excitation blocks, both global average pooling, so
those four models see the whole tile: tiled output differs from whole-image output whatever
the halo. Their spec's radius is a heuristic quarter tile that only reduces seams.

This module imports torch only when a model is built, so the registry's specs stay light;
it registers its models at its end (imported by :mod:`tilesegment.models.catalog`).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tilesegment.errors import ModelError, RandomWeightsWarning
from tilesegment.grid import TileRule
from tilesegment.models.registry import ModelEntry, register_model
from tilesegment.models.spec import ModelSpec, Normalization

if TYPE_CHECKING:
    import torch
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""torchvision's ImageNet mean of RGB in [0, 1] units."""
IMAGENET_STD = (0.229, 0.224, 0.225)

VOC_CLASSES = (
    "__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep",
    "sofa", "train", "tvmonitor",
)
"""The 21 classes of torchvision's pretrained segmentation weights (COCO with VOC labels)."""


@dataclass(frozen=True)
class TVModel:
    """What the registry needs to know about one torchvision model, without torch.

    ``receptive_radius``: measured, in input pixels, or ``None`` where the model pools over
    the whole tile (then no halo makes tiled output equal the whole image's).
    ``first_conv``: the first convolution inside the torchvision model (replaced for
    ``C ≠ 3``); ``heads``: its final classifier convolutions (``K`` output channels).
    """

    summary: str
    output_stride: int
    default_tile: int
    receptive_radius: int | None
    family: str
    first_conv: str
    heads: tuple[str, ...]

    def normalization(self, in_channels: int) -> Normalization:
        """ImageNet mean/std in raw 8-bit units (×255) for 3 bands; raster statistics
        otherwise."""
        return imagenet_normalization(in_channels)

    @property
    def spec_radius(self) -> int:
        """The spec's receptive radius: the measured one, or a quarter of the default tile."""
        return self.receptive_radius if self.receptive_radius is not None else (
            self.default_tile // 4)


_RESNET = dict(family="resnet", first_conv="backbone.conv1", output_stride=8)
_MOBILE = dict(family="mobilenet_v3", first_conv="backbone.0.0", output_stride=16)
_SIMPLE_HEAD = ("classifier.4",)

TV_MODELS: dict[str, TVModel] = {
    "fcn_resnet50": TVModel(
        "torchvision FCN, dilated ResNet-50 backbone (output stride 8; bounded field)",
        default_tile=1024, receptive_radius=232, heads=_SIMPLE_HEAD, **_RESNET),
    "fcn_resnet101": TVModel(
        "torchvision FCN, dilated ResNet-101 backbone (output stride 8; bounded field)",
        default_tile=2048, receptive_radius=504, heads=_SIMPLE_HEAD, **_RESNET),
    "deeplabv3_resnet50": TVModel(
        "torchvision DeepLabV3, dilated ResNet-50 (stride 8; ASPP image pooling: "
        "sees the whole tile)", default_tile=512, receptive_radius=None, heads=_SIMPLE_HEAD,
        **_RESNET),
    "deeplabv3_resnet101": TVModel(
        "torchvision DeepLabV3, dilated ResNet-101 (stride 8; ASPP image pooling: "
        "sees the whole tile)", default_tile=512, receptive_radius=None, heads=_SIMPLE_HEAD,
        **_RESNET),
    "deeplabv3_mobilenet_v3_large": TVModel(
        "torchvision DeepLabV3, MobileNetV3-Large (stride 16; global pooling: sees the "
        "whole tile)", default_tile=512, receptive_radius=None, heads=_SIMPLE_HEAD, **_MOBILE),
    "lraspp_mobilenet_v3_large": TVModel(
        "torchvision LR-ASPP, MobileNetV3-Large (stride 16; global pooling: sees the "
        "whole tile)", default_tile=512, receptive_radius=None,
        heads=("classifier.low_classifier", "classifier.high_classifier"), **_MOBILE),
}
"""name → :class:`TVModel` (output stride, normalisation, default tile, receptive radius)."""

DEFAULT_CLASSES = 21
"""torchvision's default class count (that of its pretrained weights)."""


def imagenet_normalization(in_channels: int) -> Normalization:
    """torchvision's ImageNet normalisation for 8-bit 3-band input (mean/std × 255); for any
    other band count whole-raster statistics, as the catalogue's VGG-based models do.
    For 3-band rasters that are not 8-bit, pass ``normalization="raster"``."""
    if in_channels != 3:
        return Normalization("raster")
    return Normalization("fixed", mean=tuple(255.0 * m for m in IMAGENET_MEAN),
                         std=tuple(255.0 * s for s in IMAGENET_STD))


def tv_info(name: str) -> TVModel:
    """The :class:`TVModel` of ``name``; a ``ModelError`` naming the known ones otherwise."""
    try:
        return TV_MODELS[name]
    except KeyError:
        raise ModelError(f"unknown torchvision model {name!r}; known: "
                         f"{', '.join(sorted(TV_MODELS))}") from None


def sees_whole_tile(name: str) -> bool:
    """True for a torchvision model that pools over the whole tile (DeepLabV3's image
    pooling, MobileNetV3's squeeze-and-excitation): no halo makes its tiles seamless."""
    info = TV_MODELS.get(name)
    return info is not None and info.receptive_radius is None


def tv_spec(name: str, in_channels: int, num_classes: int) -> ModelSpec:
    """The contract's metadata for torchvision model ``name`` (no torch imported).

    Legal tiles: multiples of the output stride (where the model is shift-equivariant).
    21 classes get torchvision's VOC class names.
    """
    info = tv_info(name)
    stride = info.output_stride
    return ModelSpec(
        name=name, in_channels=in_channels, num_classes=num_classes,
        tile_rule=TileRule(multiple=stride, minimum=stride),
        receptive_radius=info.spec_radius, default_tile=info.default_tile,
        class_names=VOC_CLASSES if num_classes == len(VOC_CLASSES) else (),
        normalization=info.normalization(in_channels),
        global_context=info.receptive_radius is None)


def tv_entries() -> list[ModelEntry]:
    """Registry entries for :data:`TV_MODELS` (fresh ones: this module registers its own
    once, at its end); builder options: ``weights`` (a local file)."""
    def entry(name: str) -> ModelEntry:
        info = TV_MODELS[name]

        def spec(c: int, k: int) -> ModelSpec:
            return tv_spec(name, c, k)

        def build(c: int, k: int, weights: str | None = None) -> nn.Module:
            return build_torchvision(name, c, k, weights=weights)

        return ModelEntry(name, info.summary, spec, build, default_classes=DEFAULT_CLASSES,
                          kwargs={"family": info.family})

    return [entry(name) for name in TV_MODELS]


def build_torchvision(name: str, in_channels: int, num_classes: int,
                      weights: str | None = None) -> nn.Module:
    """torchvision model ``name`` for ``in_channels`` bands and ``num_classes`` classes,
    wrapped to return ``model(x)["out"]``, in eval mode; ``weights``: a local file of any
    layout the module docstring lists (random weights without, from torch's global RNG)."""
    info = tv_info(name)
    if in_channels < 1 or num_classes < 1:
        raise ModelError(f"{name}: need at least one band and one class, "
                         f"got {in_channels} and {num_classes}")
    import torchvision.models.segmentation as segmentation

    model = getattr(segmentation, name)(weights=None, weights_backbone=None,
                                        num_classes=num_classes, aux_loss=False)
    if in_channels != 3:
        _replace_first_conv(model, info.first_conv, in_channels)
    module = _segmenter_class()(model, name)
    if weights:
        from tilesegment.models.weights import load_weights

        load_weights(module, weights)
    return module.eval()


def adapt_rgb_kernel(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first-convolution kernel ``[out, 3, k, k]`` for ``in_channels`` bands: the mean over
    RGB, repeated ``in_channels`` times, scaled by ``3 / in_channels``."""
    mean = weight.mean(dim=1, keepdim=True)
    return (mean * (3.0 / in_channels)).repeat(1, in_channels, 1, 1).contiguous()


def adapt_torchvision_state(module: nn.Module, state: Mapping[str, Any],
                            source: str) -> dict[str, Any]:
    """``state`` (any layout the module docstring lists) in ``module``'s own layout.

    Drops the auxiliary head and a classification head, adapts a 3-band first convolution
    to the model's bands, fills a missing segmentation head from ``module`` (warning that it
    is random), and names a class-count mismatch. Anything else is left for the strict
    check of :func:`~tilesegment.models.weights.load_weights` to name.
    """
    info = tv_info(module.arch)
    keys = list(state)
    if any(k.startswith("model.") for k in keys):
        return dict(state)
    if any(k.startswith("backbone.") for k in keys):
        mapped = {f"model.{k}": v for k, v in state.items()
                  if not k.startswith("aux_classifier.")}
    elif info.family == "resnet" and "conv1.weight" in state and any(
            k.startswith("layer1.") for k in keys):
        mapped = {f"model.backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    elif info.family == "mobilenet_v3" and any(k.startswith("features.") for k in keys):
        mapped = {f"model.backbone.{k[len('features.'):]}": v for k, v in state.items()
                  if k.startswith("features.")}
    else:
        return dict(state)

    own = module.state_dict()
    first = f"model.{info.first_conv}.weight"
    kernel = mapped.get(first)
    c = module.in_channels
    if kernel is not None and c != 3 and kernel.ndim == 4 and kernel.shape[1] == 3:
        mapped[first] = adapt_rgb_kernel(kernel, c)

    head = [k for k in own if k.startswith("model.classifier.")]
    if not any(k in mapped for k in head):
        warnings.warn(f"{source}: backbone weights only; the segmentation head of "
                      f"{module.arch!r} keeps RANDOM weights (fine-tune it before use)",
                      RandomWeightsWarning, stacklevel=3)
        mapped.update({k: own[k] for k in head})
    for name in info.heads:
        theirs = mapped.get(f"model.{name}.weight")
        if theirs is not None and theirs.shape[0] != module.num_classes:
            raise ModelError(
                f"{source}: its head gives {theirs.shape[0]} classes, the model "
                f"{module.num_classes}: pass --classes {theirs.shape[0]} "
                f"(classes={theirs.shape[0]})")
    return mapped


def _replace_first_conv(model: nn.Module, path: str, in_channels: int) -> None:
    """Swap the first convolution for one taking ``in_channels`` bands (same geometry),
    initialised from the RGB kernel it replaces."""
    import torch
    from torch import nn

    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    old = parent.get_submodule(leaf)
    if not isinstance(old, nn.Conv2d) or old.in_channels != 3:
        raise ModelError(f"{path} is not the 3-band first convolution ({old!r})")
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    old.dilation, old.groups, bias=old.bias is not None,
                    padding_mode=old.padding_mode)
    with torch.no_grad():
        new.weight.copy_(adapt_rgb_kernel(old.weight, in_channels))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    setattr(parent, leaf, new)


@functools.cache
def _segmenter_class() -> type:
    """The wrapper class, defined on first use so that importing this module needs no torch.

    It is published as ``tilesegment.models.tv.TorchvisionSegmenter`` (module
    ``__getattr__``), so modules pickle by reference like any other."""
    from torch import nn

    class TorchvisionSegmenter(nn.Module):
        """A torchvision segmentation model under the contract: returns ``model(x)["out"]``.

        ``adapt_state_dict`` lets :func:`~tilesegment.models.weights.load_weights` read
        torchvision's own layouts (see :func:`adapt_torchvision_state`).
        """

        def __init__(self, model: nn.Module, arch: str) -> None:
            super().__init__()
            self.model = model
            self.arch = arch
            conv = model.get_submodule(TV_MODELS[arch].first_conv)
            self.in_channels = int(conv.in_channels)
            head = model.get_submodule(TV_MODELS[arch].heads[0])
            self.num_classes = int(head.out_channels)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)["out"]

        def adapt_state_dict(self, state: Mapping[str, Any], source: str) -> dict[str, Any]:
            return adapt_torchvision_state(self, state, source)

        def extra_repr(self) -> str:
            return f"arch={self.arch!r}, in_channels={self.in_channels}, " \
                   f"num_classes={self.num_classes}"

    TorchvisionSegmenter.__module__ = __name__
    TorchvisionSegmenter.__qualname__ = "TorchvisionSegmenter"
    return TorchvisionSegmenter


def __getattr__(name: str) -> Any:
    """``TorchvisionSegmenter``: the wrapper class (defined on first access, with torch)."""
    if name == "TorchvisionSegmenter":
        return _segmenter_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


for _entry in tv_entries():
    register_model(_entry)
