"""DeepLab-LargeFOV: stride-8 score map, the paper's dilations, the model contract, and
VGG16 weights decimated into fc6/fc7 as the paper describes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tilesegment.errors import ModelError
from tilesegment.models.deeplab import (
    RECEPTIVE_RADIUS,
    DeepLabV1,
    build_deeplab,
    deeplab_receptive_radius,
    load_vgg16_weights,
    subsample_fc6,
    vgg16_to_deeplab,
)
from tilesegment.models.probe import measure_receptive_radius


@pytest.fixture(scope="module")
def model() -> DeepLabV1:
    torch.manual_seed(0)
    return DeepLabV1(3, 21).eval()


@pytest.mark.parametrize("size", [(64, 48), (72, 136)])
def test_score_map_has_output_stride_8(model, size):
    seen: dict[str, torch.Size] = {}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen["fc8"] = output.shape

    handle = model.fc8.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            y = model(torch.randn(1, 3, *size))
    finally:
        handle.remove()
    assert tuple(seen["fc8"][-2:]) == (size[0] // 8, size[1] // 8)
    assert tuple(y.shape) == (1, 21, *size)


@pytest.mark.parametrize("size", [(67, 53), (9, 15), (1, 1), (8, 17)])
def test_output_is_input_size_for_any_size(model, size):
    with torch.inference_mode():
        x = torch.randn(1, 3, *size)
        scores, y = model.score_map(x), model(x)
    assert tuple(scores.shape[-2:]) == (-(-size[0] // 8), -(-size[1] // 8))
    assert tuple(y.shape) == (1, 21, *size) and torch.isfinite(y).all()


def test_layers_are_the_papers(model):
    convs = {n: m for n, m in model.backbone.named_children() if isinstance(m, nn.Conv2d)}
    assert list(convs) == [f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
                           for i in range(1, n + 1)]
    widths = [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6
    for (name, conv), width in zip(convs.items(), widths, strict=True):
        dilation = 2 if name.startswith("conv5") else 1
        assert conv.kernel_size == (3, 3) and conv.out_channels == width, name
        assert conv.dilation == (dilation, dilation) and conv.padding == (dilation, dilation)
        assert conv.stride == (1, 1)
    pools = {n: m for n, m in model.backbone.named_children() if isinstance(m, nn.MaxPool2d)}
    assert list(pools) == [f"pool{b}" for b in range(1, 6)]
    for name, pool in pools.items():
        assert (pool.kernel_size, pool.padding) == (3, 1), name
        assert pool.stride == (2 if name in ("pool1", "pool2", "pool3") else 1), name
    fc6, fc7, fc8 = model.head.fc6, model.head.fc7, model.fc8
    assert (fc6.in_channels, fc6.out_channels, fc6.kernel_size) == (512, 1024, (3, 3))
    assert fc6.dilation == (12, 12) and fc6.padding == (12, 12)
    assert (fc7.in_channels, fc7.out_channels, fc7.kernel_size) == (1024, 1024, (1, 1))
    assert (fc8.in_channels, fc8.out_channels, fc8.kernel_size) == (1024, 21, (1, 1))
    drops = [m for m in model.head if isinstance(m, nn.Dropout)]
    assert [d.p for d in drops] == [0.5, 0.5]


@pytest.mark.parametrize("channels,classes", [(1, 2), (4, 5)])
def test_contract(channels, classes):
    net = build_deeplab(channels, classes).eval()
    with torch.inference_mode():
        y = net(torch.randn(2, channels, 40, 40))
    assert tuple(y.shape) == (2, classes, 40, 40)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_dropout_only_in_train_mode():
    net = DeepLabV1(2, 3, width=8, fc_channels=32)
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        net.train()
        a, b = net(x), net(x)
        net.eval()
        c, d = net(x), net(x)
    assert not torch.equal(a, b)
    assert torch.equal(c, d)


def test_analytic_receptive_radius():
    assert deeplab_receptive_radius() == RECEPTIVE_RADIUS == 220


@pytest.mark.slow
def test_probe_confirms_receptive_radius():
    """The probe measures 220 on a narrow copy (same geometry, few channels): all eight
    upsampling phases, on a tile wider than twice the radius."""
    torch.manual_seed(0)
    net = DeepLabV1(2, 3, width=4, fc_channels=16)
    assert measure_receptive_radius(net, 2, 472, draws=1, phases=8) == RECEPTIVE_RADIUS


# --- VGG16 weights -------------------------------------------------------------------------

TV_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
TV_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


def _torchvision_vgg16_state(classifier: bool = True, seed: int = 0) -> dict:
    """Random tensors of ``torchvision.models.vgg16().state_dict()``'s names and shapes."""
    gen = torch.Generator().manual_seed(seed)
    state, c = {}, 3
    for index, width in zip(TV_CONVS, TV_WIDTHS, strict=True):
        state[f"features.{index}.weight"] = torch.randn(width, c, 3, 3, generator=gen)
        state[f"features.{index}.bias"] = torch.randn(width, generator=gen)
        c = width
    if classifier:
        for index, (n_out, n_in) in ((0, (4096, 25088)), (3, (4096, 4096)), (6, (1000, 4096))):
            state[f"classifier.{index}.weight"] = torch.randn(n_out, n_in, generator=gen)
            state[f"classifier.{index}.bias"] = torch.randn(n_out, generator=gen)
    return state


