"""An output's provenance says what made it, in terms that still mean the same file and
the same numbers elsewhere: absolute paths, sha256 of the weights, the torch version, the
normalisation statistics actually used, the resolution asked for."""

from __future__ import annotations

import hashlib

import numpy as np
import tifffile
import torch
from safetensors.torch import save_file

from tilesegment import segment
from tilesegment.models import create_model
from tilesegment.write import read_output_meta


def test_provenance_records_paths_hashes_versions_and_statistics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(5)
    image = (rng.random((2, 40, 56)) * 1000).astype(np.float32)
    tifffile.imwrite("img.tif", image)
    save_file(create_model("unet-tiny", 2, 3, seed=2).state_dict(), "w.safetensors")
    segment("img.tif", "out.zarr", model="unet-tiny", classes=3, weights="w.safetensors",
            tile=32, halo=8, normalization="raster")
    prov = read_output_meta(tmp_path / "out.zarr")["provenance"]
    assert prov["weights"] == str(tmp_path / "w.safetensors")
    assert prov["input"]["path"] == str(tmp_path / "img.tif")
    digest = hashlib.sha256((tmp_path / "w.safetensors").read_bytes()).hexdigest()
    assert prov["weights_sha256"] == digest
    assert prov["torch_version"] == torch.__version__
    used = prov["normalization_used"]
    np.testing.assert_allclose(used["mean"], image.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(used["std"], image.std(axis=(1, 2)), rtol=1e-5)
    assert prov["input"]["mpp"] is None and prov["random_weights"] is False
