"""Small synthetic labelled rasters for the trainer's tests."""

from __future__ import annotations

import numpy as np
import pytest

from tests.train.train_helpers import discs


@pytest.fixture
def disc_data() -> tuple[np.ndarray, np.ndarray]:
    return discs()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread: on a shared CPU OpenMP's spinning threads make training steps
    tens of times slower, and results are only bit-identical for a fixed thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
