"""The model zoo through the real CLI: backbone weights, checkpoints, your own models."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import tifffile
import torch
import zarr
from click.testing import CliRunner

from tilesegment.cli.main import cli
from tilesegment.models import create_model
from tilesegment.models.checkpoint import ModelCard, save_checkpoint


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "img.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(path, (rng.random((70, 90, 3)) * 255).astype(np.uint8),
                     photometric="rgb")
    return path


def _run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def test_fcn_with_local_vgg16_backbone(tmp_path, image):
    import torchvision

    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None)
    backbone = tmp_path / "vgg16.pth"
    torch.save(vgg.state_dict(), backbone)
    out = tmp_path / "fcn.zarr"
    r = _run("run", image, "-o", out, "--model", "fcn8s", "--backbone-weights", backbone,
             "--classes", "3", "--tile", "64", "--halo", "0", "--normalize", "none")
    assert r.exit_code == 0, r.output
    prov = zarr.open_group(out, mode="r").attrs["tilesegment"]["provenance"]
    assert prov["backbone_weights"] == str(backbone) and prov["model"] == "fcn8s"
    bad = _run("run", image, "-o", tmp_path / "u.zarr", "--model", "unet-tiny",
               "--backbone-weights", backbone)
    assert bad.exit_code == 1 and "takes no backbone weights" in bad.output
    assert not (tmp_path / "u.zarr").exists()


def test_checkpoint_runs_by_path_and_matches_the_module(tmp_path, image):
    from tilesegment import segment

    model = create_model("unet-tiny", 3, 2, seed=9)
    ckpt = tmp_path / "nuclei.safetensors"
    save_checkpoint(model, ckpt, ModelCard(architecture="unet-tiny", in_channels=3,
                                           num_classes=2, class_names=("bg", "nucleus")))
    card = json.loads(ckpt.with_suffix(".json").read_text())
    assert card["architecture"] == "unet-tiny" and len(card["sha256"]) == 64
    out = tmp_path / "ck.zarr"
    r = _run("run", image, "-o", out, "--model", ckpt, "--tile", "64", "--halo", "16")
    assert r.exit_code == 0, r.output
    assert "RANDOM" not in r.output
    group = zarr.open_group(out, mode="r")
    assert group.attrs["tilesegment"]["class_names"] == ["bg", "nucleus"]
    # the same network passed as a module, with the normalisation the card recorded
    assert card["normalization"]["mode"] == "raster"
    direct = segment(image, model=model, tile=64, halo=16, normalization="raster")
    assert np.array_equal(group["mask"][:], direct)


def test_module_function_and_torchscript(tmp_path, image, monkeypatch):
    pkg = tmp_path / "mymodels.py"
    pkg.write_text(
        "import torch\n"
        "def build(in_channels, num_classes):\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Conv2d(in_channels, num_classes, 3, padding=1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "f.zarr"
    r = _run("run", image, "-o", out, "--model", "mymodels:build", "--classes", "4",
             "--tile", "32", "--halo", "4")
    assert r.exit_code == 0, r.output
    assert zarr.open_group(out, mode="r")["mask"][:].max() < 4

    with warnings.catch_warnings():  # torch 2.15 deprecates TorchScript; it still loads
        warnings.simplefilter("ignore")
        scripted = torch.jit.trace(torch.nn.Conv2d(3, 2, 3, padding=1).eval(),
                                   torch.zeros(1, 3, 32, 32))
        ts = tmp_path / "model.ts"
        torch.jit.save(scripted, str(ts))
    r = _run("run", image, "-o", tmp_path / "t.zarr", "--model", ts, "--tile", "32",
             "--halo", "4")
    assert r.exit_code == 0, r.output
    sys.modules.pop("mymodels", None)


@pytest.mark.parametrize("typo,meant", [("unet-tiy", "unet-tiny"), ("fcn8", "fcn8s"),
                                        ("deeplab-largefow", "deeplab-largefov")])
def test_a_mistyped_model_name_gets_did_you_mean(tmp_path, image, typo, meant):
    r = _run("run", image, "-o", tmp_path / "o.zarr", "--model", typo)
    assert r.exit_code == 1
    assert f"did you mean '{meant}'?" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "o.zarr").exists()
