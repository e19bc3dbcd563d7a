"""Your own model: plugin entry points, TorchScript files and package.module:function."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from tilesegment.errors import ModelError
from tilesegment.models import plugins, registry
from tilesegment.models.custom import load_model, resolve_model

PLUGIN_CODE = '''
from torch import nn

from tilesegment.grid import TileRule
from tilesegment.models import ModelEntry, ModelSpec, register_model

LOADS = []


def _spec(name, radius):
    def spec(c, k):
        return ModelSpec(name=name, in_channels=c, num_classes=k, tile_rule=TileRule(),
                         receptive_radius=radius, default_tile=64)
    return spec


def _build(c, k):
    return nn.Conv2d(c, k, 3, padding=1)


def one():
    LOADS.append("one")
    return ModelEntry("plug-one", "a 3x3 convolution", _spec("plug-one", 1), _build)


def several():
    return [ModelEntry(f"plug-{i}", "conv", _spec(f"plug-{i}", 1), _build) for i in (2, 3)]


def itself():
    register_model(ModelEntry("plug-self", "conv", _spec("plug-self", 1), _build))


AS_OBJECT = ModelEntry("plug-object", "conv", _spec("plug-object", 1), _build)
'''

BROKEN_CODE = '''
from tilesegment.models import ModelEntry


def raises():
    raise RuntimeError("plugin exploded")


def wrong_type():
    return 42


def taken():
    from tilesegment.models.registry import get_entry
    return get_entry("unet-tiny")  # the built-in's name again


NOT_CALLABLE = "hello"
'''


def write_plugin(site: Path, dist: str, package: str, code: str,
                 entry_points: dict[str, str]) -> None:
    """A package plus the ``.dist-info`` that pip would write (what importlib.metadata
    reads), so that its entry points are discovered for real."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(code)
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{plugins.ENTRY_POINT_GROUP}]\n{lines}\n")


def _forget_test_packages() -> None:
    for name in [m for m in sys.modules if m.startswith(("tsplug_", "tsfactory"))]:
        del sys.modules[name]


@pytest.fixture
def fresh(monkeypatch):
    """A private copy of the registry, no plugins loaded yet, no test package imported."""
    registry.list_models()  # the built-ins load on first use: copy them too
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(plugins, "_STATE", plugins._State())
    _forget_test_packages()
    yield
    _forget_test_packages()


@pytest.fixture
def good_site(tmp_path, monkeypatch) -> Path:
    site = tmp_path / "site"
    write_plugin(site, "tsplug_good", "tsplug_good", PLUGIN_CODE, {
        "one": "tsplug_good:one", "several": "tsplug_good:several",
        "itself": "tsplug_good:itself", "object": "tsplug_good:AS_OBJECT"})
    monkeypatch.syspath_prepend(str(site))
    return site


def test_entry_points_are_discovered_once(fresh, good_site):
    assert "plug-one" not in registry._REGISTRY  # (list_models may itself load plugins)
    loaded = plugins.load_plugins()
    names = {n for ns in loaded.values() for n in ns}
    assert names == {"plug-one", "plug-2", "plug-3", "plug-self", "plug-object"}
    assert any("package tsplug_good 0.1" in label for label in loaded)
    assert set(registry.list_models("plug-*")) == names
    plugins.load_plugins()
    import tsplug_good

    assert tsplug_good.LOADS == ["one"]  # not loaded twice
    model = registry.create_model("plug-2", 3, 4)
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 4, 8, 8)


def test_resolving_a_plugin_name_loads_plugins(fresh, good_site):
    resolved = resolve_model("plug-one", 2, 5)
    assert resolved.kind == "registered" and resolved.module is None
    assert resolved.spec.num_classes == 5 and resolved.spec.receptive_radius == 1


def test_a_fresh_process_finds_plugin_models(good_site):
    """What a worker process does: resolve the name with nothing registered beforehand."""
    code = ("from tilesegment.models.custom import load_model; "
            "m = load_model('plug-3', 2, 3); print(type(m).__name__, m.out_channels)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(good_site), *sys.path])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    assert out == ["Conv2d", "3"]


@pytest.mark.parametrize("target,message", [
    ("tsplug_bad:raises", r"raised RuntimeError: plugin exploded"),
    ("tsplug_bad:wrong_type", r"returned a int; return None, a ModelEntry"),
    ("tsplug_bad:taken", r"model 'unet-tiny' is already registered"),
    ("tsplug_bad:NOT_CALLABLE", r"loads to a str, not a ModelEntry"),
    ("tsplug_missing:nothing", r"cannot be loaded: ModuleNotFoundError"),
])
@pytest.mark.filterwarnings("ignore:broken model plugin")  # once the registry loads plugins
def test_a_broken_plugin_is_named(fresh, tmp_path, monkeypatch, target, message):
    site = tmp_path / "site"
    write_plugin(site, "tsplug_bad", "tsplug_bad", BROKEN_CODE, {"bad": target})
    write_plugin(site, "tsplug_ok", "tsplug_ok", PLUGIN_CODE, {"ok": "tsplug_ok:one"})
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ModelError, match=rf"bad = {target} \(package tsplug_bad 0\.1\): "
                                         rf"{message}"):
        plugins.load_plugins()
    assert "plug-one" in registry.list_models()  # the good plugin still loaded
    with pytest.raises(ModelError, match="broken model plugin"):
        plugins.load_plugins()  # remembered, not retried
    with pytest.warns(UserWarning, match="broken model plugin"):
        plugins.load_plugins(strict=False)
    with pytest.raises(ModelError, match=r"unknown model 'nope'.*broken plugins"), \
            pytest.warns(UserWarning, match="broken model plugin"):
        resolve_model("nope", 3)


