"""Constants, the environment every result records, and timing/memory helpers."""

from __future__ import annotations

import datetime
import functools
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from fastrecur.cli import CommandParser, InputError, report_input_error

EPS = 1e-5
SOLVE_STEPS = 16
ARCHS = ("hrm", "trm", "trm_mlp", "srm", "flat")
ARCH_LABELS = {"hrm": "HRM", "trm": "TRM-att", "trm_mlp": "TRM-MLP", "srm": "SRM", "flat": "Flat"}
KERNEL_OPS = ("add_rms_norm", "swiglu_mlp_block", "token_mix_block", "rotary_attention", "stablemax_cross_entropy")
KERNEL_DTYPES = ("bfloat16", "float16", "float32")  # the dtypes the fused kernels take
TRITON_CPU_ENV = "FASTRECUR_BENCH_TRITON_CPU"
TRITON_LAUNCH_RANGE = "fastrecur_bench::triton_launch::"


# ---------------------------------------------------------------------------------------------------------
# Command-line arguments of the benchmark scripts


class ModuleParser(CommandParser):
    """The parser of a ``python -m fastrecur.X`` or ``python benchmarks/X.py`` script: one-line errors
    ``fastrecur X: message (see PROG --help)`` on stderr and exit status 2 (:class:`fastrecur.cli.CommandParser`),
    ``X`` being ``command``."""

    def __init__(self, command: str, **kwargs):
        super().__init__(**kwargs)
        self.command = command

    def error(self, message: str):  # noqa: D102 (argparse API)
        report_input_error(self.command, f"{message} (see {self.prog} --help)")
        sys.exit(2)


def parse_subset(option: str, text: Optional[str], known: Sequence[str], allow_empty: bool = False) -> List[str]:
    """The comma-separated names of ``option``'s value ``text``, each one of ``known``; an
    :class:`~fastrecur.cli.InputError` naming ``option`` otherwise (or when empty, unless ``allow_empty``)."""
    given = [x for x in (text or "").split(",") if x]
    bad = [x for x in given if x not in known]
    if bad:
        raise InputError(f"{option}: unknown {bad}; choose from {','.join(known)}")
    if not (given or allow_empty):
        raise InputError(f"{option}: no name given; choose a comma-separated subset of {','.join(known)}")
    return given


def parse_batches(option: str, text: str) -> List[int]:
    """The comma-separated batch sizes (ints >= 1) of ``option``'s value ``text``; an
    :class:`~fastrecur.cli.InputError` naming ``option`` otherwise."""
    try:
        sizes = [int(b) for b in text.split(",") if b]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise InputError(f"{option} must be comma-separated integers >= 1, e.g. 1,8; got {text!r}")
    return sizes


def _triton_version() -> Optional[str]:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


def _log(msg: str) -> None:
    print(msg, flush=True)


