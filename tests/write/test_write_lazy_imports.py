"""Choosing and checking an output kind imports no I/O library; making one imports only the
library its writer needs (checked in a fresh interpreter, through ``sys.modules``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.runs import REPO

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    folder = Path(sys.argv[1])
    seen = {}
    def heavy():
        return sorted(m for m in ("zarr", "rasterio", "torch") if m in sys.modules)
    import tilesegment.write as write
    from tilesegment.write import registry
    seen["import"] = heavy()
    for name in ("new.zarr", "new.tif", "new.tiff"):
        write.output_kind(folder / name)
        registry.writer_for(folder / name)
        write.check_output(folder / name, layers=["probabilities", "disagreement"])
    seen["choose"] = heavy()
    for name in ("old.zarr", "old.tif"):  # outputs already there: the overwrite policy
        write.check_output(folder / name, overwrite=True)
    seen["check existing"] = heavy()
    from tilesegment.read.base import Georef
    meta = write.OutputMeta(shape=(8, 8), num_classes=2, class_names=("a", "b"),
                            class_colors=((0, 0, 0), (1, 1, 1)),
                            georef=Georef(crs_wkt=None, transform=None, pixel_size=None,
                                          unit=None),
                            block_shape=(8, 8), provenance={})
    write.create_output(folder / "made.zarr", meta).abort()
    seen["create zarr"] = heavy()
    print(json.dumps(seen))
""")


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_choosing_and_checking_an_output_imports_neither_zarr_nor_rasterio(tmp_path: Path):
    import numpy as np
    import rasterio

    from tilesegment import segment

    image = np.random.default_rng(0).normal(size=(3, 16, 16)).astype(np.float32)
    for name in ("old.zarr", "old.tif"):
        segment(image, tmp_path / name, model="identity", tile=16, halo=0)
    with rasterio.open(tmp_path / "old.tif") as ds:
        assert "TILESEGMENT" in ds.tags()  # a real output: the check reads its tag
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"import": [], "choose": [], "check existing": [],
                    "create zarr": ["zarr"]}, seen