class Net(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 2) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.conv = nn.Conv2d(in_channels, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Valid(nn.Module):
    """Unpadded: loses 2 px per side."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3)
        self.b = nn.Conv2d(4, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _script(module: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        torch.jit.save(torch.jit.script(module), str(path))
    return path


@pytest.mark.parametrize("suffix", [".pt", ".ts"])
def test_torchscript_file_obeys_the_contract(tmp_path, suffix):
    eager = Valid().eval()
    path = _script(eager, tmp_path / f"valid{suffix}")
    resolved = resolve_model(str(path), 1, tile=40)
    assert resolved.kind == "torchscript" and resolved.probed and resolved.source == str(path)
    assert resolved.spec.num_classes == 3 and resolved.spec.check_tile(40) == 2
    x = torch.randn(2, 1, 40, 40)
    with torch.inference_mode():
        y = resolved.module(x)
        assert y.shape == (2, 3, 36, 36) and torch.equal(y, eager(x))
        assert torch.equal(load_model(str(path), 1)(x), y)  # what a worker rebuilds


def test_torchscript_takes_weights_and_refuses_a_state_dict(tmp_path):
    from safetensors.torch import save_file

    path = _script(Net(), tmp_path / "net.pt")
    trained = Net()
    with torch.no_grad():
        trained.conv.weight.mul_(3)
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    resolved = resolve_model(str(path), 3, 2, weights=tmp_path / "w.safetensors")
    x = torch.randn(1, 3, 16, 16)
    with torch.inference_mode():
        assert torch.equal(resolved.module(x), trained(x))
    torch.save(Net().state_dict(), tmp_path / "state.pt")
    with pytest.raises(ModelError, match=r"state\.pt: not a TorchScript file"):
        resolve_model(str(tmp_path / "state.pt"), 3)
    with pytest.raises(ModelError, match="model file not found"):
        resolve_model(str(tmp_path / "absent.pt"), 3)
    with pytest.raises(ModelError, match="gives 2 classes, not 4"):
        resolve_model(str(path), 3, 4)


FACTORY_CODE = '''
from torch import nn


def build(in_channels, num_classes=2):
    return nn.Conv2d(in_channels, num_classes, 1)


def fixed():
    return nn.Conv2d(3, 2, 1)


def anything(**kwargs):
    return nn.Conv2d(kwargs["in_channels"], kwargs.get("num_classes", 7), 1)


def not_a_module(in_channels):
    return "conv"


class Zoo:
    @staticmethod
    def small(in_channels, num_classes):
        return nn.Conv2d(in_channels, num_classes, 1)
'''


@pytest.fixture
def factory(tmp_path, monkeypatch, fresh) -> str:
    pkg = tmp_path / "fsite" / "tsfactory"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(FACTORY_CODE)
    monkeypatch.syspath_prepend(str(tmp_path / "fsite"))
    return "tsfactory.nets"


@pytest.mark.parametrize("func,channels,classes,expected", [
    ("build", 4, 3, 3), ("build", 4, None, 2), ("fixed", 3, None, 2),
    ("anything", 2, None, 7), ("anything", 2, 5, 5), ("Zoo.small", 1, 6, 6),
])
def test_module_function_is_called_with_what_it_accepts(factory, func, channels, classes,
                                                        expected):
    resolved = resolve_model(f"{factory}:{func}", channels, classes, tile=32)
    assert resolved.kind == "function" and resolved.spec.name == f"{factory}:{func}"
    assert resolved.spec.num_classes == expected
    with torch.inference_mode():
        y = resolved.module(torch.zeros(2, channels, 32, 32))
    assert y.shape == (2, expected, 32, 32)


@pytest.mark.parametrize("value,message", [
    (":not_a_module", r"returned a str, not a torch\.nn\.Module"),
    (":missing", r"has no 'missing'"),
    (":fixed", r"fails on a 1-band 256×256 tile"),  # 3-band model given 1 band
])
def test_module_function_errors(factory, value, message):
    with pytest.raises(ModelError, match=message):
        resolve_model(factory + value, 1)
    with pytest.raises(ModelError, match=r"cannot import 'tsfactory\.nope'"):
        resolve_model("tsfactory.nope:build", 1)


def test_module_objects_and_registered_names_still_resolve():
    resolved = resolve_model(Net(), 3, 2, tile=32)
    assert resolved.kind == "module" and resolved.source is None and resolved.probed
    named = resolve_model("unet-tiny", 3)
    assert named.kind == "registered" and named.module is None
    assert named.spec.receptive_radius == 51 and not named.probed
    with pytest.raises(ModelError, match="unknown model 'unet-huge'"):
        resolve_model("unet-huge", 3)
