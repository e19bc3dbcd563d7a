"""fcn*-bn on VGG16-BN and deeplab-largefov-msc, each against an independent reference:
torchvision's own ``vgg16_bn`` (structure, weights, classifier), the batch-free BN of eval
mode, the paper's head layout, and a whole-image pass (tiling, with a negative control).
Geometry checks use narrow copies (``width``): strides and fields do not depend on widths.
"""

from __future__ import annotations

import pytest
import torch

from tilesegment.errors import ModelError
from tilesegment.models import create_model, get_spec
from tilesegment.models.deeplab import DeepLabMSc
from tilesegment.models.deeplab_geometry import deeplab_radius
from tilesegment.models.deeplab_spec import DEEPLAB_RADIUS
from tilesegment.models.fcn import FCN
from tilesegment.models.vgg import load_torchvision_vgg16


@pytest.fixture(scope="module")
def vgg16_bn(tmp_path_factory):
    """torchvision's VGG16-BN body (its own ``make_layers``, random BN statistics) and a
    classifier in ``vgg16_bn().state_dict()``'s layout, saved to a file. (Building the whole
    ``vgg16_bn()`` would only add the slow init and the writing of 120 M weights.)"""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(11)
    features = make_layers(cfgs["D"], batch_norm=True).eval()
    with torch.no_grad():
        for m in features.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    for i, (fout, fin) in {0: (4096, 25088), 3: (4096, 4096), 6: (1000, 4096)}.items():
        # Every column distinct (what the (C, H, W) reshape to fc6 must keep in order);
        # rows repeat, stored once (an expanded tensor saves its small storage only).
        state[f"classifier.{i}.weight"] = torch.linspace(-0.01, 0.01, fin).expand(fout, fin)
        state[f"classifier.{i}.bias"] = torch.randn(fout) * 0.01
    path = tmp_path_factory.mktemp("vggbn") / "vgg16_bn.pth"
    torch.save(state, path)
    return features, state, path


@pytest.fixture(scope="module")
def fcn8s_bn(vgg16_bn):
    return create_model("fcn8s-bn", 3, 4, backbone_weights=str(vgg16_bn[2]))


def test_fcn_bn_body_and_fc_are_torchvisions_vgg16_bn(vgg16_bn, fcn8s_bn):
    features, state, _ = vgg16_bn
    net = fcn8s_bn
    kinds = torch.nn.Conv2d | torch.nn.BatchNorm2d
    ours = [type(m) for m in net.backbone.modules() if isinstance(m, kinds)]
    assert ours == [type(m) for m in features if isinstance(m, kinds)] and len(ours) == 26
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(12))
    with torch.inference_mode():
        feats = net.backbone(x)
        pools, h = [], x
        for layer in features:  # torchvision's own body, its pools kept
            h = layer(h)
            if isinstance(layer, torch.nn.MaxPool2d):
                pools.append(h)
    for mine, ref in zip(feats, pools[2:], strict=True):
        assert (mine - ref).abs().max() <= 1e-5 * ref.abs().max()
    # fc6/fc7 are classifier.0/.3, reshaped as (out, 512, 7, 7) and (out, 4096, 1, 1)
    assert torch.equal(net.fc6.weight.flatten(1), state["classifier.0.weight"])
    assert torch.equal(net.fc7.weight.flatten(1), state["classifier.3.weight"])
    assert torch.equal(net.fc6.bias, state["classifier.0.bias"])


def test_bn_in_eval_mode_does_not_depend_on_the_batch(fcn8s_bn):
    """The registry's net is in eval mode, every BN with it; a narrow copy shows what that
    buys: a sample's output alone equals its output batched with another, and in train mode
    (the negative control) it does not."""
    assert not any(m.training for m in fcn8s_bn.modules())
    torch.manual_seed(3)
    net = FCN("8s", 3, 4, width=8, fc_channels=16, score_std=0.5, batch_norm=True).eval()
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(1, 3, 32, 32, generator=gen)
    b = 5 * torch.randn(1, 3, 32, 32, generator=gen) + 2
    with torch.no_grad():
        alone = net(a)
        assert torch.allclose(net(torch.cat([a, b]))[:1], alone, atol=1e-5)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.train()
        assert not torch.allclose(net(torch.cat([a, b]))[:1], net(torch.cat([a, a]))[:1],
                                  atol=1e-3)


