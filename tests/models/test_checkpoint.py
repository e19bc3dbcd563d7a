"""Checkpoints: safetensors + JSON card round trips, validation, damage and security."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tilesegment.errors import ModelError, OutputExistsError
from tilesegment.models import create_model, registry
from tilesegment.models.checkpoint import (
    METADATA_KEY,
    ModelCard,
    build_from_checkpoint,
    load_checkpoint,
    read_card,
    save_checkpoint,
)
from tilesegment.models.custom import resolve_model
from tilesegment.models.spec import Normalization

CARD = dict(architecture="unet-tiny", in_channels=3, num_classes=2,
            class_names=["background", "tissue"], class_colors=[[0, 0, 0], [200, 30, 60]],
            normalization={"mode": "fixed", "mean": [120.0, 110.0, 100.0],
                           "std": [50.0, 50.0, 50.0]},
            tile=256, halo=52, resolution=0.5, resolution_unit="um",
            training={"data": "slides v3", "epochs": 40, "dice": 0.91})


def _saved(tmp_path: Path, seed: int = 7) -> tuple[torch.nn.Module, Path]:
    module = create_model("unet-tiny", 3, 2, seed=seed)
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(module, path, CARD)
    return module, path


def test_round_trip_gives_identical_outputs(tmp_path):
    module, path = _saved(tmp_path)
    state, card = load_checkpoint(path)
    assert set(state) == set(module.state_dict())
    rebuilt, _ = build_from_checkpoint(path, 3, 2)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(rebuilt(x), module(x))
    side = json.loads((tmp_path / "tiny.json").read_text())
    assert side["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert side["architecture"] == "unet-tiny" and side["format_version"] == 1
    assert side["training"]["dice"] == 0.91 and side["tilesegment_version"]
    assert card.class_names == ("background", "tissue")
    assert card.normalization == Normalization("fixed", (120.0, 110.0, 100.0), (50.0,) * 3)
    assert card == read_card(tmp_path / "tiny.json") == ModelCard.from_dict(side)


def test_card_is_completed_from_the_architecture(tmp_path):
    module = create_model("unet-tiny", 1, 3, seed=1)
    card = save_checkpoint(module, tmp_path / "bare.safetensors",
                           ModelCard("unet-tiny", 1, 3))
    assert card.class_names == ("class_0", "class_1", "class_2")
    assert len(card.class_colors) == 3 and card.normalization.mode == "raster"
    assert card.sha256 == hashlib.sha256((tmp_path / "bare.safetensors").read_bytes()
                                         ).hexdigest()


def test_embedded_card_serves_when_the_json_is_lost(tmp_path):
    module, path = _saved(tmp_path)
    (tmp_path / "tiny.json").unlink()
    card = read_card(path)
    assert card.sha256 is None and card.architecture == "unet-tiny" and card.halo == 52
    rebuilt, _ = build_from_checkpoint(path)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(rebuilt(x), module(x))


def test_resolve_model_runs_a_checkpoint_with_its_card(tmp_path):
    module, path = _saved(tmp_path)
    resolved = resolve_model(str(path), 3)
    assert resolved.kind == "checkpoint" and not resolved.probed
    assert resolved.spec.class_names == ("background", "tissue")
    assert resolved.spec.receptive_radius == 51  # the architecture's, not a probe's guess
    assert resolved.spec.default_tile == 256 and resolved.halo == 52
    assert resolved.spec.resolution == 0.5 and resolved.spec.normalization.mode == "fixed"
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(resolved.module(x), module(x))
    with pytest.raises(ModelError, match="takes 3 bands; the input has 4"):
        resolve_model(str(path), 4)
    with pytest.raises(ModelError, match="gives 2 classes, not 5"):
        resolve_model(str(path), 3, 5)
    with pytest.raises(ModelError, match="carries its weights"):
        resolve_model(str(path), 3, weights=path)


def test_torchvision_checkpoint_round_trip(tmp_path, monkeypatch):
    from tilesegment.models.tv import tv_entries

    registry.list_models()  # the built-ins load on first use: copy them too
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    for entry in tv_entries():
        if entry.name not in registry._REGISTRY:  # before the registry registers them itself
            registry.register_model(entry)
    module = create_model("lraspp_mobilenet_v3_large", 4, 3, seed=3)
    path = tmp_path / "lraspp.safetensors"
    save_checkpoint(module, path, {"architecture": "lraspp_mobilenet_v3_large",
                                   "in_channels": 4, "num_classes": 3})
    rebuilt, card = build_from_checkpoint(path)
    assert card.normalization.mode == "raster"
    x = torch.randn(1, 4, 64, 64)
    with torch.inference_mode():
        assert torch.equal(rebuilt(x), module(x))


@pytest.mark.parametrize("change,message", [
    ({"num_classes": 0}, r"num_classes must be a positive integer"),
    ({"class_names": ["a"]}, r"class_names has 1 names for 2 classes"),
    ({"class_names": ["a", "a"]}, r"class_names must be unique"),
    ({"class_colors": [[0, 0, 0], [0, 0, 300]]}, r"class_colors must be \[r, g, b\]"),
    ({"normalization": {"mode": "fixed", "mean": [1, 2], "std": [1, 1]}},
     r"normalization mean has 2 values for 3 bands"),
    ({"normalization": {"mode": "fixed", "mean": [1], "std": [0]}}, r"std must be positive"),
    ({"normalization": {"mode": "zscore"}}, r"normalization mode 'zscore' unknown"),
    ({"halo": 200}, r"halo 200 leaves no core in tile 256"),
    ({"resolution": -1.0}, r"resolution must be a positive number"),
    ({"resolution_unit": None}, r"resolution and resolution_unit go together"),
    ({"training": "lots"}, r"training must be a JSON object"),
    ({"sha256": "abc"}, r"sha256 must be 64 lowercase hex digits"),
    ({"options": {"backbone_weights": "/x.pth"}}, r"weight files are not architecture"),
    ({"colour": "red"}, r"bad model card fields \(unknown: colour\)"),
    ({"format_version": 2}, r"card format version 2"),
])
def test_card_validation_names_the_field(tmp_path, change, message):
    with pytest.raises(ModelError, match=message):
        ModelCard.from_dict({**CARD, **change}, "card.json")


def test_card_problems_found_against_the_architecture(tmp_path):
    module = create_model("unet-tiny", 3, 2)
    data = {k: v for k, v in CARD.items() if k != "class_names"}
    with pytest.raises(ModelError, match=r"missing: class_names"):
        ModelCard.from_dict(data)
    with pytest.raises(ModelError, match=r"tile 500 is not legal .* nearest legal size: 504"):
        save_checkpoint(module, tmp_path / "a.safetensors", {**CARD, "tile": 500})
    with pytest.raises(ModelError, match=r"architecture 'unet-gigantic', which is not "
                                         r"registered"):
        save_checkpoint(module, tmp_path / "b.safetensors",
                        {**CARD, "architecture": "unet-gigantic"})
    with pytest.raises(ModelError, match=r"the module \(saving as 'unet-small'\): does not fit"):
        save_checkpoint(module, tmp_path / "c.safetensors", {**CARD, "architecture":
                                                             "unet-small"})
    (tmp_path / "d.json").write_text("{not json")
    (tmp_path / "d.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match=r"d\.json: not JSON"):
        read_card(tmp_path / "d.safetensors")


def test_existing_checkpoint_is_not_overwritten(tmp_path):
    module, path = _saved(tmp_path)
    with pytest.raises(OutputExistsError):
        save_checkpoint(module, path, CARD)
    other = create_model("unet-tiny", 3, 2, seed=99)
    save_checkpoint(other, path, CARD, overwrite=True)
    assert not torch.equal(load_checkpoint(path)[0]["head.weight"],
                           module.state_dict()["head.weight"])


def _header(path: Path) -> tuple[int, dict]:
    """The safetensors header, parsed here independently of tilesegment."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return 8 + n, json.loads(raw[8:8 + n])


