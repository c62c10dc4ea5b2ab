"""Test-wide setup. The Triton interpreter must be on before any @triton.jit kernel is defined, so that the
kernel tests run the kernels themselves on CPU tensors (there is no GPU in CI)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Every test starts from seed 0 and the process's thread count, whatever the one before set (a Trainer
    sets its --threads; GEMM and SDPA reductions, hence the last bits, depend on the thread count)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def pytest_report_header(config):
    """Say up front when the installed triton/numpy pair cannot run the kernels through the interpreter (their
    tests then fail with that reason)."""
    from fastrecur.ops._validate import installed_interpreter_incompatibility

    problem = installed_interpreter_incompatibility()
    if problem and not torch.cuda.is_available():
        return f"WARNING: {problem}: the Triton kernel tests will fail on this CPU"
    return None
