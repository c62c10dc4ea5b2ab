"""Kernel-level benchmarks: each fused op against its eager sequence and torch.compile of it.

Run ``pytest benchmarks/ --benchmark-only`` (options in ``benchmarks/conftest.py``). pytest-benchmark's own
statistics are wall-clock times of a call that ends with a device synchronise; on CUDA the device-event
median (``triton.testing.do_bench``) is in ``extra_info['device_ms']`` and is what GB/s, TFLOP/s and the
roofline fraction are computed from.
"""

from __future__ import annotations

import pytest
import torch

from fastrecur.bench import kernel_callable, measure_kernel, op_cost, peak_memory, triton_usable


def test_kernel(
    benchmark, kernel_case, mode, variant, bench_device, bench_dtype, triton_cpu, roofline, environment_info
):
    if variant == "triton":
        ok, why = triton_usable(bench_device, triton_cpu)
        if not ok:
            pytest.skip(why)
    fn = kernel_callable(kernel_case, variant, mode, bench_device, bench_dtype)
    fn()  # compiles (compile, triton) and warms the allocator
    cuda = bench_device.type == "cuda"

    def call():
        fn()
        if cuda:
            torch.cuda.synchronize(bench_device)

    benchmark.group = f"{kernel_case.name} {mode}"
    benchmark.pedantic(call, rounds=20 if cuda else 5, iterations=1, warmup_rounds=2 if cuda else 1)

    cost = op_cost(kernel_case.op, kernel_case.dims, torch.tensor([], dtype=bench_dtype).element_size())[mode]
    seconds = benchmark.stats.stats.median
    info = {
        "op": kernel_case.op,
        "shape": kernel_case.shape,
        "dims": kernel_case.dims,
        "mode": mode,
        "variant": variant,
        "bytes": cost["bytes"],
        "flops": cost["flops"],
        "roofline": roofline,
        **{k: environment_info[k] for k in ("device", "torch", "triton", "threads", "date")},
    }
    if cuda:
        info["device_ms"] = measure_kernel(fn, bench_device, 3, 20)["ms"]
        seconds = info["device_ms"] / 1e3
        info.update(peak_memory(fn, bench_device) or {})
    info["GBps"] = cost["bytes"] / seconds / 1e9
    info["TFLOPs"] = cost["flops"] / seconds / 1e12
    info["roofline_frac"] = (
        max(cost["bytes"] / (roofline["copy_GBps"] * 1e9), cost["flops"] / (roofline["matmul_TFLOPs"] * 1e12)) / seconds
    )
    benchmark.extra_info.update(info)