def _loadavg() -> Optional[float]:
    """1-minute load average (a shared machine's other work shows here; judge CPU timings with it)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # the CPU model, e.g. "Intel(R) Xeon(R) ..." (Linux)
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        model = None
    return f"CPU {model or platform.processor() or platform.machine()}"


def environment(device: torch.device, quick: bool) -> dict:
    """What every result file records: device, versions, date, threads."""
    from fastrecur.backend import backends

    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_start": _loadavg(),
        "date": datetime.date.today().isoformat(),
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": quick,
        "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
        "backends": {k: {"available": v[0], "why": v[1]} for k, v in backends().items()},
    }


def triton_usable(device: torch.device, requested_on_cpu: bool = False) -> Tuple[bool, str]:
    """Whether the Triton variant should be timed on ``device``, and why not."""
    from fastrecur.backend import backends

    ok, why = backends()["triton"]
    if device.type == "cuda":
        return ok, why
    if not requested_on_cpu:
        return False, (
            "not timed on CPU: Triton kernels run there only through the interpreter, whose speed means "
            f"nothing (set TRITON_INTERPRET=1 and pass --triton-cpu or {TRITON_CPU_ENV}=1 to time it anyway)"
        )
    if not ok:
        return False, f"--triton-cpu: {why}"
    return True, why


def cpp_usable() -> Tuple[bool, str]:
    from fastrecur.backend import backends

    return backends()["cpp"]


# ============================================================================================================
# Timing and memory
# ============================================================================================================
@functools.lru_cache(maxsize=None)
def onednn_runs(dtype: torch.dtype) -> bool:
    """Whether this torch's oneDNN runs ``dtype``'s inner product (``mkldnn::_linear_pointwise``, what the C++
    loop's ``gemm="onednn"`` calls) on this CPU: fp16 needs AVX512-FP16 or AMX-FP16. Probed once per dtype, as
    the extension's own ``OneDnnLinear::supports`` does on its side."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        x = torch.ones(2, 16, dtype=dtype)
        torch.ops.mkldnn._linear_pointwise(x, torch.ones(16, 16, dtype=dtype), None, "none", [], "")
    except RuntimeError:
        return False
    return True


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int, min_s: float = 0.0) -> dict:
    """Median (and min) milliseconds of ``fn`` over at least ``iters`` calls (more, up to 20x, when a call is
    short, to fill ``min_s`` seconds): CUDA events per call on GPU, ``perf_counter`` on CPU."""
    for _ in range(warmup):
        fn()
    _sync(device)
    if min_s > 0:  # short calls: enough of them to fill min_s, at most 20x the asked count
        t0 = time.perf_counter()
        fn()
        _sync(device)
        iters = max(iters, min(20 * iters, int(min_s / max(time.perf_counter() - t0, 1e-6))))
    times = []
    if device.type == "cuda":
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return {"ms": statistics.median(times), "ms_min": min(times), "iters": iters}


def measure_kernel(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> dict:
    """Like :func:`measure`; on CUDA ``triton.testing.do_bench`` (device events, L2 flushed between calls)."""
    if device.type == "cuda":
        try:
            from triton.testing import do_bench

            fn()
            ms = do_bench(fn, warmup=25, rep=100 if iters >= 10 else 50, return_mode="median")
            return {"ms": float(ms), "ms_min": None, "iters": None, "timer": "triton.testing.do_bench"}
        except ImportError:
            pass
    return dict(
        measure(fn, device, warmup, iters, min_s=0.25), timer="cuda events" if device.type == "cuda" else "perf_counter"
    )


def peak_memory(fn: Callable[[], Any], device: torch.device) -> Optional[dict]:
    """Peak allocated bytes during one call of ``fn`` (CUDA only; ``None`` on CPU): absolute, and above
    what was allocated before the call (the call's own working memory)."""
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {"peak_bytes": peak, "extra_bytes": peak - before}


def measure_roofline(device: torch.device, dtype: torch.dtype, quick: bool) -> dict:
    """The roofline of this run, measured in it: device copy bandwidth (read + write) and dense matmul FLOP/s
    in ``dtype``. Kernels are judged against these, not against spec sheets."""
    big = device.type == "cuda"
    n = (256 if big else (16 if quick else 64)) * 2**20 // 4
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    it = 20 if big else 5
    t_copy = measure(lambda: dst.copy_(src), device, 3, it)["ms"] / 1e3
    k = 8192 if big else (1024 if quick else 2048)
    a = torch.randn(k, k, device=device).to(dtype)
    b = torch.randn(k, k, device=device).to(dtype)
    out = torch.empty(k, k, device=device, dtype=dtype)
    t_mm = measure(lambda: torch.mm(a, b, out=out), device, 2, it)["ms"] / 1e3
    return {
        "copy_GBps": 2 * n * 4 / t_copy / 1e9,
        "matmul_TFLOPs": 2 * k**3 / t_mm / 1e12,
        "dtype": str(dtype).replace("torch.", ""),
        "how": f"copy of {n * 4 >> 20} MiB fp32 (bytes read + written); {k}^3 matmul",
    }