def test_truncated_checkpoint_names_the_tensors_cut_off(tmp_path):
    _, path = _saved(tmp_path)
    start, header = _header(path)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    last = max(tensors, key=lambda k: tensors[k]["data_offsets"][1])
    cut_at = start + tensors[last]["data_offsets"][1] - 1  # one byte short of the end
    path.write_bytes(path.read_bytes()[:cut_at])
    with pytest.raises(ModelError, match=rf"sha256 .* does not match .*tensors cut off: "
                                         rf"{last}\)$"):
        load_checkpoint(path)
    (tmp_path / "tiny.json").unlink()  # no hash to compare: safetensors reading fails
    with pytest.raises(ModelError, match=rf"not a readable safetensors file \(truncated at "
                                         rf"{cut_at} bytes; tensors cut off: {last}\)"):
        load_checkpoint(path)


def test_changed_or_mismatched_tensors_are_named(tmp_path):
    from safetensors.torch import save_file

    module, path = _saved(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="the file changed since its card was written"):
        load_checkpoint(path)

    state = dict(module.state_dict())
    del state["head.bias"]
    state["extra.weight"] = torch.zeros(2)
    state["head.weight"] = torch.zeros(3, 8, 1, 1)
    metadata = {METADATA_KEY: json.dumps({**CARD, "format_version": 1})}
    save_file(state, str(path), metadata=metadata)
    (tmp_path / "tiny.json").unlink()
    with pytest.raises(ModelError, match=r"missing: head\.bias; unexpected: extra\.weight; "
                                         r"wrong shape: head\.weight"):
        load_checkpoint(path)

    bare = tmp_path / "bare.safetensors"
    save_file(module.state_dict(), str(bare))
    with pytest.raises(ModelError, match=r"no model card .*--weights FILE"):
        read_card(bare)
    with pytest.raises(ModelError, match=r"a weights file without a model card"):
        resolve_model(str(bare), 3)


