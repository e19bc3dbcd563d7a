"""The model registry: names → (spec, builder). Specs need no torch; builders import it lazily.

``create_model(name, in_channels, num_classes)`` builds a module; ``get_spec`` tells the
pipeline its geometry before any pixel is read; ``list_models(pattern)`` filters names.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tilesegment.errors import ModelError
from tilesegment.grid import TileRule
from tilesegment.models.spec import ModelSpec, Normalization

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: ``spec(in_channels, num_classes)`` (no torch) and
    ``build(in_channels, num_classes, **options)`` (imports torch lazily) functions.

    ``options`` are builder-specific keywords, e.g. ``backbone_weights`` for the VGG-based
    models; ``create_model`` passes them through.
    """

    name: str
    summary: str
    spec: Callable[[int, int], ModelSpec]
    build: Callable[..., nn.Module]
    default_classes: int = 2
    trainable: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add ``entry`` to the registry (a name may be registered once)."""
    if entry.name in _REGISTRY:
        raise ModelError(f"model {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching the shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def get_spec(name: str, in_channels: int, num_classes: int | None = None) -> ModelSpec:
    """The spec of model ``name`` for this many input channels and classes."""
    entry = get_entry(name)
    return entry.spec(in_channels, num_classes or entry.default_classes)


def create_model(
    name: str, in_channels: int, num_classes: int | None = None, seed: int = 0,
    **options: Any,
) -> nn.Module:
    """Build model ``name`` with random weights drawn from ``seed`` (reproducible in every
    process), in eval mode; ``options`` go to the model's builder. Load trained weights
    with :func:`tilesegment.models.weights.load_weights`."""
    import torch

    entry = get_entry(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = entry.build(in_channels, num_classes or entry.default_classes, **options)
    return module.eval()


# --- the built-in models -------------------------------------------------------------------


def _unet_entry(name: str, summary: str, depth: int, width: int, padding: str,
                default_tile: int) -> ModelEntry:
    from tilesegment.models.unet_geometry import unet_receptive_radius

    def spec(c: int, k: int) -> ModelSpec:
        rule = (TileRule(multiple=2**depth, minimum=2**depth) if padding == "same"
                else TileRule(valid_depth=depth, convs_per_level=2))
        return ModelSpec(name=name, in_channels=c, num_classes=k, tile_rule=rule,
                         receptive_radius=unet_receptive_radius(depth),
                         default_tile=default_tile, normalization=Normalization("raster"))

    def build(c: int, k: int) -> nn.Module:
        from tilesegment.models.unet import UNet

        return UNet(c, k, depth=depth, width=width, padding=padding)

    return ModelEntry(name, summary, spec, build,
                      kwargs={"depth": depth, "width": width, "padding": padding})


def _identity_entry() -> ModelEntry:
    def spec(c: int, k: int) -> ModelSpec:
        k = k or c
        if k != c:
            raise ModelError(f"model 'identity' returns its {c} input bands as logits; "
                             f"it cannot give {k} classes")
        return ModelSpec(name="identity", in_channels=c, num_classes=c,
                         tile_rule=TileRule(), receptive_radius=0, default_tile=512,
                         normalization=Normalization("none"))

    def build(c: int, k: int) -> nn.Module:
        from torch import nn

        return nn.Identity()

    return ModelEntry("identity", "diagnostic: returns the input bands as logits "
                      "(pipeline-only tests and benchmarks)", spec, build, default_classes=0,
                      trainable=False)


for _entry in (
    _identity_entry(),
    _unet_entry("unet-tiny", "same-padded U-Net, depth 3, 8 channels (fast on a CPU)",
                3, 8, "same", 512),
    _unet_entry("unet-small", "same-padded U-Net, depth 4, 16 channels", 4, 16, "same", 512),
    _unet_entry("unet", "same-padded U-Net, depth 4, 64 channels (the paper's widths)",
                4, 64, "same", 512),
    _unet_entry("unet-valid-tiny", "valid-convolution U-Net, depth 3, 8 channels",
                3, 8, "valid", 540),
    _unet_entry("unet-valid", "the paper's U-Net: unpadded convolutions, depth 4, "
                "64 channels, 572→388", 4, 64, "valid", 572),
):
    register_model(_entry)


def describe_models(pattern: str = "*", in_channels: int = 3) -> list[dict[str, Any]]:
    """One JSON-able row per model matching ``pattern``: its tile rules and defaults."""
    rows = []
    for name in list_models(pattern):
        entry = get_entry(name)
        spec = entry.spec(in_channels, entry.default_classes or in_channels)
        tile = spec.default_tile
        halo = spec.default_halo(tile)
        rows.append({
            "name": name, "summary": entry.summary, "tile_rule": spec.tile_rule.describe(),
            "output_stride": spec.tile_rule.output_stride, "default_tile": tile,
            "default_halo": halo, "default_core": tile - 2 * halo,
            "default_output": spec.tile_rule.output_size(tile),
            "shrink": spec.tile_rule.shrink(tile), "receptive_radius": spec.receptive_radius,
            "classes": spec.num_classes, "normalization": spec.normalization.mode,
        })
    return rows
