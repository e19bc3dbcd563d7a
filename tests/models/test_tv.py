"""torchvision segmentation models under the contract: shapes, weights layouts, specs."""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings

import pytest
import torch
import torchvision.models as classification
import torchvision.models.segmentation as segmentation

from tilesegment.errors import ModelError, RandomWeightsWarning
from tilesegment.models import registry
from tilesegment.models.probe import measure_receptive_radius
from tilesegment.models.tv import (
    TV_MODELS,
    VOC_CLASSES,
    adapt_rgb_kernel,
    build_torchvision,
    sees_whole_tile,
    tv_entries,
    tv_spec,
)

NAMES = [pytest.param(n, marks=pytest.mark.slow) if n.endswith("101") else n
         for n in sorted(TV_MODELS)]
FAST = "lraspp_mobilenet_v3_large"


def _reference(name: str, num_classes: int, seed: int) -> torch.nn.Module:
    """torchvision's own model, untouched (the independent reference)."""
    torch.manual_seed(seed)
    return getattr(segmentation, name)(weights=None, weights_backbone=None,
                                       num_classes=num_classes, aux_loss=False).eval()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels,classes", [(1, 2), (4, 5)])
def test_contract_for_any_bands_and_classes(name, channels, classes):
    spec = tv_spec(name, channels, classes)
    assert spec.check_tile(64) == 0
    model = build_torchvision(name, channels, classes)
    assert not model.training
    with torch.inference_mode():
        y = model(torch.randn(1, channels, 64, 64))
    assert isinstance(y, torch.Tensor)
    assert tuple(y.shape) == (1, classes, 64, 64)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
def test_three_bands_equal_torchvision_out_through_a_weights_file(name, tmp_path):
    ref = _reference(name, 3, seed=11)
    path = tmp_path / f"{name}.pth"
    torch.save(ref.state_dict(), path)  # torchvision's own layout, read weights_only
    torch.manual_seed(0)  # different random weights before loading
    ours = build_torchvision(name, 3, 3, weights=str(path))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert torch.equal(ours(x), ref(x)["out"])


def test_full_model_file_with_aux_head_drops_it(tmp_path):
    torch.manual_seed(2)
    ref = segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=2,
                                    aux_loss=True).eval()
    path = tmp_path / "fcn_aux.pth"
    torch.save(ref.state_dict(), path)
    ours = build_torchvision("fcn_resnet50", 3, 2, weights=str(path))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(ours(x), ref(x)["out"])


def test_own_layout_round_trip_in_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(4)
    trained = build_torchvision(FAST, 4, 3)
    path = tmp_path / "own.safetensors"
    save_file(trained.state_dict(), str(path))
    assert all(k.startswith("model.") for k in trained.state_dict())
    torch.manual_seed(5)
    fresh = build_torchvision(FAST, 4, 3, weights=str(path))
    x = torch.randn(1, 4, 64, 64)
    with torch.inference_mode():
        assert torch.equal(fresh(x), trained(x))


def test_rgb_weights_adapted_to_four_bands_see_grey_as_rgb_does(tmp_path):
    ref = _reference(FAST, 2, seed=6)
    path = tmp_path / "rgb.pth"
    torch.save(ref.state_dict(), path)
    four = build_torchvision(FAST, 4, 2, weights=str(path))
    grey = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = ref(grey.expand(1, 3, 64, 64))["out"]
        got = four(grey.expand(1, 4, 64, 64))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    w = ref.state_dict()["backbone.0.0.weight"]
    k = four.state_dict()["model.backbone.0.0.weight"]
    assert k.shape == (w.shape[0], 4, *w.shape[2:])
    torch.testing.assert_close(k[:, 2], w.mean(1) * 3 / 4)


def test_adapt_rgb_kernel_rule():
    w = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).reshape(2, 3, 1, 1)
    k = adapt_rgb_kernel(w, 6)
    assert k.shape == (2, 6, 1, 1)
    assert torch.allclose(k.sum(1), w.sum(1))  # a grey image gives the same response


def test_backbone_only_file_leaves_a_random_head_with_a_warning(tmp_path):
    torch.manual_seed(8)
    resnet = classification.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(resnet.state_dict(), path)
    with pytest.warns(RandomWeightsWarning, match="backbone weights only"):
        model = build_torchvision("fcn_resnet50", 1, 2, weights=str(path))
    own = model.state_dict()
    assert torch.equal(own["model.backbone.layer3.2.conv2.weight"],
                       resnet.state_dict()["layer3.2.conv2.weight"])
    assert torch.allclose(own["model.backbone.conv1.weight"],
                          resnet.state_dict()["conv1.weight"].mean(1, keepdim=True) * 3)


