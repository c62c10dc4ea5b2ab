"""pytest-benchmark suite of the fused ops: ``pytest benchmarks/ --benchmark-only``.

Cases (``fastrecur.bench.kernel_cases``): every fused op at the TRM-Sudoku, HRM-Sudoku and TRM-Maze shapes,
forward and forward+backward, three variants: ``eager`` (the models' eager op sequence), ``compile``
(``torch.compile`` of that sequence) and ``triton`` (the fused op).

Options (or environment variables, handy in CI):

* ``--bench-device cpu|cuda`` (``FASTRECUR_BENCH_DEVICE``; default cuda when available);
* ``--bench-scale full|quick|tiny`` (``FASTRECUR_BENCH_SCALE``; default full on CUDA -- B=768 -- and quick
  on CPU -- B=8, Maze B=1);
* ``--bench-dtype`` (default bfloat16);
* ``--bench-triton-cpu`` (``FASTRECUR_BENCH_TRITON_CPU=1``): time the Triton variant on the CPU too. It
  runs there only through the interpreter (``TRITON_INTERPRET=1`` must be exported), which is slow and
  says nothing about GPU speed, so by default those cases are skipped with that reason.

Each case's ``extra_info`` (in ``--benchmark-json``) holds the bytes and FLOPs the op must move, achieved
GB/s and TFLOP/s, the fraction of the roofline measured at session start and, on CUDA, the device-event
median (``triton.testing.do_bench``) and peak memory.
"""

from __future__ import annotations

import os

import pytest
import torch


def pytest_addoption(parser):
    g = parser.getgroup("fastrecur benchmarks")
    g.addoption(
        "--bench-device",
        default=os.environ.get("FASTRECUR_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"),
        choices=["cpu", "cuda"],
    )
    g.addoption("--bench-scale", default=os.environ.get("FASTRECUR_BENCH_SCALE"), choices=["full", "quick", "tiny"])
    g.addoption("--bench-dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    g.addoption(
        "--bench-triton-cpu",
        action="store_true",
        default=os.environ.get("FASTRECUR_BENCH_TRITON_CPU", "0") not in ("", "0"),
    )


def _scale(config) -> str:
    return config.getoption("--bench-scale") or ("full" if config.getoption("--bench-device") == "cuda" else "quick")


def pytest_generate_tests(metafunc):
    if "kernel_case" in metafunc.fixturenames:
        from fastrecur.bench import kernel_cases

        cases = kernel_cases(_scale(metafunc.config))
        metafunc.parametrize("kernel_case", cases, ids=[c.name for c in cases])
    if "mode" in metafunc.fixturenames:
        metafunc.parametrize("mode", ["fwd", "fwd+bwd"])
    if "variant" in metafunc.fixturenames:
        metafunc.parametrize("variant", ["eager", "compile", "triton"])


def pytest_report_header(config):
    from fastrecur.bench import environment

    meta = environment(torch.device(config.getoption("--bench-device")), quick=_scale(config) != "full")
    return (
        f"fastrecur benchmarks: {meta['device']}, torch {meta['torch']}, triton {meta['triton']}, "
        f"threads {meta['threads']}, scale {_scale(config)}, date {meta['date']}"
    )


@pytest.fixture(scope="session")
def bench_device(pytestconfig) -> torch.device:
    device = torch.device(pytestconfig.getoption("--bench-device"))
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("--bench-device cuda: no CUDA device here")
    return device


@pytest.fixture(scope="session")
def bench_dtype(pytestconfig) -> torch.dtype:
    return getattr(torch, pytestconfig.getoption("--bench-dtype"))


@pytest.fixture(scope="session")
def triton_cpu(pytestconfig) -> bool:
    return pytestconfig.getoption("--bench-triton-cpu")


@pytest.fixture(scope="session")
def roofline(bench_device, bench_dtype, pytestconfig) -> dict:
    """Copy bandwidth and matmul rate measured once per session on the benchmark device."""
    from fastrecur.bench import measure_roofline

    return measure_roofline(bench_device, bench_dtype, quick=_scale(pytestconfig) != "full")


@pytest.fixture(scope="session")
def environment_info(bench_device, pytestconfig) -> dict:
    from fastrecur.bench import environment

    return environment(bench_device, quick=_scale(pytestconfig) != "full")
