"""Test-wide setup. The Triton interpreter must be on before any @triton.jit kernel is defined, so that the
kernel tests run the kernels themselves on CPU tensors (there is no GPU in CI)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
