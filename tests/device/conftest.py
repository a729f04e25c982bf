"""CUDA tests fail, rather than skip, when selected on a machine without a GPU."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _needs_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.fail("tests/device need a CUDA GPU (torch.cuda.is_available() is False); "
                    "`make test` deselects them with -m 'not cuda'")
