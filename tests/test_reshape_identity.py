"""Outputs are byte-identical to those of the code before the core reshape (issue 8).

The fixtures in ``tests/fixtures/reshape`` were written by ``make_fixtures.py`` at the commit
named in ``cases.json``, before the run plan and the split / infer / merge pieces existed.
Every case runs again here through the public ``segment()`` and each result array must have
the same shape, dtype and bytes. Float results depend on the convolution kernels of the torch
build, so the comparison needs the torch version the fixtures were made with.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.reshape.cases import CASES, array_digest, run_case

HERE = Path(__file__).parent / "fixtures" / "reshape"
RECORD = json.loads((HERE / "cases.json").read_text())


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.load(HERE / "input.npy")


def test_fixture_cases_are_the_recorded_ones():
    assert RECORD["cases"] == json.loads(json.dumps(CASES))


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_bytes_as_before_the_reshape(name, image, tmp_path):
    import torch

    if torch.__version__ != RECORD["torch"]:
        pytest.skip(f"fixtures made with torch {RECORD['torch']}, this is {torch.__version__}"
                    ": float kernels may differ")
    masks = np.load(HERE / "expected_masks.npz")
    results = run_case(CASES[name], image, tmp_path / name)
    expected = {key.split("/", 1)[1]: value for key, value in RECORD["arrays"].items()
                if key.startswith(f"{name}/")}
    assert sorted(results) == sorted(expected)
    for layer, array in results.items():
        want = expected[layer]
        assert (list(array.shape), array.dtype.str) == (want["shape"], want["dtype"]), layer
        key = f"{name}/{layer}"
        if key in masks.files:  # show where an integer layer differs
            np.testing.assert_array_equal(array, masks[key], err_msg=key)
        assert array_digest(array) == want["sha256"], f"{key}: bytes differ"
