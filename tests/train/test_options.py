"""The trainer's options: label rules as ``evaluate`` reads them, fine-tuning, precision,
validation images, class weights."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.train.train_helpers import discs
from tilesegment.evaluation.confusion import LabelRules, count_block
from tilesegment.read import open_raster
from tilesegment.train import train
from tilesegment.train.data import IGNORE, Labels, class_weights, label_rules

FAST = dict(model="unet-tiny", tile=48, batch_size=2, device="cpu", lr=3e-3)


@pytest.mark.parametrize("rules", [
    dict(ignore_index=9),
    dict(instances=True),
    dict(mapping={5: 1, 7: 2}),
    dict(truth_nodata=3.0, mapping={5: 1, 7: 2}),
])
def test_labels_follow_evaluate_rules(rules):
    """Each pixel's training label is the class ``evaluate`` counts it as (or ignored
    exactly where ``evaluate`` leaves it out): compared with count_block pixel by pixel."""
    rng = np.random.default_rng(0)
    truth = rng.choice([0, 3, 5, 7, 9], size=(12, 10)).astype(np.uint16)
    opts = dict(ignore_index=None, instances=False, mapping=None, truth_nodata=None) | rules
    k = 2 if rules.get("instances") else 10
    mine = label_rules(k, opts["ignore_index"], opts["instances"], opts["mapping"],
                       opts["truth_nodata"])
    labels = Labels(open_raster(truth), mine).read((0, 12, 0, 10))[0]
    for (y, x), value in np.ndenumerate(truth):
        ref = LabelRules(num_classes=k, ignore_index=opts["ignore_index"],
                         truth_nodata=opts["truth_nodata"], instances=opts["instances"],
                         mapping=tuple(sorted((opts["mapping"] or {}).items())))
        cm = count_block(np.zeros((1, 1), np.int64), np.array([[value]]), ref)
        if cm.sum() == 0:
            assert labels[y, x] == IGNORE
        else:
            assert labels[y, x] == int(np.argwhere(cm)[0][0])


def test_out_of_range_truth_is_one_clear_error():
    from tilesegment.errors import InputError

    truth = np.array([[0, 1], [4, 1]], np.uint8)
    with pytest.raises(InputError, match="truth value 4 is not a class id in \\[0, 2\\)"):
        Labels(open_raster(truth), label_rules(2, None, False, None, None)).read((0, 2, 0, 2))


def test_auto_class_weights_are_inverse_sqrt_frequency():
    counts = np.array([900, 100, 0])
    w = class_weights("auto", counts)
    ref = np.array([1 / np.sqrt(0.9), 1 / np.sqrt(0.1), 0.0])
    ref[:2] /= ref[:2].mean()
    np.testing.assert_allclose(w, ref, rtol=1e-6)
    assert class_weights("none", counts) is None


def test_init_fine_tunes_from_the_checkpoint(tmp_path, disc_data):
    image, labels = disc_data
    first = tmp_path / "a.safetensors"
    train(image, labels, output=first, epochs=1, steps_per_epoch=2,
          class_names="bg,disc", **FAST)
    again = tmp_path / "b.safetensors"
    summary = train(image, labels, output=again, epochs=1, steps_per_epoch=1, init=first,
                    **{**FAST, "model": None, "lr": 1e-12}, weight_decay=0.0)
    assert summary.card.training["start"] == f"init {first}"
    assert summary.card.class_names == ("bg", "disc")  # the checkpoint's, not the spec's
    a, b = load_file(str(first)), load_file(str(again))
    for key in a:  # one step of a vanishing learning rate: the checkpoint's weights
        if a[key].dtype.kind == "f":
            np.testing.assert_allclose(a[key], b[key], atol=1e-6)
    train(image, labels, output=tmp_path / "c.safetensors", epochs=1,
          steps_per_epoch=1, **{**FAST, "lr": 1e-12}, weight_decay=0.0, seed=5)
    c = load_file(str(tmp_path / "c.safetensors"))
    assert any(not np.allclose(a[k], c[k]) for k in a if a[k].dtype.kind == "f")


def test_bf16_autocast_and_validation_images(tmp_path):
    image, labels = discs(64, 96, seed=1)
    vimage, vlabels = discs(64, 64, seed=2)
    summary = train([image], [labels], val_images=[vimage], val_truths=[vlabels],
                    output=tmp_path / "m.safetensors", epochs=1, steps_per_epoch=2,
                    precision="bf16", class_weights="auto", **FAST)
    (_, window, mask), = summary.validation
    assert window == (0, 64, 0, 64) and mask.shape == (64, 64)
    pairs = summary.card.training["data"]["pairs"]
    assert pairs[0]["train_window"] == [0, 64, 0, 96] and pairs[0]["val_window"] is None
    assert pairs[1]["train_window"] is None and pairs[1]["val_window"] == [0, 64, 0, 64]
    assert "class weights" in summary.card.training["loss"]


def _vgg16_state(features_only: bool) -> dict:
    """A torchvision VGG16 state dict (random weights standing in for the ImageNet file)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.vgg16(weights=None).state_dict()
    return {k: v for k, v in state.items() if not (features_only and k.startswith("classifier"))}


