"""unet-resnet18/34/50 and the ``smp:ARCH:ENCODER`` family, each against an independent
reference: torchvision's own ResNet (structure, weights), segmentation_models_pytorch's own
Unet (the same network), gradients of the real network (the derived receptive field), and
a whole-image pass (tiling). Geometry checks use a narrow copy (``width``): strides and
receptive field do not depend on channel counts.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import tifffile
import torch
import zarr
from click.testing import CliRunner

from tilesegment.cli.main import cli
from tilesegment.errors import ModelError
from tilesegment.models import create_model, get_spec
from tilesegment.models.custom import load_model, resolve_model
from tilesegment.models.geometry import support
from tilesegment.models.resnet_unet import ResNetUNet
from tilesegment.models.resnet_unet_geometry import resnet_unet_steps


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory):
    """torchvision's ResNet-50 with seeded random weights and non-trivial BN statistics
    (so that loading them matters), and its state dict saved to a local file."""
    import torchvision

    torch.manual_seed(7)
    tv = torchvision.models.resnet50(weights=None).eval()
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("resnet") / "resnet50.pth"
    torch.save(tv.state_dict(), path)
    return tv, path


def test_encoder_is_torchvisions_resnet50_and_loads_its_state_dict(resnet50):
    tv, path = resnet50
    net = create_model("unet-resnet50", 3, 2, backbone_weights=str(path))
    theirs = {k: tuple(v.shape) for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    assert {k: tuple(v.shape) for k, v in net.encoder.state_dict().items()} == theirs
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        feats = net.encoder(x)
        h = tv.relu(tv.bn1(tv.conv1(x)))
        refs = [h]
        h = tv.maxpool(h)
        for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
            h = layer(h)
            refs.append(h)
        logits = tv.fc(torch.flatten(tv.avgpool(feats[-1]), 1))  # our layer4, their head
        assert torch.allclose(logits, tv(x), atol=1e-5)
        y = net(x)
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]
    assert [f.shape[1] for f in feats] == [64, 256, 512, 1024, 2048]
    for ours, ref in zip(feats, refs, strict=True):
        assert torch.equal(ours, ref)
    assert y.shape == (1, 2, 64, 64) and not net.training


def test_backbone_weights_fit_other_bands_and_refuse_another_resnet(resnet50, tmp_path):
    import torchvision

    tv, path = resnet50
    rgb = tv.conv1
    four = create_model("unet-resnet50", 4, 2, backbone_weights=str(path)).encoder.conv1
    grey = torch.rand(1, 1, 20, 20)
    with torch.inference_mode():
        assert torch.allclose(four(grey.repeat(1, 4, 1, 1)), rgb(grey.repeat(1, 3, 1, 1)),
                              atol=1e-5)
    other = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    with pytest.raises(ModelError, match=r"resnet18\.pth: not a torchvision resnet50 state "
                       r"dict; missing: layer1.0.bn3.*wrong shape: layer1.0.conv1.weight"):
        create_model("unet-resnet50", 3, 2, backbone_weights=str(other))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_derived_support_is_the_networks(arch):
    """The input rows an output pixel's gradient reaches are exactly those the layer list
    gives, at several pooling phases (random weights: every tap is non-zero). A strip 32 px
    wide: rows are what is measured, and the net is separable in its geometry."""
    torch.manual_seed(2)
    net = ResNetUNet(arch, 1, 1, width=4).eval()
    steps = resnet_unet_steps(arch)
    x = torch.randn(1, 1, 768, 32, requires_grad=True)
    y = net(x)
    for o in (384, 384 + 13, 384 + 30):
        grad, = torch.autograd.grad(y[0, 0, o, 16], x, retain_graph=True)
        rows = np.nonzero(grad[0, 0].abs().sum(1).numpy())[0]
        assert (rows.min(), rows.max()) == support(steps, o, o), (arch, o)


def test_radii_and_tiles_in_the_spec():
    radii = {a: get_spec(f"unet-{a}", 3, 2).receptive_radius
             for a in ("resnet18", "resnet34", "resnet50")}
    assert radii == {"resnet18": 311, "resnet34": 543, "resnet50": 307}
    spec = get_spec("unet-resnet50", 3, 2)
    assert spec.tile_rule.output_stride == 32 and spec.default_halo(1024) == 320
    with pytest.raises(Exception, match="nearest legal size: 96"):
        spec.check_tile(100)


def test_tile_equals_whole_image_at_the_default_halo_and_not_below():
    """A tile cut from a taller image (rows from 32, a multiple of the stride) gives, in its
    core at the default halo, the whole image's output. Negative control: at 128 px less
    halo it does not (the left/top reach at pooling phase p is 277 + p for ResNet-50, so
    the default halo 320, from the symmetric radius 307, is one stride more than needed)."""
    spec = get_spec("unet-resnet50", 2, 3)
    halo = spec.default_halo(spec.default_tile)
    tile = spec.smallest_tile(halo)
    torch.manual_seed(3)
    net = ResNetUNet("resnet50", 2, 3, width=16).eval()
    image = torch.randn(1, 2, tile + 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        whole = net(image)[0]
        part = net(image[..., 32:32 + tile, :])[0]
    ref = whole[:, 32:32 + tile]
    assert (part[:, halo:tile - halo] - ref[:, halo:tile - halo]).abs().max() <= \
        1e-4 * ref.abs().max()
    less = halo - 128
    assert (part[:, less:tile - less] - ref[:, less:tile - less]).abs().max() > \
        1e-3 * ref.abs().max()


def test_pipeline_tiles_equal_one_padded_whole_image_pass():
    """Through ``segment`` at the default halo (tile 1024, three tiles across): the output
    equals one pass of the same network over the raster mirror-padded as the pipeline pads
    it, by a multiple of 32 covering the radius (numpy's padding, not the pipeline's)."""
    from tests.models.test_zoo_seamless import _pass, _reference_pad, _registered
    from tilesegment import segment

    spec = get_spec("unet-resnet50", 2, 3)
    torch.manual_seed(6)
    net = ResNetUNet("resnet50", 2, 3, width=4).eval()
    image = np.random.default_rng(6).normal(size=(2, 40, 800)).astype(np.float32)
    with _registered("unet-resnet50", net) as alias:
        tiled = segment(image, model=alias, classes=3, tile=1024, returns="logits",
                        normalization="none")
    ref = _pass(net, image, _reference_pad(spec), spec)
    assert np.abs(ref).max() > 0.05
    assert np.abs(tiled - ref).max() <= 1e-4 * np.abs(ref).max()


# --- smp: the same network, and the plugin path -------------------------------------------


def test_smp_unet_is_the_same_network():
    smp = pytest.importorskip("segmentation_models_pytorch")
    ours = create_model("unet-resnet18", 2, 3, seed=5)
    theirs = smp.Unet("resnet18", encoder_weights=None, classes=3, in_channels=2).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    built = load_model("smp:Unet:resnet18", 2, 3)
    assert type(built) is type(theirs)
    assert {k: v.shape for k, v in built.state_dict().items()} == \
        {k: v.shape for k, v in theirs.state_dict().items()}
    x = torch.randn(2, 2, 64, 96)
    with torch.inference_mode():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    resolved = resolve_model("smp:Unet:resnet18", 2, 3)
    assert resolved.kind == "registered"
    assert resolved.spec.receptive_radius == get_spec("unet-resnet18", 2, 3).receptive_radius
    assert not resolved.spec.global_context
    assert resolve_model("smp:FPN:resnet18", 2, 3).spec.global_context  # radius unknown


def test_smp_through_the_cli_with_local_weights(tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    from safetensors.torch import save_file

    rng = np.random.default_rng(0)
    image = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "img.tif", image, photometric="rgb")
    model = create_model("unet-resnet18", 3, 3, seed=9)  # smp's layout: loads into smp
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    out = tmp_path / "m.zarr"
    r = CliRunner().invoke(cli, ["run", str(tmp_path / "img.tif"), "-o", str(out), "--model",
                                 "smp:Unet:resnet18", "--weights",
                                 str(tmp_path / "w.safetensors"), "--classes", "3", "--tile",
                                 "64", "--halo", "0", "--normalize", "none"])
    assert r.exit_code == 0, r.output
    x = torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32))[None]
    with torch.inference_mode():
        ref = model(x)[0].argmax(0).numpy()
    assert np.array_equal(zarr.open_group(out, mode="r")["mask"][:], ref)


def test_smp_missing_is_one_line_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)  # import blocked
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    r = CliRunner().invoke(cli, ["run", str(tmp_path / "img.tif"), "-o",
                                 str(tmp_path / "m.zarr"), "--model", "smp:Unet:resnet34"])
    assert r.exit_code != 0
    assert "segmentation-models-pytorch" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    with pytest.raises(ModelError, match="smp:ARCH:ENCODER"):
        resolve_model("smp:Unet", 3)  # a family name without its encoder