class _Evil:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


SECURITY_SCRIPT = r"""
import sys, warnings
from pathlib import Path
warnings.simplefilter("ignore")
import torch
from tilesegment.errors import ModelError
from tilesegment.models import create_model
from tilesegment.models.custom import resolve_model
from tilesegment.models.tv import build_torchvision
from tilesegment.models.weights import load_weights, read_state_dict

assert torch.serialization.os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"
for path in sys.argv[1:]:
    attempts = {
        "read_state_dict": lambda: read_state_dict(path),
        "load_weights": lambda: load_weights(create_model("unet-tiny", 3, 2), path),
        "build_torchvision": lambda: build_torchvision(
            "lraspp_mobilenet_v3_large", 3, 2, weights=path),
        "resolve_model": lambda: resolve_model(path, 3),  # torch.jit.load
    }
    for label, attempt in attempts.items():
        try:
            attempt()
        except ModelError as exc:
            print(label, "refused:", str(exc)[:200])
        else:
            print(label, "LOADED")
"""


def test_code_running_pickles_are_refused_even_when_torch_is_told_otherwise(tmp_path):
    marker = tmp_path / "pwned"
    raw = tmp_path / "evil.pt"
    raw.write_bytes(pickle.dumps({"weight": _Evil(marker)}))
    zipped = tmp_path / "evil_zip.pth"
    torch.save({"weight": _Evil(marker)}, zipped)  # torch's own zip format
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-c", SECURITY_SCRIPT, str(raw), str(zipped)],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 8 and all(" refused: " in line for line in lines), run.stdout
    unsafe = [line for line in lines if "only an unsafe load would run" in line]
    assert len(unsafe) == 6  # read_state_dict, load_weights, build_torchvision × 2 files
    assert sum("not a TorchScript file" in line for line in lines) == 2
    assert not marker.exists()

    # The control: torch itself, with weights_only unset, obeys the variable and runs it.
    control = subprocess.run(
        [sys.executable, "-c", f"import torch; torch.load({str(zipped)!r})"],
        capture_output=True, text=True, env=env, cwd=tmp_path)
    assert control.returncode == 0 and marker.exists(), control.stderr


def test_card_dataclass_round_trips_through_json():
    card = ModelCard.from_dict(CARD)
    again = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))
    assert again == card
    assert dataclasses.replace(card, tile=None).to_dict()["tile"] is None


def test_a_card_halo_off_the_pooling_grid_is_moved_onto_it(tmp_path):
    """Cards written before halos were put on the pooling grid (halo 52 for unet-tiny) still
    run, seamlessly: the halo is raised to the next one on the 8-px grid, with a warning."""
    import numpy as np

    from tilesegment import segment
    from tilesegment.errors import SeamWarning

    _, path = _saved(tmp_path)
    image = np.random.default_rng(0).normal(size=(3, 40, 40)).astype(np.float32) * 50 + 100
    with pytest.warns(SeamWarning, match="halo 52 is off the model's pooling grid; using 56"):
        summary = segment(image, tmp_path / "out.zarr", model=str(path))
    assert summary.settings["halo"] == 56
