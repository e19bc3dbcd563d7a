"""The registry's contract, and weights that load only from safe local files."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch

from tilesegment import segment
from tilesegment.errors import ModelError
from tilesegment.models import create_model, get_spec, list_models
from tilesegment.models.registry import get_entry
from tilesegment.models.weights import load_weights

TRAINABLE = [n for n in list_models() if get_entry(n).trainable]
"""Every architecture that builds for any bands and classes (not ``identity``, nor the
shipped trained models, whose bands and classes are fixed: tests/models/test_shipped.py)."""


@pytest.mark.parametrize("name", TRAINABLE)
@pytest.mark.parametrize("channels,classes", [(1, 2), (4, 5)])
def test_contract_at_smallest_legal_tile(name, channels, classes):
    spec = get_spec(name, channels, classes)
    side = spec.tile_rule.nearest_legal(1)
    if name == "unet":  # the 64-channel nets are slow at large sizes; the rule is the same
        side = spec.tile_rule.nearest_legal(32)
    model = create_model(name, channels, classes)
    with torch.inference_mode():
        y = model(torch.randn(2, channels, side, side))
    out = side - 2 * spec.check_tile(side)
    assert tuple(y.shape) == (2, classes, out, out)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_unet_valid_is_the_papers_geometry():
    spec = get_spec("unet-valid", 1, 2)
    assert spec.default_tile == 572 and spec.check_tile(572) == 92
    with pytest.raises(Exception, match="nearest legal size: 572"):
        spec.check_tile(570)


def test_random_weights_are_reproducible_across_builds():
    a = create_model("unet-tiny", 3, 2, seed=5).state_dict()
    b = create_model("unet-tiny", 3, 2, seed=5).state_dict()
    c = create_model("unet-tiny", 3, 2, seed=6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_safetensors_round_trip_and_provenance(tmp_path):
    from safetensors.torch import save_file

    trained = create_model("unet-tiny", 3, 2, seed=42)
    path = tmp_path / "w.safetensors"
    save_file(trained.state_dict(), str(path))
    fresh = load_weights(create_model("unet-tiny", 3, 2, seed=0), path)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(fresh(x), trained(x))

    image = np.random.default_rng(0).random((3, 70, 90)).astype(np.float32)
    summary = segment(image, tmp_path / "m.zarr", model="unet-tiny", classes=2, weights=path,
                      tile=64, halo=16)
    import zarr

    prov = zarr.open_group(summary.output, mode="r").attrs["tilesegment"]["provenance"]
    assert prov["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov["random_weights"] is False


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("override", [None, "1"])
def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch, override):
    if override:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", override)
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"x": _Evil()}))
    with pytest.raises(ModelError, match="refused or unreadable"):
        load_weights(create_model("unet-tiny", 3, 2), path)


def test_truncated_and_mismatched_weights_are_named(tmp_path):
    from safetensors.torch import save_file

    model = create_model("unet-tiny", 3, 2)
    full = tmp_path / "full.safetensors"
    save_file(model.state_dict(), str(full))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ModelError, match=r"cut\.safetensors"):
        load_weights(create_model("unet-tiny", 3, 2), cut)

    partial = {k: v for k, v in model.state_dict().items() if not k.startswith("head")}
    partial["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.safetensors"
    save_file(partial, str(bad))
    with pytest.raises(ModelError, match=r"missing: head\.bias, head\.weight.*unexpected: "
                                         r"extra\.weight"):
        load_weights(create_model("unet-tiny", 3, 2), bad)


def test_catalogue_radius_of_deeplab_matches_its_arithmetic():
    from tilesegment.models.catalog import DEEPLAB_RADIUS
    from tilesegment.models.deeplab import deeplab_receptive_radius

    assert deeplab_receptive_radius() == DEEPLAB_RADIUS


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_catalogue_radius_of_fcn_matches_its_arithmetic(variant):
    from tilesegment.models.catalog import FCN_RADIUS
    from tilesegment.models.fcn import receptive_radius

    assert receptive_radius(variant) == FCN_RADIUS[variant]