def test_plain_and_bn_weights_are_not_confused(vgg16_bn, tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    with pytest.raises(ModelError, match=r"holds vgg16_bn weights: use an fcn\*-bn model"):
        load_torchvision_vgg16(vgg16_bn[2])
    plain = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in
                make_layers(cfgs["D"], batch_norm=False).state_dict().items()}, plain)
    with pytest.raises(ModelError, match="not a torchvision VGG16-BN state dict"):
        load_torchvision_vgg16(plain, batch_norm=True)


def test_fcn_bn_tiled_equals_whole_and_not_with_less_halo():
    spec = get_spec("fcn32s-bn", 2, 3)
    assert spec.receptive_radius == get_spec("fcn32s", 2, 3).receptive_radius
    halo = spec.default_halo(spec.default_tile)
    tile = spec.smallest_tile(halo)
    torch.manual_seed(4)
    net = FCN("32s", 2, 3, width=8, fc_channels=16, score_std=0.5, batch_norm=True)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    net.eval()
    image = torch.randn(1, 2, tile + 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        ref = net(image)[0][:, 32:32 + tile]
        part = net(image[..., 32:32 + tile, :])[0]
    scale = ref.abs().max()
    assert (part[:, halo:tile - halo] - ref[:, halo:tile - halo]).abs().max() <= 1e-4 * scale
    less = halo - 64
    assert (part[:, less:tile - less] - ref[:, less:tile - less]).abs().max() > 1e-3 * scale


# --- DeepLab-MSc ---------------------------------------------------------------------------


def test_msc_heads_are_the_papers():
    net = create_model("deeplab-largefov-msc", 3, 5)
    assert list(net.msc) == ["input", "pool1", "pool2", "pool3", "pool4"]
    sources = {"input": (3, 8), "pool1": (64, 4), "pool2": (128, 2), "pool3": (256, 1),
               "pool4": (512, 1)}
    for name, head in net.msc.items():
        convs = [m for m in head if isinstance(m, torch.nn.Conv2d)]
        assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [
            (sources[name][0], 128, 3), (128, 128, 1), (128, 5, 1)]
        assert convs[0].stride == (sources[name][1],) * 2
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert net(x).shape == (1, 5, 64, 64) and net.score_map(x).shape == (1, 5, 8, 8)
    assert deeplab_radius() == DEEPLAB_RADIUS == get_spec("deeplab-largefov", 3,
                                                          2).receptive_radius
    assert get_spec("deeplab-largefov-msc", 3, 2).receptive_radius == deeplab_radius(msc=True)


def test_msc_loads_vgg16_into_its_body(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(6)
    features = make_layers(cfgs["D"], batch_norm=False)  # torchvision's vgg16().features
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    net = create_model("deeplab-largefov-msc", 3, 2, backbone_weights=str(path))
    assert torch.equal(net.backbone.conv4_2.weight, features[19].weight)
    assert torch.equal(net.backbone.conv1_1.weight, features[0].weight)


def test_msc_tiled_equals_whole_and_not_with_less_halo():
    spec = get_spec("deeplab-largefov-msc", 2, 3)
    halo = spec.default_halo(spec.default_tile)
    tile = spec.smallest_tile(halo)
    torch.manual_seed(7)
    net = DeepLabMSc(2, 3, width=8, fc_channels=16, msc_channels=8).eval()
    for head in net.msc.values():  # heads as strong as the main path, so they count
        torch.nn.init.normal_(head.score.weight, 0.0, 0.3)
    image = torch.randn(1, 2, tile + 16, 32, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        ref = net(image)[0][:, 8:8 + tile]
        part = net(image[..., 8:8 + tile, :])[0]
    scale = ref.abs().max()
    assert (part[:, halo:tile - halo] - ref[:, halo:tile - halo]).abs().max() <= 1e-4 * scale
    # Max-pools pass on only their winners, so the farthest pixels rarely count: 96 px
    # less halo (the difference decays to float noise within ~16 px of the default halo).
    less = halo - 96
    assert (part[:, less:tile - less] - ref[:, less:tile - less]).abs().max() > 1e-3
