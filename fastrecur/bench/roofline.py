"""Kernel roofline of the native loop: every fused kernel of ``torch.ops.fastrecur_C`` against a copy of the
same bytes, timed in turns in the same run.

The loop's elementwise kernels (add + RMSNorm over rows and over the token axis, SwiGLU, RoPE, the injection
sum) are memory-bound: each reads its inputs and writes its outputs once, so the bandwidth a plain copy of the
same number of bytes reaches on the same data sizes (same caches, same threads) is their ceiling. A kernel
at 50 % or more of it runs at memory speed up to its arithmetic (fastrecur issue #16). Shapes are those of the
TRM-MLP Sudoku step (97 positions, hidden 512, MLP width 1536, 8 heads of 64) at a batch size.

    python -m fastrecur.bench.roofline                        # bf16, fp16, fp32; batches 1, 8, 64; CPU
    python -m fastrecur.bench.roofline --device cuda --batches 1,64,768
    python -m fastrecur.bench.roofline --out benchmarks/results   # -> OUT/kernel-roofline-<device>-<date>/

Both sides of a comparison are called the same way, as ``torch.ops`` overloads (``fastrecur_C.<kernel>.default``
and ``aten.copy_.default``), so the Python and dispatcher cost of a call (about 1.7 us on the EPYC of
benchmarks/results, a quarter of the smallest kernels' time) weighs on both alike; the rest of an op's fixed cost
(its argument checks) stays in the kernel's time. The native loop calls the kernels without either.

Every table is printed with the device: on a CPU its model and the ISA features that decide the kernels'
and the GEMMs' speed (AVX-512, AVX512-BF16, AMX), read from /proc/cpuinfo.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

from fastrecur.cli import InputError, check_output_dir, positive_int, run_command

from .common import (
    KERNEL_DTYPES,
    ModuleParser,
    _loadavg,
    _sync,
    device_name,
    environment,
    parse_batches,
    parse_subset,
)

# Sudoku TRM-MLP dimensions: positions (81 cells + 16 puzzle-embedding rows), hidden, channel-MLP width,
# attention heads and head size (the RoPE kernel rotates the q and k heads: 2 * 8 heads of 64).
S, D, INTER, HEADS, HEAD_DIM = 97, 512, 1536, 8, 64
EPS = 1e-5
KERNELS = ("add_rms_norm", "add_rms_norm_dim1", "swiglu", "rope", "inject_add")
# /proc/cpuinfo flags that decide the CPU kernels' and GEMMs' speed, and how the tables name them.
CPU_FEATURES = {
    "avx512f": "AVX-512",
    "avx512_bf16": "AVX512-BF16",
    "avx512_fp16": "AVX512-FP16",
    "amx_tile": "AMX",
    "amx_bf16": "AMX-BF16",
}


def cpu_features() -> Dict[str, bool]:
    """Which of :data:`CPU_FEATURES` this CPU has (Linux /proc/cpuinfo; all False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        flags = []
    return {label: name in flags for name, label in CPU_FEATURES.items()}


def device_line(device: torch.device) -> str:
    """One line naming the device, printed above every table: the GPU, or the CPU model with its ISA features
    (e.g. ``CPU AMD EPYC; AVX-512 yes, AVX512-BF16 yes, AVX512-FP16 no, AMX no, AMX-BF16 no; 2 threads``) and
    the instruction set the extension's CPU kernels were compiled for."""
    from fastrecur import _ext

    if device.type == "cuda":
        return f"{device_name(device)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    feats = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu_features().items())
    isa = _ext.cpu_isa() or "none (extension not built)"
    return (
        f"{device_name(device)}; {feats}; threads: {torch.get_num_threads()}; extension CPU kernels: {isa}; "
        f"torch {torch.__version__}"
    )


def _rand(shape, dtype, device, scale=1.0) -> torch.Tensor:
    return (torch.randn(*shape, device=device) * scale).to(dtype)


def _rope_tables(device) -> Tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (10000.0 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM))
    emb = torch.outer(torch.arange(S, dtype=torch.float32), inv).repeat(1, 2)
    return emb.cos().to(device), emb.sin().to(device)