def test_mobilenet_backbone_file_is_recognised(tmp_path):
    torch.manual_seed(9)
    mobile = classification.mobilenet_v3_large(weights=None)
    path = tmp_path / "mobilenet.pth"
    torch.save(mobile.state_dict(), path)
    with pytest.warns(RandomWeightsWarning):
        model = build_torchvision("deeplabv3_mobilenet_v3_large", 3, 2, weights=str(path))
    assert torch.equal(model.state_dict()["model.backbone.16.0.weight"],
                       mobile.state_dict()["features.16.0.weight"])


def test_wrong_class_count_and_foreign_tensors_are_named(tmp_path):
    path = tmp_path / "voc.pth"
    torch.save(_reference(FAST, 21, seed=0).state_dict(), path)
    with pytest.raises(ModelError, match=r"voc\.pth: its head gives 21 classes, the model 2: "
                                         r"pass --classes 21"):
        build_torchvision(FAST, 3, 2, weights=str(path))
    state = _reference(FAST, 2, seed=0).state_dict()
    del state["classifier.scale.1.weight"]
    state["backbone.99.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(ModelError, match=r"missing: model\.classifier\.scale\.1\.weight; "
                                         r"unexpected: model\.backbone\.99\.weight"):
        build_torchvision(FAST, 3, 2, weights=str(tmp_path / "odd.pth"))


def test_specs_need_no_torch_and_give_seamless_defaults():
    for name, info in TV_MODELS.items():
        spec = tv_spec(name, 3, 2)
        assert spec.tile_rule.output_stride == info.output_stride
        assert spec.default_tile == info.default_tile
        halo = spec.default_halo(spec.default_tile)
        assert halo >= spec.receptive_radius
        assert (spec.default_tile - 2 * halo) % info.output_stride == 0
        with pytest.raises(Exception, match="nearest legal size"):
            spec.check_tile(info.output_stride * 8 + 1)
    rgb = tv_spec("fcn_resnet50", 3, 21)
    assert rgb.class_names == VOC_CLASSES
    assert rgb.normalization.mean == pytest.approx((123.675, 116.28, 103.53))
    assert rgb.normalization.std == pytest.approx((58.395, 57.12, 57.375))
    assert tv_spec("fcn_resnet50", 5, 2).normalization.mode == "raster"


def test_fcn_radii_are_bounded_and_global_models_see_the_whole_tile():
    assert TV_MODELS["fcn_resnet50"].receptive_radius == 232  # probed at 576 px: see report
    assert TV_MODELS["fcn_resnet101"].receptive_radius > 232
    assert not sees_whole_tile("fcn_resnet50") and not sees_whole_tile("unet")
    assert sees_whole_tile("deeplabv3_resnet50")
    for name in ("deeplabv3_mobilenet_v3_large", FAST):
        assert TV_MODELS[name].receptive_radius is None and sees_whole_tile(name)
        model = build_torchvision(name, 3, 2)
        # The centre output pixel depends on every input pixel, out to the tile's corners.
        assert measure_receptive_radius(model, 3, 96, draws=1) == 48


def test_registry_entries_build_reproducibly(monkeypatch):
    registry.list_models()  # the built-ins load on first use: copy them too
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    for entry in tv_entries():
        if entry.name not in registry._REGISTRY:  # before the registry registers them itself
            registry.register_model(entry)
    assert registry.get_spec(FAST, 3).num_classes == 21
    a = registry.create_model(FAST, 2, 3, seed=1)
    b = registry.create_model(FAST, 2, 3, seed=1)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    clone = pickle.loads(pickle.dumps(a))  # by reference: works on a distributed cluster
    x = torch.randn(1, 2, 32, 32)
    with torch.inference_mode(), warnings.catch_warnings():
        assert torch.equal(clone(x), a(x))


def test_specs_and_entries_load_no_torch():
    """The registry imports this module at start-up: ``tilesegment models`` stays light."""
    code = ("import sys; import tilesegment.models.tv as tv, tilesegment.models.plugins; "
            "tv.tv_entries(); tv.tv_spec('fcn_resnet50', 3, 2); "
            "print('torch' in sys.modules, 'torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]
