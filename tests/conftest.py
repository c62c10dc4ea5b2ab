"""Test-wide setup. The Triton interpreter must be on before any @triton.jit kernel is defined, so that the
kernel tests run the kernels themselves on CPU tensors (there is no GPU in CI)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_report_header(config):
    """Say up front when the installed triton/numpy pair cannot run the kernels through the interpreter (their
    tests then fail with that reason)."""
    from fastrecur.ops._validate import installed_interpreter_incompatibility

    problem = installed_interpreter_incompatibility()
    if problem and not torch.cuda.is_available():
        return f"WARNING: {problem}: the Triton kernel tests will fail on this CPU"
    return None
