"""An output made with random weights says so wherever it is looked at: the run summary,
``info``, ``evaluate``'s table and Markdown report — and one made with trained (here: saved)
weights, or by a model that has none, does not."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from safetensors.torch import save_file

from tilesegment.cli.main import cli
from tilesegment.models import create_model


def _invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout  # not stderr, where the run's warning goes


@pytest.mark.parametrize("case", ["random", "weights", "identity"])
def test_random_weights_are_named_in_summary_info_and_evaluate(tmp_path, case):
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.random.default_rng(0).random((2, 48, 40)).astype(np.float32))
    truth = tmp_path / "truth.tif"
    tifffile.imwrite(truth, np.random.default_rng(1).integers(0, 2, (48, 40), dtype=np.uint8))
    model = ["--model", "unet-tiny", "--classes", "2", "--tile", "32", "--halo", "8"]
    if case == "weights":
        save_file(create_model("unet-tiny", 2, 2, seed=3).state_dict(), tmp_path / "w.safetensors")
        model += ["--weights", tmp_path / "w.safetensors"]
    if case == "identity":
        model = ["--model", "identity", "--tile", "32", "--halo", "0"]
    out = tmp_path / "mask.zarr"
    code, run_text = _invoke("run", image, "-o", out, *model)
    assert code == 0, run_text
    _, info_text = _invoke("info", out)
    code, eval_text = _invoke("evaluate", out, truth, "--report", tmp_path / "report")
    assert code == 0, eval_text
    report = (tmp_path / "report" / "report.md").read_text()
    shown = ["RANDOM weights" in text for text in (run_text, info_text, eval_text, report)]
    assert shown == [case == "random"] * 4, (run_text, info_text, eval_text)