def test_synthetic_state_matches_torchvision_names_and_shapes():
    import torchvision

    with torch.device("meta"):
        reference = torchvision.models.vgg16(weights=None).state_dict()
    ours = _torchvision_vgg16_state()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in reference.items()}


def test_fc6_decimation_picks_every_4th_filter_and_taps_0_3_6():
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(4096, 25088, generator=gen)
    bias = torch.randn(4096, generator=gen)
    w, b = subsample_fc6(weight, bias)
    assert tuple(w.shape) == (1024, 512, 3, 3) and tuple(b.shape) == (1024,)
    # Flattened torchvision index of (channel c, row r, col s) is c·49 + r·7 + s.
    for o, c, i, j in [(0, 0, 0, 0), (1, 7, 2, 1), (1023, 511, 2, 2), (500, 300, 1, 0)]:
        assert w[o, c, i, j] == weight[4 * o, c * 49 + 3 * i * 7 + 3 * j]
    assert torch.equal(b, bias[::4])


def test_vgg16_weights_load_into_deeplab():
    state = _torchvision_vgg16_state()
    net = DeepLabV1(3, 21)
    fc8_before = net.fc8.weight.clone()
    loaded = load_vgg16_weights(net, state)
    assert "head.fc6.weight" in loaded and "head.fc7.weight" in loaded
    assert torch.equal(net.backbone.conv1_1.weight, state["features.0.weight"])
    assert torch.equal(net.backbone.conv5_3.bias, state["features.28.bias"])
    w7 = state["classifier.3.weight"]
    assert torch.equal(net.head.fc7.weight[5, 9, 0, 0], w7[20, 36])
    assert torch.equal(net.fc8.weight, fc8_before)  # fc8 is never loaded


def test_features_only_file_and_other_band_counts(tmp_path):
    from safetensors.torch import save_file

    state = _torchvision_vgg16_state(classifier=False)
    path = tmp_path / "vgg16_features.safetensors"
    save_file(state, str(path))
    rgb, four = build_deeplab(3, 2, path), build_deeplab(4, 2, path)
    fc6_random = DeepLabV1(3, 2).head.fc6.weight
    assert rgb.head.fc6.weight.shape == fc6_random.shape
    # A grey image gives the same conv1_1 response whatever the band count.
    grey = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        a = rgb.backbone.conv1_1(grey.expand(1, 3, 16, 16))
        b = four.backbone.conv1_1(grey.expand(1, 4, 16, 16))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bad_weights_are_refused():
    state = _torchvision_vgg16_state(classifier=False)
    state["features.0.running_mean"] = torch.zeros(64)
    with pytest.raises(ModelError, match="vgg16_bn"):
        vgg16_to_deeplab(state)
    state = _torchvision_vgg16_state(classifier=False)
    del state["features.28.weight"]
    with pytest.raises(ModelError, match=r"features\.28\.weight"):
        vgg16_to_deeplab(state)


def test_narrow_variant_through_the_registry_and_a_checkpoint_card(tmp_path):
    """``width``/``fc_channels`` reach the builder as registry options and a card's
    ``options``; the narrow net keeps the geometry (output stride 8, any input size)."""
    from tilesegment.models import create_model
    from tilesegment.models.checkpoint import ModelCard, build_from_checkpoint, save_checkpoint

    net = create_model("deeplab-largefov", 5, 7, width=8, fc_channels=32)
    assert net.backbone.conv1_1.weight.shape == (8, 5, 3, 3)
    assert net.backbone.conv5_3.weight.shape == (64, 64, 3, 3)  # 512 · 8 / 64
    assert net.head.fc6.weight.shape == (32, 64, 3, 3)
    assert net.score_map(torch.zeros(1, 5, 40, 24)).shape == (1, 7, 5, 3)
    card = ModelCard(architecture="deeplab-largefov", in_channels=5, num_classes=7,
                     options={"width": 8, "fc_channels": 32})
    save_checkpoint(net, tmp_path / "narrow.safetensors", card)
    built, read = build_from_checkpoint(tmp_path / "narrow.safetensors")
    assert read.options == {"width": 8, "fc_channels": 32}
    for (k, a), (k2, b) in zip(net.state_dict().items(), built.state_dict().items(),
                               strict=True):
        assert k == k2 and torch.equal(a, b)
    with pytest.raises(ModelError, match="width 64"):
        build_deeplab(3, 2, _torchvision_vgg16_state(classifier=False), width=8)
