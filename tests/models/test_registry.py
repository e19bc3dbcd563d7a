"""The registry as a leaf: models register beside their code, through one loading path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tilesegment.errors import ModelError
from tilesegment.grid import TileRule
from tilesegment.models import catalog, registry
from tilesegment.models.spec import ModelSpec

PACKAGE = Path(__file__).resolve().parents[2] / "tilesegment"

BUILTIN_NAMES = [
    "deeplab-largefov", "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet101",
    "deeplabv3_resnet50", "fcn16s", "fcn32s", "fcn8s", "fcn_resnet101", "fcn_resnet50",
    "identity", "landcover-landsat7", "lraspp_mobilenet_v3_large", "nuclei", "unet",
    "unet-small", "unet-tiny",
    "unet-valid", "unet-valid-tiny",
    # added with the ResNet U-Nets, VGG16-BN FCNs and DeepLab MSc (issue 12)
    "deeplab-largefov-msc", "fcn16s-bn", "fcn32s-bn", "fcn8s-bn", "unet-resnet18",
    "unet-resnet34", "unet-resnet50",
]
"""Every built-in name before the registry was reshaped (none may be lost), and the shipped
trained models ``nuclei`` and ``landcover-landsat7`` (``models/pretrained``)."""


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def private(monkeypatch):
    """A private copy of the registry (the built-ins already in it)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def _spec(c: int, k: int) -> ModelSpec:
    return ModelSpec(name="deco-conv", in_channels=c, num_classes=k, tile_rule=TileRule(),
                     receptive_radius=1, default_tile=64)


def test_the_decorator_registers_the_builder_beside_it(private):
    def conv(c: int, k: int, bias: bool = True) -> nn.Module:
        return nn.Conv2d(c, k, 3, padding=1, bias=bias)

    returned = registry.register_model("deco-conv", "a 3x3 convolution", spec=_spec,
                                       default_classes=4, kwargs={"kernel": 3})(conv)
    assert returned is conv  # the builder is left as it was
    entry = registry.get_entry("deco-conv")
    assert (entry.build, entry.spec, entry.default_classes, entry.kwargs, entry.trainable) == (
        conv, _spec, 4, {"kernel": 3}, True)
    assert "deco-conv" in registry.list_models("deco-*")
    assert registry.get_spec("deco-conv", 2).num_classes == 4
    model = registry.create_model("deco-conv", 2, seed=7, bias=False)
    torch.manual_seed(7)  # what create_model's seeded build must equal
    reference = nn.Conv2d(2, 4, 3, padding=1, bias=False)
    assert torch.equal(model.weight, reference.weight) and model.bias is None
    with pytest.raises(ModelError, match="takes no colour"):
        registry.create_model("deco-conv", 2, colour=1)


def test_a_name_is_registered_once_and_a_bad_call_is_named(private):
    entry = registry.ModelEntry("twice", "x", _spec, lambda c, k: nn.Identity())
    assert registry.register_model(entry) is entry
    with pytest.raises(ModelError, match="'twice' is already registered"):
        registry.register_model(entry)
    with pytest.raises(ModelError, match="'unet-tiny' is already registered"):
        registry.register_model("unet-tiny", "again", spec=_spec)(lambda c, k: nn.Identity())
    with pytest.raises(ModelError, match="takes a ModelEntry, or a name"):
        registry.register_model("no-spec", "summary")


def test_every_builtin_registers_beside_its_code():
    """All the names of before, each registered by a module the catalogue imports (whose
    builder it defines), none by the registry or the catalogue themselves."""
    assert sorted(registry.registered()) == sorted(BUILTIN_NAMES)
    builtin_modules = {m.__name__ for m in catalog.BUILTIN_MODULES}
    for name, entry in registry.registered().items():
        assert entry.build.__module__ in builtin_modules, name
        assert entry.spec.__module__ == entry.build.__module__, name
    assert registry._LOADER is catalog.load_models  # plugins: the one hook


def test_the_registry_runs_alone():
    """Executed on its own, outside its package, the registry imports only the errors
    module, and is empty: it needs no model code to exist."""
    path = PACKAGE / "models" / "registry.py"
    code = ("import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('lone_registry', {str(path)!r}); "
            "m = sys.modules['lone_registry'] = importlib.util.module_from_spec(spec); "
            "spec.loader.exec_module(m); "
            "print(m.list_models(), sorted(k for k in sys.modules "
            "if k.startswith('tilesegment') or k == 'torch'))")
    assert _run(code) == "[] ['tilesegment', 'tilesegment.errors']"


@pytest.mark.parametrize("module", ["registry", "catalog", "plugins", "identity", "unet_spec",
                                    "deeplab_spec", "fcn_spec", "tv", "spec", "pretrained"])
def test_any_models_module_imported_first_finds_every_model(module):
    """In a fresh process, whichever module is imported first, the registry holds every
    built-in model and torch is not imported."""
    code = (f"import sys, tilesegment.models.{module}; "
            "from tilesegment.models.registry import list_models; "
            "print(list_models() == sorted(list_models()), len(list_models()), "
            "'torch' in sys.modules)")
    assert _run(code) == f"True {len(BUILTIN_NAMES)} False"