def _holds(checkpoint: dict, tensor: np.ndarray) -> bool:
    """``tensor`` is among the checkpoint's (one step of a vanishing learning rate apart)."""
    return any(v.shape == tensor.shape and np.allclose(v, tensor, rtol=0, atol=1e-9)
               for v in checkpoint.values())


@pytest.mark.slow
def test_backbone_weights_start_deeplab_from_the_vgg16_file(tmp_path, disc_data):
    from safetensors.torch import save_file

    image, labels = disc_data
    state = _vgg16_state(features_only=True)  # fc6/fc7 then keep their random init
    vgg = tmp_path / "vgg16.safetensors"
    save_file(state, str(vgg))
    out = tmp_path / "d.safetensors"
    summary = train(image, labels, output=out, model="deeplab-largefov", tile=64,
                    batch_size=1, device="cpu", epochs=1, steps_per_epoch=1, lr=1e-12,
                    weight_decay=0.0, backbone_weights=vgg, val_fraction=0.1)
    assert summary.card.training["start"] == "backbone weights vgg16.safetensors"
    got = load_file(str(out))
    convs = [k for k in state if k.endswith(".weight") and k != "features.0.weight"]
    assert len(convs) == 12  # conv1_2 … conv5_3: copied as they are
    for key in convs:
        assert _holds(got, state[key].numpy()), key


@pytest.mark.slow
def test_backbone_weights_fcn_learns_its_zero_score_layer(tmp_path, disc_data):
    """FCN from a VGG16 file starts with the paper's all-zero score layer (every pixel class
    0); training must move it, and fc6/fc7 must come from the file's classifier."""
    from safetensors.torch import save_file

    image, labels = disc_data
    state = _vgg16_state(features_only=False)
    vgg = tmp_path / "vgg16.safetensors"
    save_file(state, str(vgg))
    del state["features.0.weight"]
    out = tmp_path / "f.safetensors"
    train(image, labels, output=out, model="fcn32s", tile=64, batch_size=1, device="cpu",
          epochs=1, steps_per_epoch=2, lr=1e-3, backbone_weights=vgg, val_fraction=0.1)
    got = load_file(str(out))
    score = [v for k, v in got.items() if "score" in k and k.endswith("weight")]
    assert score and all(np.abs(w).max() > 0 for w in score)
    fc7 = state["classifier.3.weight"].numpy()  # (4096, 4096) → a 1×1 convolution
    assert any(v.shape == (4096, 4096, 1, 1) and np.abs(v[..., 0, 0] - fc7).max() < 0.05
               for v in got.values())