def kernel_case(kernel: str, batch: int, dtype: torch.dtype, device: torch.device) -> Tuple[Callable[[], None], int]:
    """(a call of ``kernel`` on preallocated tensors, the bytes it must move) at ``batch`` Sudoku items: each
    input read once and each output written once, as the loop calls it (RoPE: the q and k heads in place and
    its fp32 tables; the injection: ``z_L + (z_H + x)``, three reads and one write)."""
    ops = torch.ops.fastrecur_C
    e = torch.empty((), dtype=dtype).element_size()
    M = batch * S
    if kernel == "add_rms_norm":
        a, b, out = (_rand((M, D), dtype, device) for _ in range(3))
        return (lambda: ops.add_rms_norm.default(a, b, EPS, out)), 3 * M * D * e
    if kernel == "add_rms_norm_dim1":
        # The mixer's token-axis norm: h (contiguous [B, S, D]) + the token MLP's output, a [B, S, D] view of
        # its [S, B*D] GEMM output, normalised over S.
        a, out = _rand((batch, S, D), dtype, device), _rand((batch, S, D), dtype, device)
        b = _rand((S, batch, D), dtype, device).transpose(0, 1)
        return (lambda: ops.add_rms_norm_dim1.default(a, b, EPS, out)), 3 * M * D * e
    if kernel == "swiglu":
        gu, out = _rand((M, 2 * INTER), dtype, device, 3.0), torch.empty(M, INTER, dtype=dtype, device=device)
        return (lambda: ops.swiglu.default(gu, out)), 3 * M * INTER * e
    if kernel == "rope":
        x = _rand((batch, S, 2 * HEADS, HEAD_DIM), dtype, device)
        cos, sin = _rope_tables(device)
        return (lambda: ops.rope_.default(x, cos, sin)), 2 * x.numel() * e + 2 * cos.numel() * 4
    if kernel == "inject_add":
        t, s0, s1 = (_rand((M, D), dtype, device) for _ in range(3))
        return (lambda: ops.inject_add.default(t, [s0, s1])), 4 * M * D * e
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def copy_case(nbytes: int, device: torch.device) -> Callable[[], None]:
    """A device copy that moves ``nbytes`` (half read, half written), on tensors of that size."""
    n = max(1, nbytes // 2)
    src = torch.empty(n, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    copy = torch.ops.aten.copy_.default  # called like the kernels (see the module docstring)
    return lambda: copy(dst, src)


def clock_name(device: torch.device) -> str:
    """What :func:`time_in_turns` measures with on ``device`` (printed with every table)."""
    return _timer(device)[1]


def _timer(device: torch.device) -> Tuple[Callable[[], float], str]:
    """The clock: on a CPU with one thread, the thread's CPU time (a shared machine's other processes then
    cost only cache, not the time slices they take); otherwise wall time."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.thread_time, "thread CPU time (1 thread)"
    return time.perf_counter, "wall time"


def time_in_turns(
    fns: Dict[str, Callable[[], None]], device: torch.device, rounds: int, min_round_s: float = 1e-3
) -> Dict[str, Tuple[float, float]]:
    """(median, minimum) seconds per call of each function, timed in turns: each round runs every function
    back to back ``reps`` times (enough to fill ``min_round_s``), so a slow phase of a shared machine hits all
    alike. The minimum is the figure least disturbed by other work."""
    clock, _ = _timer(device)
    reps = {}
    for name, fn in fns.items():
        for _ in range(3):
            fn()
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        reps[name] = max(1, min(2000, int(min_round_s / max(time.perf_counter() - t0, 1e-7))))
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync(device)
            t0 = clock()
            for _ in range(reps[name]):
                fn()
            _sync(device)
            times[name].append((clock() - t0) / reps[name])
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


def kernel_roofline(
    device: torch.device,
    dtypes: List[torch.dtype],
    batches: List[int],
    kernels: Optional[List[str]] = None,
    rounds: int = 15,
) -> List[dict]:
    """One row per (kernel, dtype, batch): bytes moved, µs per call, GB/s, the copy's GB/s on the same bytes
    and the ratio, from the fastest round of each (and the ratio of the medians). Needs the extension
    (``fastrecur._ext``); on CUDA, its CUDA kernels."""
    from fastrecur import _ext

    _ext.ops()  # RuntimeError with the reason when the extension is not built
    if device.type == "cuda" and not _ext.has_cuda_kernels():
        raise RuntimeError(f"the extension has no CUDA kernels: {_ext.status()}")
    rows = []
    for dtype in dtypes:
        for batch in batches:
            for kernel in kernels or KERNELS:
                fn, nbytes = kernel_case(kernel, batch, dtype, device)
                t = time_in_turns({"kernel": fn, "copy": copy_case(nbytes, device)}, device, rounds)
                (k_med, k_min), (c_med, c_min) = t["kernel"], t["copy"]
                rows.append(
                    {
                        "kernel": kernel,
                        "dtype": str(dtype).replace("torch.", ""),
                        "batch": batch,
                        "bytes": nbytes,
                        "kernel_us": 1e6 * k_min,
                        "copy_us": 1e6 * c_min,
                        "kernel_GBps": nbytes / k_min / 1e9,
                        "copy_GBps": nbytes / c_min / 1e9,
                        "fraction_of_copy": c_min / k_min,
                        "fraction_of_copy_median": c_med / k_med,
                    }
                )
    return rows


def markdown(rows: List[dict], header: str, clock: str) -> str:
    """The roofline table, under ``header`` (:func:`device_line`); ``clock`` names the timer."""
    lines = [
        f"Kernel roofline: {header}",
        "",
        f"Fastest of the rounds ({clock}); each kernel and a copy of the same bytes timed in turns.",
        "",
        "| kernel | dtype | batch | bytes moved | kernel µs | kernel GB/s | copy GB/s (same bytes) | "
        "**kernel / copy** | medians: kernel / copy |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kernel']} | {r['dtype']} | {r['batch']} | {r['bytes'] / 1e6:.2f} MB | "
            f"{r['kernel_us']:.1f} | {r['kernel_GBps']:.1f} | {r['copy_GBps']:.1f} | "
            f"**{100 * r['fraction_of_copy']:.0f} %** | "
            f"{100 * r['fraction_of_copy_median']:.0f} % |"
        )
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m fastrecur.bench.roofline``."""
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--dtypes", default=",".join(KERNEL_DTYPES), help=f"comma-separated subset of {','.join(KERNEL_DTYPES)}"
    )
    p.add_argument("--batches", default="1,8,64", help="comma-separated batch sizes >= 1 (default 1,8,64)")
    p.add_argument("--kernels", default=",".join(KERNELS), help=f"comma-separated subset of {','.join(KERNELS)}")
    p.add_argument("--rounds", type=positive_int, default=30, help="timing rounds, >= 1 (default 30)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads, >= 1 (default: torch's)")
    p.add_argument("--out", default=None, help="write OUT/kernel-roofline-<device>-<date>/results.{json,md}")


def check_arguments(a: argparse.Namespace) -> argparse.Namespace:
    """Parse the comma-separated options into ``a.dtype_list``, ``a.batch_list``, ``a.kernel_list`` and check
    ``--device``, ``--out`` (made here) and the extension, before any work; an
    :class:`~fastrecur.cli.InputError` naming the option (or saying why the extension cannot run)."""
    a.dtype_list = [getattr(torch, d) for d in parse_subset("--dtypes", a.dtypes, KERNEL_DTYPES)]
    a.batch_list = parse_batches("--batches", a.batches)
    a.kernel_list = parse_subset("--kernels", a.kernels, KERNELS)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no GPU here")
    from fastrecur import _ext

    if not _ext.available():
        raise InputError(_ext.status())
    if a.device == "cuda" and not _ext.has_cuda_kernels():
        raise InputError(f"--device cuda: the extension has no CUDA kernels: {_ext.status()}")
    if a.out is not None:
        check_output_dir(a.out, try_write=True)
    return a


def main(argv=None) -> int:
    p = ModuleParser("bench.roofline", prog="python -m fastrecur.bench.roofline", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run_command("bench.roofline", run, p.parse_args(argv))


def run(a: argparse.Namespace) -> int:
    """Check the arguments, time the kernels, print the table (and write it under ``--out``)."""
    a = check_arguments(a)
    device = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = kernel_roofline(device, a.dtype_list, a.batch_list, a.kernel_list, a.rounds)
    meta = table_meta(device)
    md = markdown(rows, meta["device_line"] + f", {meta['date']}, load average {meta['loadavg_start']}", meta["clock"])
    print(md)
    if a.out:
        write_results(a.out, f"kernel-roofline-{device.type}-{meta['date']}", {"meta": meta, "rows": rows}, md)
    return 0


def table_meta(device: torch.device) -> dict:
    """What a table's run is recorded with: the environment, the device line and CPU features, the load average
    at the start and the end, and the clock."""
    meta = dict(environment(device, quick=False), device_line=device_line(device), cpu_features=cpu_features())
    meta["loadavg_end"], meta["clock"] = _loadavg(), clock_name(device)
    return meta


def write_results(out: str, folder: str, results: dict, md: str) -> None:
    """``results`` as OUT/FOLDER/results.json and ``md`` as results.md, each written atomically."""
    from fastrecur.checkpoint import atomic_write

    d = os.path.join(out, folder)
    os.makedirs(d, exist_ok=True)
    for name, text in (("results.json", json.dumps(results, indent=1)), ("results.md", md)):
        atomic_write(os.path.join(d, name), lambda tmp, text=text: open(tmp, "w").write(text))
    print(f"wrote {d}")


if __name__ == "__main__":
    sys.exit(main())
