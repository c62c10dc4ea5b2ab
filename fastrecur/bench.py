"""``fastrecur bench`` / ``python -m fastrecur.bench``: fastrecur against eager PyTorch and torch.compile.

Four sections, all written to ``OUT/<device>-<date>/`` as ``results.json``, ``results.md`` and ``speedup.png``
(the plot needs matplotlib; without it the run says so and skips it):

* **kernels**: every fused op (add_rms_norm, swiglu_mlp_block, token_mix_block, rotary_attention,
  stablemax_cross_entropy) against the eager op sequence it replaces (the models' eager code) and
  ``torch.compile`` of that sequence, forward and forward+backward, at TRM-Sudoku (B=768, S=97, D=512),
  HRM-Sudoku (S=82) and TRM-Maze (S=916) shapes (the batch is scaled down by ``--quick``). Median time,
  achieved GB/s and TFLOP/s computed from the bytes and FLOPs the op must move (:func:`op_cost`), the
  fraction of a roofline measured in the same run (a device copy and a large matmul), peak memory on CUDA.
* **models**: one training step (ACT step + backward + optimizer step) and a 16-step solve for HRM,
  TRM-attention, TRM-MLP, SRM and FlatRecurrence per backend (eager, torch.compile, fastrecur triton,
  fastrecur cpp; on CUDA also torch.compile with CUDA graphs for the solve): puzzles/s, peak memory, and the
  ratio to the **GEMM floor** -- the same step's GEMMs alone, timed in the same process. On a CPU an
  HRM/TRM step is GEMM-bound even at batch 1, so the floor, not eager, says how much is left on the table.
* **counters** (device independent, measured on the CPU too): kernel launches per eval ACT step and per
  training step for each backend (ATen kernels from the profiler, Triton launches counted at the
  launchers, the C++ loop's own native op count) and the bytes saved for backward per training step
  (``torch.autograd.graph.saved_tensors_hooks``).
* **grad_cycles**: TRM/SRM with ``grad_cycles`` 1..H_cycles: saved-for-backward bytes and step time, i.e.
  what backpropagating through more recursion cycles costs in memory.

On the CPU the Triton kernels run only through the interpreter, which says nothing about speed: they are
skipped there with the reason recorded, unless ``--triton-cpu`` is given with ``TRITON_INTERPRET=1`` set.
Only their launch counts are measured on the CPU (through the interpreter, in a subprocess, at a small
hidden size with the same schedule: launch counts do not depend on the sizes).

``python -m fastrecur.bench --readout DIR/results.json`` prints the README "Results" section from a JSON.
Every number in it is measured; nothing is extrapolated.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from fastrecur.core.schedule import Update
from fastrecur.models import HRM, SRM, TRM, ACTLossHead, FlatRecurrence
from fastrecur.nn.blocks import swiglu_intermediate_size

EPS = 1e-5
SOLVE_STEPS = 16
ARCHS = ("hrm", "trm", "trm_mlp", "srm", "flat")
ARCH_LABELS = {"hrm": "HRM", "trm": "TRM-att", "trm_mlp": "TRM-MLP", "srm": "SRM", "flat": "Flat"}
KERNEL_OPS = ("add_rms_norm", "swiglu_mlp_block", "token_mix_block", "rotary_attention", "stablemax_cross_entropy")
TRITON_CPU_ENV = "FASTRECUR_BENCH_TRITON_CPU"
TRITON_LAUNCH_RANGE = "fastrecur_bench::triton_launch::"


# ============================================================================================================
# Environment
# ============================================================================================================
def _triton_version() -> Optional[str]:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


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
    from fastrecur._backends import backends

    return {
        "device": device_name(device), "device_type": device.type, "torch": torch.__version__,
        "triton": _triton_version(), "cuda": torch.version.cuda if device.type == "cuda" else None,
        "python": platform.python_version(), "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "loadavg_start": _loadavg(),
        "date": datetime.date.today().isoformat(), "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": quick, "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
        "backends": {k: {"available": v[0], "why": v[1]} for k, v in backends().items()},
    }


def triton_usable(device: torch.device, requested_on_cpu: bool = False) -> Tuple[bool, str]:
    """Whether the Triton variant should be timed on ``device``, and why not."""
    from fastrecur._backends import backends

    ok, why = backends()["triton"]
    if device.type == "cuda":
        return ok, why
    if not requested_on_cpu:
        return False, ("not timed on CPU: Triton kernels run there only through the interpreter, whose speed means "
                       f"nothing (set TRITON_INTERPRET=1 and pass --triton-cpu or {TRITON_CPU_ENV}=1 to time it anyway)")
    if not ok:
        return False, f"--triton-cpu: {why}"
    return True, why


def cpp_usable() -> Tuple[bool, str]:
    from fastrecur._backends import backends

    return backends()["cpp"]


# ============================================================================================================
# Timing and memory
# ============================================================================================================
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
    return dict(measure(fn, device, warmup, iters, min_s=0.25), timer="cuda events" if device.type == "cuda" else "perf_counter")


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
    return {"copy_GBps": 2 * n * 4 / t_copy / 1e9, "matmul_TFLOPs": 2 * k**3 / t_mm / 1e12, "dtype": str(dtype).replace("torch.", ""),
            "how": f"copy of {n * 4 >> 20} MiB fp32 (bytes read + written); {k}^3 matmul"}


# ============================================================================================================
# Kernel level
# ============================================================================================================
# Benchmark shapes: B, S (positions incl. puzzle prefix), D, heads, label positions, vocab, whether TRM-MLP
# (token mixing) runs at that shape (the MLP variant is a Sudoku configuration).
KERNEL_SHAPES = {
    "TRM-Sudoku": dict(B=768, S=97, D=512, H=8, L=81, V=11, mixer=True),
    "HRM-Sudoku": dict(B=768, S=82, D=512, H=8, L=81, V=11, mixer=False),
    "TRM-Maze": dict(B=768, S=916, D=512, H=8, L=900, V=6, mixer=False),
}
# Batch per shape at each scale; "tiny" also shrinks S and D (tests only).
_KERNEL_BATCH = {"full": {"TRM-Sudoku": 768, "HRM-Sudoku": 768, "TRM-Maze": 768},
                 "quick": {"TRM-Sudoku": 8, "HRM-Sudoku": 8, "TRM-Maze": 1}}


def kernel_shapes(scale: str) -> Dict[str, dict]:
    """Shapes at ``scale`` ("full", "quick" or "tiny"). "tiny" = one small shape for tests."""
    if scale == "tiny":
        return {"tiny": dict(B=2, S=13, D=64, H=1, L=9, V=11, mixer=True)}
    if scale not in _KERNEL_BATCH:
        raise ValueError(f"scale must be 'full', 'quick' or 'tiny', got {scale!r}")
    return {name: dict(dims, B=_KERNEL_BATCH[scale][name]) for name, dims in KERNEL_SHAPES.items()}


def op_cost(op: str, dims: dict, elt: int = 2) -> dict:
    """Minimum bytes and FLOPs of a fused op at ``dims`` (activation element size ``elt``), forward and
    forward+backward: each input, weight and output moved once, plus the fp32/fp64 statistics saved for the
    backward and, for the SwiGLU ops, the activation written and read once (as
    ``fastrecur.kernel_report.traffic_rows`` counts the forward). The backward reads the upstream gradient
    and what was saved, and writes the input and weight gradients; its GEMM FLOPs are twice the forward's,
    attention's 2.5 times (the FlashAttention convention)."""
    B, S, D, H, L, V = (dims[k] for k in ("B", "S", "D", "H", "L", "V"))
    M, hd = B * S, D // H
    if op == "add_rms_norm":
        fwd_b, fwd_f = 3 * M * D * elt + 4 * M, 4 * M * D
        bwd_b, bwd_f = 3 * M * D * elt + 4 * M, 5 * M * D
    elif op in ("swiglu_mlp_block", "token_mix_block"):
        if op == "swiglu_mlp_block":
            rows, width, inter = M, D, swiglu_intermediate_size(D, 4)
            stats = 4 * M
        else:  # the MLP runs over the token axis: B*D rows of width S
            rows, width, inter = B * D, S, swiglu_intermediate_size(S, 4)
            stats = 4 * B * D
        w = 3 * inter * width * elt
        act = 2 * rows * inter * elt
        fwd_b, fwd_f = 2 * rows * width * elt + w + stats + act, 6 * rows * width * inter
        bwd_b, bwd_f = 4 * rows * width * elt + stats + 2 * w + act, 12 * rows * width * inter
    elif op == "rotary_attention":
        qkv, out, lse, tables = 3 * M * D * elt, M * D * elt, 4 * B * H * S, 2 * 4 * S * hd
        fwd_b, fwd_f = qkv + tables + out + lse, 4 * B * H * S * S * hd
        bwd_b, bwd_f = out + qkv + out + lse + tables + qkv, 10 * B * H * S * S * hd
    elif op == "stablemax_cross_entropy":
        n = B * L
        logits, labels, f64 = n * V * elt, n * 8, n * 8
        fwd_b, fwd_f = logits + labels + 2 * f64, 8 * n * V
        bwd_b, bwd_f = f64 + logits + labels + f64 + logits, 6 * n * V
    else:
        raise ValueError(f"unknown op {op!r}; expected one of {KERNEL_OPS}")
    return {"fwd": {"bytes": fwd_b, "flops": fwd_f}, "fwd+bwd": {"bytes": fwd_b + bwd_b, "flops": fwd_f + bwd_f}}


@dataclasses.dataclass
class KernelCase:
    """One fused op at one shape: how to make its inputs, its eager sequence and its fused op."""

    op: str
    shape: str
    dims: dict
    make_inputs: Callable[[torch.device, torch.dtype], Tuple[list, List[int]]]  # (args, indices of float args)
    eager: Callable[..., torch.Tensor]
    fused: Callable[..., torch.Tensor]

    @property
    def name(self) -> str:
        return f"{self.op}[{self.shape}]"


def _rope_tables(S: int, hd: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    freqs = torch.outer(torch.arange(S, dtype=torch.float32), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(device), emb.sin().to(device)


def kernel_cases(scale: str = "full", ops: Optional[Iterable[str]] = None) -> List[KernelCase]:
    """Every (op, shape) case at ``scale``. The eager sequences are the models' eager code
    (``fastrecur.ops.reference``, no Triton needed): what the fused ops replace."""
    from fastrecur.ops import reference as R

    ops = tuple(ops or KERNEL_OPS)
    bad = sorted(set(ops) - set(KERNEL_OPS))
    if bad:
        raise ValueError(f"unknown op(s) {bad}; expected some of {list(KERNEL_OPS)}")

    def fused(name):  # imported lazily: fastrecur.ops needs triton
        def call(*args):
            from fastrecur import ops as fops

            return getattr(fops, name)(*args)
        return call

    cases = []
    for shape, d in kernel_shapes(scale).items():
        B, S, D, H, L, V = (d[k] for k in ("B", "S", "D", "H", "L", "V"))
        I, It, hd = swiglu_intermediate_size(D, 4), swiglu_intermediate_size(S, 4), D // H

        def randn(*size, device, dtype, std=1.0):
            return (torch.randn(*size, device=device) * std).to(dtype)

        makers = {
            "add_rms_norm": (
                lambda dev, dt: ([randn(B, S, D, device=dev, dtype=dt), randn(B, S, D, device=dev, dtype=dt)], [0, 1]),
                lambda x, r: R.add_rms_norm(x, r, EPS),
                lambda x, r: fused("add_rms_norm")(x, r, EPS)),
            "swiglu_mlp_block": (
                lambda dev, dt: ([randn(B, S, D, device=dev, dtype=dt), randn(2 * I, D, device=dev, dtype=dt, std=D ** -0.5),
                                  randn(D, I, device=dev, dtype=dt, std=I ** -0.5)], [0, 1, 2]),
                lambda h, wgu, wd: R.swiglu_mlp_block(h, wgu, wd, EPS),
                lambda h, wgu, wd: fused("swiglu_mlp_block")(h, wgu, wd, EPS)),
            "token_mix_block": (
                lambda dev, dt: ([randn(B, S, D, device=dev, dtype=dt), randn(2 * It, S, device=dev, dtype=dt, std=S ** -0.5),
                                  randn(S, It, device=dev, dtype=dt, std=It ** -0.5)], [0, 1, 2]),
                lambda h, wgu, wd: R.token_mix_block(h, wgu, wd, EPS),
                lambda h, wgu, wd: fused("token_mix_block")(h, wgu, wd, EPS)),
            "rotary_attention": (
                lambda dev, dt: ([randn(B, S, 3 * D, device=dev, dtype=dt), *_rope_tables(S, hd, dev)], [0]),
                lambda qkv, cos, sin: R.rotary_attention(qkv, cos, sin, H),
                lambda qkv, cos, sin: fused("rotary_attention")(qkv, cos, sin, H)),
            "stablemax_cross_entropy": (
                lambda dev, dt: ([randn(B, L, V, device=dev, dtype=dt, std=3.0), torch.randint(0, V, (B, L), device=dev)], [0]),
                lambda logits, labels: R.stablemax_cross_entropy(logits, labels),
                lambda logits, labels: fused("stablemax_cross_entropy")(logits, labels)),
        }
        for op in ops:
            if op == "token_mix_block" and not d["mixer"]:
                continue
            make, eager, fz = makers[op]
            cases.append(KernelCase(op, shape, dict(d), make, eager, fz))
    return cases


def kernel_callable(case: KernelCase, variant: str, mode: str, device: torch.device, dtype: torch.dtype) -> Callable[[], Any]:
    """A no-argument function running ``case`` once: ``variant`` in eager/compile/triton, ``mode`` in
    fwd (under no_grad) / fwd+bwd (forward, then the gradients of every float input)."""
    args, diff = case.make_inputs(device, dtype)
    fn = {"eager": case.eager, "triton": case.fused}.get(variant)
    if variant == "compile":
        fn = torch.compile(case.eager, dynamic=False)
    elif fn is None:
        raise ValueError(f"variant must be eager, compile or triton, got {variant!r}")
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn(*args)
        return run
    if mode != "fwd+bwd":
        raise ValueError(f"mode must be 'fwd' or 'fwd+bwd', got {mode!r}")
    for i in diff:
        args[i].requires_grad_(True)
    inputs = [args[i] for i in diff]
    with torch.no_grad():
        probe = case.eager(*[a.detach() for a in args])
    grad = torch.randn(probe.shape, device=device).to(probe.dtype)

    def run_bwd():
        out = fn(*args)
        return torch.autograd.grad(out, inputs, grad)
    return run_bwd


def run_kernel_case(case: KernelCase, variant: str, mode: str, device: torch.device, dtype: torch.dtype,
                    warmup: int, iters: int, roofline: Optional[dict] = None) -> dict:
    """Time one (case, variant, mode); a row of results (errors are recorded, not raised)."""
    row = {"op": case.op, "shape": case.shape, "dims": case.dims, "variant": variant, "mode": mode, "dtype": str(dtype).replace("torch.", "")}
    cost = op_cost(case.op, case.dims, torch.tensor([], dtype=dtype).element_size())[mode]
    row.update(bytes=cost["bytes"], flops=cost["flops"])
    try:
        fn = kernel_callable(case, variant, mode, device, dtype)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        row["first_call_s"] = time.perf_counter() - t0  # includes compilation for compile/triton
        row.update(measure_kernel(fn, device, warmup, iters))
        mem = peak_memory(fn, device)
        if mem:
            row.update(mem)
    except Exception as e:  # a failing variant is a finding: record it, keep going
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        return row
    s = row["ms"] / 1e3
    row["GBps"], row["TFLOPs"] = cost["bytes"] / s / 1e9, cost["flops"] / s / 1e12
    if roofline:
        t_roof = max(cost["bytes"] / (roofline["copy_GBps"] * 1e9), cost["flops"] / (roofline["matmul_TFLOPs"] * 1e12))
        row["roofline_frac"] = t_roof / s
    return row


# ============================================================================================================
# Model level
# ============================================================================================================
def sudoku_cfg(arch: str, dtype: str, batch: int, hidden: int = 512, seq_len: int = 81) -> dict:
    """The Sudoku configuration of ``arch`` (the reference's, hidden size ``hidden`` with heads of 64;
    ``seq_len`` other than 81 only for counting launches, which do not depend on it)."""
    base = dict(batch_size=batch, seq_len=seq_len, puzzle_emb_ndim=hidden, num_puzzle_identifiers=1, vocab_size=11, hidden_size=hidden,
                expansion=4, num_heads=max(1, hidden // 64), halt_max_steps=SOLVE_STEPS, halt_exploration_prob=0.1, forward_dtype=dtype)
    if arch == "hrm":
        return dict(base, H_cycles=2, L_cycles=2, H_layers=4, L_layers=4, pos_encodings="rope")
    if arch in ("trm", "srm"):
        return dict(base, H_cycles=3, L_cycles=6, H_layers=0, L_layers=2, pos_encodings="rope")
    if arch == "trm_mlp":
        return dict(base, H_cycles=3, L_cycles=6, H_layers=0, L_layers=2, pos_encodings="none", mlp_t=True)
    if arch == "flat":  # 8 layers x 3 cycles: HRM's 24 block passes per ACT step
        return dict(base, L_cycles=3, L_layers=8, pos_encodings="rope")
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


def build(arch: str, cfg: dict, backend: str):
    cls = {"hrm": HRM, "trm": TRM, "trm_mlp": TRM, "srm": SRM, "flat": FlatRecurrence}[arch]
    return cls(cfg, backend=backend)


def sudoku_batch(cfg: dict, device) -> Dict[str, torch.Tensor]:
    b, s = cfg["batch_size"], cfg["seq_len"]
    return {"inputs": torch.randint(1, cfg["vocab_size"], (b, s), device=device),
            "labels": torch.randint(1, cfg["vocab_size"], (b, s), device=device),
            "puzzle_identifiers": torch.zeros(b, dtype=torch.int32, device=device)}


def _schedule_blocks(model, steps) -> int:
    inner = model.inner
    return sum(len(getattr(inner, s.level).layers) * getattr(inner, s.level).repeat for s in steps if isinstance(s, Update))


def gemm_floor_fn(model, batch_size: int, device, blocks: Optional[int] = None, repeats: int = 1) -> Callable[[], None]:
    """A function running exactly the GEMMs of ``blocks`` block passes (default: one eval ACT step) plus the
    lm_head, ``repeats`` times (same shapes, preallocated outputs, no elementwise work).

    Each GEMM runs in the fastest layout measured for it on CPU: weights multiplied from the right stored as
    contiguous [in, out] (13-20 % faster than nn.Linear's [out, in] for few rows, equal for many), the token
    MLP as one batched matmul over the sequence axis."""
    c, inner = model.config, model.inner
    dt = inner.forward_dtype
    S, D = inner.total_len, c.hidden_size
    M = batch_size * S
    inter = swiglu_intermediate_size(D, c.expansion)
    if blocks is None:
        blocks = _schedule_blocks(model, inner.schedule.steps)
    r = lambda *shape: torch.randn(*shape, device=device, dtype=dt)  # noqa: E731
    h, w_gu_t, w_d_t, act, gu, out = r(M, D), r(D, 2 * inter), r(inter, D), r(M, inter), r(M, 2 * inter), r(M, D)
    ops: List[Callable[[], None]] = [lambda: torch.mm(h, w_gu_t, out=gu), lambda: torch.mm(act, w_d_t, out=out)]
    if getattr(c, "mlp_t", False):
        it = swiglu_intermediate_size(S, c.expansion)
        wt_gu, wt_d = r(2 * it, S), r(S, it)
        hb, gt, at, ot = r(batch_size, S, D), r(batch_size, 2 * it, D), r(batch_size, it, D), r(batch_size, S, D)
        ops += [lambda: torch.matmul(wt_gu, hb, out=gt), lambda: torch.matmul(wt_d, at, out=ot)]
    else:
        hd, H = D // c.num_heads, c.num_heads
        w_qkv_t, w_o_t, qkv = r(D, 3 * D), r(D, D), r(M, 3 * D)
        q, k, scores, o = r(batch_size * H, S, hd), r(batch_size * H, hd, S), r(batch_size * H, S, S), r(batch_size * H, S, hd)
        ops += [lambda: torch.mm(h, w_qkv_t, out=qkv), lambda: torch.mm(h, w_o_t, out=out),
                lambda: torch.bmm(q, k, out=scores), lambda: torch.bmm(scores, q, out=o)]
    lm = r(c.vocab_size, D)

    def run():
        for _ in range(repeats):
            for _ in range(blocks):
                for op in ops:
                    op()
            torch.mm(h, lm.t())

    return run


def train_floor_fn(model, batch_size: int, device) -> Callable[[], None]:
    """GEMM floor of one training step: the forward's GEMMs, two more of each GEMM of the blocks with
    gradient (input and weight gradients have the forward's FLOPs) and, for HRM-style halting, the second
    no-grad inner step that produces the Q target."""
    inner = model.inner
    fwd = _schedule_blocks(model, inner.schedule.steps)
    grad = _schedule_blocks(model, inner.schedule.grad_steps)
    extra = fwd if model.halt_on_q_continue else 0
    return gemm_floor_fn(model, batch_size, device, blocks=fwd + 2 * grad + extra)


def make_optimizer(params):
    """AdamATan2 as HRM/TRM train with (``fastrecur.train.optim``)."""
    from fastrecur.train.optim import AdamATan2

    return AdamATan2(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1), "AdamATan2"


def make_train_step(model, data, compile_mode: Optional[str] = None) -> Tuple[Callable[[], None], str]:
    """One training call: ACT step with the loss head, backward, optimizer step. The carry persists across
    calls (rows keep their ACT state, as in training). Returns (step function, optimizer name)."""
    head = ACTLossHead(model).train()
    opt, opt_name = make_optimizer([p for p in model.parameters() if p.requires_grad])
    fwd = torch.compile(head, mode=compile_mode) if compile_mode is not None else head
    state = {"carry": head.initial_carry(data)}

    def step():
        carry, loss, _, _, _ = fwd(carry=state["carry"], batch=data)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["carry"] = carry

    return step, opt_name


def make_solve(model, data, steps: int = SOLVE_STEPS, compile_mode: Optional[str] = None) -> Callable[[], Any]:
    """A ``steps``-step evaluation solve (what inference does: eval always runs halt_max_steps)."""
    model.eval()
    fwd = torch.compile(model, mode=compile_mode) if compile_mode is not None else model
    cudagraphs = compile_mode == "reduce-overhead"

    def solve():
        with torch.no_grad():
            carry = model.initial_carry(data)
            for _ in range(steps):
                if cudagraphs:
                    torch.compiler.cudagraph_mark_step_begin()
                carry, out = fwd(carry=carry, batch=data)
            return out["logits"].argmax(-1)
    return solve


MODEL_VARIANTS = ("eager", "compile", "compile_cg", "triton", "cpp", "engine", "engine_cg")
# Variants that exist for solves only (inference paths); their train rows are not emitted.
SOLVE_ONLY = {"compile_cg", "engine", "engine_cg"}


def make_engine_solve(model, data, steps: int, cuda_graphs: bool) -> Callable[[], Any]:
    """``fastrecur.core.engine.solve`` (the C++ loop over whole ACT steps, no autograd, embeddings and weight
    casts once per solve), every row running ``steps`` steps like the reference evaluation."""
    from fastrecur.core import engine

    model.eval()
    return lambda: engine.solve(model, data, halting="max_steps", max_steps=steps, backend="cpp", cuda_graphs=cuda_graphs)


def model_variant_status(variant: str, device: torch.device, kind: str, opts: argparse.Namespace) -> Tuple[bool, str]:
    if variant == "eager":
        return True, ""
    if variant == "compile":
        return (not opts.no_compile), "--no-compile"
    if variant in SOLVE_ONLY and kind != "solve":
        return False, "inference path: timed for the solve only"
    if variant.endswith("_cg") and device.type != "cuda":
        return False, "CUDA graphs need a CUDA device"
    if variant == "compile_cg":
        return (not opts.no_compile), "--no-compile"
    if variant.startswith("engine"):
        if importlib.util.find_spec("fastrecur.core.engine") is None:
            return False, "fastrecur.core.engine is not in this version"
        return cpp_usable()
    if variant == "triton":
        return triton_usable(device, opts.triton_cpu)
    if variant == "cpp":
        return cpp_usable()
    raise ValueError(variant)


def run_model_case(arch: str, kind: str, batch: int, variant: str, device: torch.device, opts: argparse.Namespace,
                   warmup: int, iters: int, grad_cycles: Optional[int] = None) -> dict:
    """Time one training step or one solve of ``arch`` at ``batch`` with ``variant``; a row of results."""
    cfg = sudoku_cfg(arch, opts.dtype, batch, opts.hidden, opts.seq_len)
    if grad_cycles is not None:
        cfg["grad_cycles"] = grad_cycles
    row = {"arch": arch, "kind": kind, "batch": batch, "variant": variant, "hidden": opts.hidden, "dtype": opts.dtype}
    if kind == "solve":
        row["solve_steps"] = opts.solve_steps
    if grad_cycles is not None:
        row["grad_cycles"] = grad_cycles
    ok, why = model_variant_status(variant, device, kind, opts)
    if not ok:
        row["skipped"] = why
        return row
    torch.manual_seed(0)
    data = sudoku_batch(cfg, device)
    try:
        backend = variant if variant in ("triton", "cpp") else "eager"  # the engine takes its backend per call
        model = build(arch, cfg, backend).to(device)
        model.check_inputs = False
        compile_mode = {"compile": "default", "compile_cg": "reduce-overhead"}.get(variant)
        if kind == "train":
            fn, row["optimizer"] = make_train_step(model, data, compile_mode)
        elif variant.startswith("engine"):
            fn = make_engine_solve(model, data, opts.solve_steps, cuda_graphs=variant == "engine_cg")
        else:
            fn = make_solve(model, data, opts.solve_steps, compile_mode=compile_mode)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        row["first_call_s"] = time.perf_counter() - t0
        row.update(measure(fn, device, max(0, warmup - 1), iters))
        mem = peak_memory(fn, device)
        if mem:
            row.update(mem)
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        return row
    row["puzzles_per_s"] = batch / (row["ms"] / 1e3)
    return row


def run_model_floor(arch: str, kind: str, batch: int, device: torch.device, opts: argparse.Namespace, warmup: int, iters: int) -> dict:
    """The GEMM floor row of (arch, kind, batch)."""
    cfg = sudoku_cfg(arch, opts.dtype, batch, opts.hidden, opts.seq_len)
    model = build(arch, cfg, "eager")
    with torch.no_grad():
        fn = train_floor_fn(model, batch, device) if kind == "train" else gemm_floor_fn(model, batch, device, repeats=opts.solve_steps)
        t = measure(fn, device, warmup, iters)
    row = {"arch": arch, "kind": kind, "batch": batch, "variant": "gemm_floor", "hidden": opts.hidden, "dtype": opts.dtype,
           **t, "puzzles_per_s": batch / (t["ms"] / 1e3)}
    if kind == "solve":
        row["solve_steps"] = opts.solve_steps
    return row


# ============================================================================================================
# Counters: launches per ACT step, bytes saved for backward
# ============================================================================================================
# ATen ops that launch no kernel: views and metadata, allocations, no-op conversions.
_NO_KERNEL = {
    "as_strided", "view", "_unsafe_view", "reshape", "_reshape_alias", "transpose", "t", "slice", "narrow", "select",
    "unsqueeze", "squeeze", "expand", "permute", "alias", "detach", "detach_", "resolve_conj", "resolve_neg", "split",
    "split_with_sizes", "chunk", "unbind", "view_as", "lift_fresh", "set_", "empty", "empty_strided", "empty_like",
    "new_empty", "new_empty_strided", "to", "contiguous", "expand_as", "unflatten", "flatten", "numpy_T", "type_as",
    "is_nonzero", "item", "_local_scalar_dense", "result_type", "_has_compatible_shallow_copy_type", "is_same_size",
    "requires_grad_", "retain_grad", "_version", "record_stream", "_reshape_copy", "movedim", "swapaxes",
}


class TritonLaunchCounter:
    """Counts Triton kernel launches of ``fastrecur.kernels`` while active, by wrapping each kernel's ``run``
    (what ``kernel[grid](...)`` calls, compiled or interpreted), innermost kernel only.

    ``execute=False`` counts without running the kernels (their outputs stay uninitialised): the number of
    launches is decided by the Python launchers, not by the kernels' data, so on a CPU the counts can be
    taken without paying for the interpreter (``TRITON_INTERPRET=1`` must still be set, for the ops' device
    check). Values computed that way are garbage; only counts and saved-tensor sizes are meaningful."""

    def __init__(self, execute: bool = True):
        self.execute = execute
        self.count = 0
        self.by_kernel: Dict[str, int] = {}
        self._patched: list = []

    def __enter__(self):
        import pkgutil

        try:
            import fastrecur.kernels as kpkg
            from triton.runtime.jit import KernelInterface
        except ImportError:
            return self
        for info in pkgutil.iter_modules(kpkg.__path__):
            mod = importlib.import_module(f"fastrecur.kernels.{info.name}")
            for attr in vars(mod).values():
                k = attr
                while isinstance(getattr(k, "fn", None), KernelInterface):
                    k = k.fn  # autotuner / heuristics wrappers: count the kernel itself once
                if not isinstance(k, KernelInterface) or "run" in vars(k):
                    continue
                self._patched.append(k)
                k.run = self._wrap(k, k.run)
        return self

    def _wrap(self, kernel, run):
        name = getattr(kernel, "__name__", None) or getattr(getattr(kernel, "fn", None), "__name__", "kernel")

        def counted(*args, **kwargs):
            if kwargs.get("warmup", False):
                return run(*args, **kwargs)
            self.count += 1
            self.by_kernel[name] = self.by_kernel.get(name, 0) + 1
            # A named range: ATen ops inside it are the launcher's own (the interpreter's copies), not kernels.
            with torch.profiler.record_function(TRITON_LAUNCH_RANGE + name):
                return run(*args, **kwargs) if self.execute else None
        return counted

    def __exit__(self, *exc):
        for k in self._patched:
            del k.run
        self._patched.clear()
        return False


class CppOpCounter:
    """Sums the C++ loop's own count of native ops (ATen calls + fused kernels) over every
    ``run_steps_cpp`` call while active, read from ``workspace_info()`` right after each call."""

    def __init__(self):
        self.ops = 0
        self.calls = 0

    def __enter__(self):
        from fastrecur.core import cpp_runner

        self._mod, self._orig = cpp_runner, cpp_runner.run_steps_cpp

        def counted(*args, **kwargs):
            from fastrecur import _ext

            out = self._orig(*args, **kwargs)
            self.calls += 1
            self.ops += _ext.workspace_info()["last_call_ops"]
            return out
        cpp_runner.run_steps_cpp = counted  # the models import it at call time
        return self

    def __exit__(self, *exc):
        self._mod.run_steps_cpp = self._orig
        return False


def _inside(event, prefix: str) -> bool:
    p = event.cpu_parent
    while p is not None:
        if p.name.startswith(prefix):
            return True
        p = p.cpu_parent
    return False


def count_launches(fn: Callable[[], Any], device: torch.device, triton_counter: Optional[TritonLaunchCounter] = None) -> dict:
    """Kernel launches of one call of ``fn``.

    ``aten``: ATen ops that launch a kernel -- leaves of the profiler's op tree, views and allocations
    excluded -- including those issued inside fastrecur's custom ops, excluding those inside the C++ loop
    and inside a Triton launch (the interpreter's own copies). ``triton``: Triton launches.
    ``cpp_native``: the C++ loop's own count of the native ops it issued (its ATen calls and fused kernels).
    ``total`` is their sum. On CUDA, ``cuda_kernels`` is the profiler's count of device kernels.
    ``triton_counter``: an active counter to read (e.g. a non-executing one); by default one is made here."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with contextlib.ExitStack() as stack:
        tl = triton_counter or stack.enter_context(TritonLaunchCounter())
        cc = stack.enter_context(CppOpCounter())
        t0, k0 = tl.count, dict(tl.by_kernel)
        with profile(activities=acts) as prof:
            fn()
            _sync(device)
    launches = tl.count - t0
    by_kernel = {k: v - k0.get(k, 0) for k, v in tl.by_kernel.items() if v != k0.get(k, 0)}
    events = prof.events()
    aten = 0
    for e in events:
        if not e.name.startswith("aten::") or e.name[6:] in _NO_KERNEL:
            continue
        if any(ch.name.startswith("aten::") for ch in e.cpu_children):
            continue  # composite: its children are counted
        if _inside(e, "fastrecur_C::run_steps") or _inside(e, TRITON_LAUNCH_RANGE):
            continue
        aten += 1
    out = {"aten": aten, "triton": launches, "cpp_native": cc.ops, "cpp_calls": cc.calls, "total": aten + launches + cc.ops,
           "triton_by_kernel": by_kernel}
    if device.type == "cuda":
        out["cuda_kernels"] = sum(1 for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA)
    return out


def saved_bytes(fn: Callable[[], Any], model: torch.nn.Module) -> dict:
    """Bytes saved for backward during one call of ``fn`` (``saved_tensors_hooks``): distinct storages that
    are not the model's parameters or buffers (the activations a training step keeps alive)."""
    own = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    seen: Dict[int, int] = {}
    count = [0, 0]

    def pack(t):
        count[0] += 1
        st = t.untyped_storage()
        if st.data_ptr() not in own:
            seen[st.data_ptr()] = st.nbytes()
        count[1] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return {"saved_bytes": sum(seen.values()), "saved_tensors": count[0], "saved_tensor_bytes": count[1]}


def counter_rows(arch: str, backend: str, device: torch.device, hidden: int, dtype: str, batch: int = 1, seq_len: int = 81,
                 execute_triton: bool = True) -> dict:
    """Launches per eval ACT step and per training step (forward + backward, no optimizer) and bytes saved
    for backward per training step, for ``arch`` on ``backend`` (eager, triton or cpp).
    ``execute_triton=False``: count Triton launches without running the kernels (see :class:`TritonLaunchCounter`)."""
    with TritonLaunchCounter(execute=execute_triton) as tl:
        row = _counter_rows(arch, backend, device, hidden, dtype, batch, seq_len, tl)
    if not execute_triton:
        row["triton_executed"] = False
    return row


def _counter_rows(arch, backend, device, hidden, dtype, batch, seq_len, tl) -> dict:
    torch.manual_seed(0)
    cfg = sudoku_cfg(arch, dtype, batch, hidden, seq_len)
    data = sudoku_batch(cfg, device)
    model = build(arch, cfg, backend).to(device)
    model.check_inputs = False
    row = {"arch": arch, "backend": backend, "hidden": hidden, "seq_len": seq_len, "batch": batch, "dtype": dtype}
    model.eval()
    with torch.no_grad():
        carry = model.initial_carry(data)
        carry, _ = model(carry=carry, batch=data)  # warm: loads the batch, builds caches

        def eval_step():
            model(carry=carry, batch=data)
        eval_step()
        row["eval_step"] = count_launches(eval_step, device, tl)
    head = ACTLossHead(model).train()
    tstate = {"carry": head.initial_carry(data)}

    def train_step():
        c, loss, _, _, _ = head(carry=tstate["carry"], batch=data)
        loss.backward()
        tstate["carry"] = c
        model.zero_grad(set_to_none=True)
    train_step()
    row["train_step"] = count_launches(train_step, device, tl)
    row.update(saved_bytes(train_step, model))
    return row


def _counters_subprocess(archs: Sequence[str], hidden: int, seq_len: int, dtype: str, timeout: float) -> List[dict]:
    """Triton launch counts on the CPU: :func:`counter_rows` for backend triton in a subprocess with
    ``TRITON_INTERPRET=1`` (the variable must be set before the kernels are defined), kernels not executed."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    code = ("import json, sys; from fastrecur.bench import counter_rows; import torch; "
            f"rows = [counter_rows(a, 'triton', torch.device('cpu'), {hidden}, {dtype!r}, 1, {seq_len}, execute_triton=False) "
            f"for a in {list(archs)!r}]; "
            "print('@@JSON@@' + json.dumps(rows))")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    for line in p.stdout.splitlines():
        if line.startswith("@@JSON@@"):
            return json.loads(line[len("@@JSON@@"):])
    tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
    raise RuntimeError(f"interpreter subprocess failed (rc {p.returncode}): {' | '.join(tail)}")


def run_counters(a: argparse.Namespace, device: torch.device) -> Tuple[List[dict], dict]:
    """The counters section: every arch x backend (eager, triton, cpp). Triton on a CPU without the
    interpreter enabled in this process runs in an interpreter subprocess at hidden 64."""
    rows: List[dict] = []
    interp_here = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    tri_ok, tri_why = triton_usable(device, requested_on_cpu=True)
    cpp_ok, cpp_why = cpp_usable()
    sub_archs = []
    dry = device.type == "cpu"  # on CPU, count launches without interpreting the kernels
    for arch in a.arch_list:
        for backend in ("eager", "triton", "cpp"):
            if backend == "triton" and device.type == "cpu" and not interp_here and _triton_version():
                sub_archs.append(arch)
                continue
            ok, why = {"eager": (True, ""), "triton": (tri_ok, tri_why), "cpp": (cpp_ok, cpp_why)}[backend]
            if not ok:
                rows.append({"arch": arch, "backend": backend, "skipped": why})
                continue
            try:
                rows.append(counter_rows(arch, backend, device, a.hidden, a.dtype, seq_len=a.seq_len,
                                         execute_triton=not (dry and backend == "triton")))
            except Exception as e:
                rows.append({"arch": arch, "backend": backend, "error": f"{type(e).__name__}: {e}"})
            r = rows[-1]
            _log(f"counters {arch:8s} {backend:7s} " + (f"{r['eval_step']['total']} launches/eval step, saved "
                 f"{r['saved_bytes'] / 2**20:.2f} MiB" if "eval_step" in r else (r.get("error") or r.get("skipped"))))
    if sub_archs:
        try:
            sub = _counters_subprocess(sub_archs, a.hidden, a.seq_len, a.dtype, timeout=600)
        except Exception as e:
            sub = [{"arch": arch, "backend": "triton", "error": f"{type(e).__name__}: {e}"} for arch in sub_archs]
        for r in sub:
            _log(f"counters {r['arch']:8s} triton  " + (f"{r['eval_step']['total']} launches/eval step (counted at the "
                 "launchers, kernels not run)" if "eval_step" in r else r.get("error", "")))
        rows += sub
    order = {arch: i for i, arch in enumerate(a.arch_list)}
    rows.sort(key=lambda r: (order[r["arch"]], ("eager", "triton", "cpp").index(r["backend"])))
    return rows, {"hidden": a.hidden, "seq_len": a.seq_len, "batch": 1, "dtype": a.dtype, "triton_executed": not dry}



def run_grad_cycles(a: argparse.Namespace, device: torch.device) -> List[dict]:
    """TRM and SRM trained with grad_cycles = 1..H_cycles at the first batch size: saved-for-backward bytes
    (``saved_tensors_hooks``), training step time and peak memory (CUDA)."""
    rows = []
    b = a.batch_list[0]
    variants = ["eager"] + (["triton"] if triton_usable(device, a.triton_cpu)[0] else [])
    for arch in [x for x in ("trm", "srm") if x in a.arch_list]:
        for gc in range(1, sudoku_cfg(arch, a.dtype, b)["H_cycles"] + 1):
            for variant in variants:
                row = run_model_case(arch, "train", b, variant, device, a, a.warmup, a.iters, grad_cycles=gc)
                if "error" not in row:
                    try:
                        cfg = dict(sudoku_cfg(arch, a.dtype, b, a.hidden, a.seq_len), grad_cycles=gc)
                        model = build(arch, cfg, variant).to(device)
                        model.check_inputs = False
                        data = sudoku_batch(cfg, device)
                        head = ACTLossHead(model).train()
                        carry = head.initial_carry(data)
                        row.update(saved_bytes(lambda: head(carry=carry, batch=data)[1].backward(), model))
                    except Exception as e:
                        row["error"] = f"{type(e).__name__}: {e}"
                rows.append(row)
                _log(f"grad_cycles {arch} {gc} {variant}: saved {_fmt(_mib(row.get('saved_bytes')))} MiB, {_fmt(row.get('ms'), '.1f')} ms")
    return rows



# ============================================================================================================
# Markdown, plot, readout
# ============================================================================================================
def _fmt(v, spec=".2f", none="n/a"):
    return none if v is None else format(v, spec)


def _mib(v):
    return None if v is None else v / 2**20


def meta_line(meta: dict) -> str:
    return (f"Device: {meta['device']}; torch {meta['torch']}; triton {meta.get('triton') or 'not installed'}; "
            f"threads {meta['threads']}; date {meta['date']}" + ("; --quick" if meta.get("quick") else "")
            + (f"; 1-min load average {meta['loadavg_start']} at start, {meta.get('loadavg_end')} at end on "
               f"{meta.get('cpu_count')} CPUs" if meta.get("device_type") == "cpu" and meta.get("loadavg_start") is not None else "")
            + ".")


def _speedups(rows: List[dict], key: Tuple[str, ...], base: str = "eager") -> Dict[tuple, float]:
    """(case key..., variant) -> eager ms / variant ms."""
    eager = {tuple(r[k] for k in key): r["ms"] for r in rows if r.get("variant") == base and r.get("ms")}
    out = {}
    for r in rows:
        k = tuple(r[k] for k in key)
        if r.get("ms") and k in eager:
            out[k + (r["variant"],)] = eager[k] / r["ms"]
    return out


def _status(r: dict) -> Optional[str]:
    if "skipped" in r:
        return "skipped"
    if "error" in r:
        return "error"
    return None


def kernel_table(rows: List[dict]) -> List[str]:
    sp = _speedups(rows, ("op", "shape", "mode"))
    lines = ["| op | shape (B, S, D) | mode | variant | ms | GB/s | TFLOP/s | % roofline | peak MiB | speed-up vs eager |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        d = r["dims"]
        shape = f"{r['shape']} ({d['B']}, {d['S']}, {d['D']})"
        st = _status(r)
        if st:
            lines.append(f"| {r['op']} | {shape} | {r['mode']} | {r['variant']} | {st} | | | | | |")
            continue
        lines.append(f"| {r['op']} | {shape} | {r['mode']} | {r['variant']} | {r['ms']:.3f} | {r['GBps']:.1f} | {r['TFLOPs']:.3f} | "
                     f"{_fmt(100 * r['roofline_frac'] if r.get('roofline_frac') else None, '.1f')} | "
                     f"{_fmt(_mib(r.get('peak_bytes')), '.1f')} | {_fmt(sp.get((r['op'], r['shape'], r['mode'], r['variant'])))}x |")
    return lines


def model_table(rows: List[dict]) -> List[str]:
    floors = {(r["arch"], r["kind"], r["batch"]): r["ms"] for r in rows if r["variant"] == "gemm_floor"}
    sp = _speedups(rows, ("arch", "kind", "batch"))
    lines = ["| model | step | batch | backend | ms | puzzles/s | x GEMM floor | peak MiB | speed-up vs eager |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        kind = "train step" if r["kind"] == "train" else f"{r.get('solve_steps', SOLVE_STEPS)}-step solve"
        head = f"| {ARCH_LABELS.get(r['arch'], r['arch'])} | {kind} | {r['batch']} | {r['variant']} |"
        st = _status(r)
        if st:
            lines.append(f"{head} {st} | | | | |")
            continue
        floor = floors.get((r["arch"], r["kind"], r["batch"]))
        ratio = r["ms"] / floor if floor else None
        s = sp.get((r["arch"], r["kind"], r["batch"], r["variant"]))
        lines.append(f"{head} {r['ms']:.1f} | {r['puzzles_per_s']:.2f} | {_fmt(ratio)} | {_fmt(_mib(r.get('peak_bytes')), '.1f')} | "
                     f"{'' if r['variant'] == 'gemm_floor' else _fmt(s) + 'x'} |")
    return lines


def counter_table(rows: List[dict]) -> List[str]:
    lines = ["| model | backend | launches / eval ACT step (ATen + Triton + C++ native) | launches / train step (fwd+bwd) | "
             "CUDA kernels / eval step | saved for backward / train step (MiB) | tensors saved |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        head = f"| {ARCH_LABELS.get(r['arch'], r['arch'])} | {r['backend']} |"
        if "error" in r or "skipped" in r:
            lines.append(f"{head} {r.get('error') or r.get('skipped')} | | | | |")
            continue
        e, t = r["eval_step"], r["train_step"]
        lines.append(f"{head} {e['total']} ({e['aten']} + {e['triton']} + {e['cpp_native']}) | "
                     f"{t['total']} ({t['aten']} + {t['triton']} + {t['cpp_native']}) | {e.get('cuda_kernels', 'n/a')} | "
                     f"{r['saved_bytes'] / 2**20:.2f} | {r['saved_tensors']} |")
    return lines


def grad_cycles_table(rows: List[dict]) -> List[str]:
    lines = ["| model | grad_cycles | backend | saved for backward (MiB) | train step ms | peak MiB |", "|---|---:|---|---:|---:|---:|"]
    for r in rows:
        head = f"| {ARCH_LABELS.get(r['arch'], r['arch'])} | {r['grad_cycles']} | {r['variant']} |"
        if "error" in r or "skipped" in r:
            lines.append(f"{head} {r.get('error') or r.get('skipped')} | | |")
            continue
        lines.append(f"{head} {_fmt(_mib(r.get('saved_bytes')))} | {_fmt(r.get('ms'), '.1f')} | {_fmt(_mib(r.get('peak_bytes')), '.1f')} |")
    return lines


def _notes(results: dict) -> List[str]:
    """Why some cells are empty: one line per distinct skip reason or error."""
    seen = {}
    for section in ("kernels", "models", "grad_cycles", "counters"):
        for r in results.get(section, []):
            for k in ("skipped", "error"):
                if r.get(k):
                    label = r.get("variant") or r.get("backend")
                    seen.setdefault(f"{k} ({label}): {r[k]}", None)
    return [f"- {s}" for s in seen]


def markdown(results: dict, heading: str = "#") -> str:
    """The whole report as markdown (``heading`` = the level of its title)."""
    meta = results["meta"]
    h2 = heading + "#"
    out = [f"{heading} fastrecur benchmark", "", meta_line(meta), ""]
    if results.get("roofline"):
        rf = results["roofline"]
        out += [f"Roofline measured in this run: {rf['copy_GBps']:.1f} GB/s copy, {rf['matmul_TFLOPs']:.3f} TFLOP/s "
                f"{rf['dtype']} matmul ({rf['how']}).", ""]
    if results.get("kernels"):
        out += [f"{h2} Kernels", "", "Median ms per call; GB/s and TFLOP/s from the bytes and FLOPs the fused op must move "
                "(the same for every variant); % roofline = max(bytes/copy bandwidth, FLOPs/matmul rate) / time.", ""]
        out += kernel_table(results["kernels"]) + [""]
    if results.get("models"):
        cfg = results.get("model_config", {})
        out += [f"{h2} Models", "", f"Sudoku configurations (puzzle length {cfg.get('seq_len')}), hidden size {cfg.get('hidden')}, {cfg.get('dtype')}; "
                f"median ms per training step (ACT step + backward + {cfg.get('optimizer', 'optimizer')} step) or per "
                f"{cfg.get('solve_steps', SOLVE_STEPS)}-step solve; x GEMM floor = time / the same step's GEMMs alone.", ""]
        out += model_table(results["models"]) + [""]
    if results.get("counters"):
        cc = results.get("counter_config", {})
        out += [f"{h2} Launches and saved memory (device independent)", "",
                f"One ACT step at batch 1, hidden {cc.get('hidden')}, {cc.get('dtype')}. ATen: kernel-launching ATen ops "
                "(profiler leaves, views and allocations excluded); Triton: launches counted at the launchers"
                + ("" if cc.get("triton_executed", True) else " (on the CPU without running the kernels: the launchers decide "
                   "the count, not the data)") + "; C++ native: the extension's own count of the ops its loop issued. "
                "torch.compile is not counted on the CPU (Inductor's C++ kernels are invisible to the profiler).", ""]
        out += counter_table(results["counters"]) + [""]
    if results.get("grad_cycles"):
        out += [f"{h2} Backpropagating through more cycles (grad_cycles)", ""]
        out += grad_cycles_table(results["grad_cycles"]) + [""]
    notes = _notes(results)
    if notes:
        out += [f"{h2} Notes", ""] + notes + [""]
    return "\n".join(out)


def plot(results: dict, path: str) -> Optional[str]:
    """Speed-up over eager per case and backend (horizontal bars); returns the path, or None (with a
    message) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib is not installed (pip install matplotlib)", flush=True)
        return None
    panels = [("kernels: speed-up over the eager sequence", _speedups(results.get("kernels", []), ("op", "shape", "mode"))),
              ("models: speed-up over eager", _speedups([r for r in results.get("models", []) if r["variant"] != "gemm_floor"],
                                                        ("arch", "kind", "batch")))]
    panels = [(t, sp) for t, sp in panels if any(k[-1] != "eager" for k in sp)]
    if not panels:
        print("plot skipped: no case has a variant besides eager", flush=True)
        return None
    rows = max(len({k[:-1] for k in sp}) for _, sp in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 0.3 * rows + 2.5), squeeze=False)
    for ax, (title, sp) in zip(axes[0], panels):
        cases = sorted({k[:-1] for k in sp}, key=str)
        variants = sorted({k[-1] for k in sp if k[-1] != "eager"})
        hgt = 0.8 / len(variants)
        for j, v in enumerate(variants):
            ax.barh([i + j * hgt for i in range(len(cases))], [sp.get(c + (v,), 0) for c in cases], height=hgt, label=v)
        ax.set_yticks([i + 0.4 - hgt / 2 for i in range(len(cases))])
        ax.set_yticklabels([" ".join(str(x) for x in c) for c in cases], fontsize=7)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("speed-up (eager time / time; > 1 is faster)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(meta_line(results["meta"]), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def readout(path: str) -> str:
    """The README "Results" section from a results JSON (only what it measured)."""
    with open(path) as f:
        results = json.load(f)
    body = markdown(results, heading="###")
    src = os.path.relpath(path) if not os.path.isabs(path) else path
    return ("## Results\n\n" f"Generated by `python -m fastrecur.bench --readout {src}` from a `fastrecur bench"
            f"{' --quick' if results['meta'].get('quick') else ''}` run; every number below was measured in that run.\n\n"
            + body.split("\n", 2)[2])


# ============================================================================================================
# CLI
# ============================================================================================================
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="smaller batches/model and fewer iterations (CPU: < 15 min)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", default="bench-out", help="results go to OUT/<device>-<date>/")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile on CPU)")
    p.add_argument("--sections", default="kernels,models,counters,grad_cycles",
                   help="comma-separated subset of kernels,models,counters,grad_cycles")
    p.add_argument("--archs", default=",".join(ARCHS), help=f"comma-separated subset of {','.join(ARCHS)}")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default: 1,64,768; --quick: 1,8)")
    p.add_argument("--hidden", type=int, default=None, help="hidden size of the models (default 512; --quick on CPU: 128)")
    p.add_argument("--seq-len", type=int, default=81, help="puzzle length of the models (81 = Sudoku; smaller for tests)")
    p.add_argument("--solve-steps", type=int, default=SOLVE_STEPS, help="ACT steps per solve (16 = halt_max_steps)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--kernel-scale", default=None, choices=["full", "quick", "tiny"],
                   help="kernel shapes: full (B=768), quick (B=8; Maze B=1), tiny (tests). Default: quick with --quick")
    p.add_argument("--ops", default=",".join(KERNEL_OPS), help="comma-separated subset of the fused ops")
    p.add_argument("--triton-cpu", action="store_true", default=os.environ.get(TRITON_CPU_ENV, "0") not in ("", "0"),
                   help=f"time Triton on CPU through the interpreter (needs TRITON_INTERPRET=1; env {TRITON_CPU_ENV}=1)")
    p.add_argument("--compile-models", default=None,
                   help="archs whose models are timed with torch.compile at every batch size (default: all; with --quick "
                        "only the first batch size, and on CPU only trm_mlp -- compiling a whole ACT step takes minutes on 2 cores)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default; recorded)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--readout", metavar="RESULTS_JSON", default=None,
                   help="print the README 'Results' section from RESULTS_JSON and exit")


def _csv(s: Optional[str]) -> List[str]:
    return [x for x in (s or "").split(",") if x]


def _resolve(a: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    """Fill the defaults that depend on --quick and the device."""
    small = a.quick and device.type == "cpu"
    a.hidden = a.hidden or (128 if small else 512)
    a.batch_list = [int(b) for b in _csv(a.batches)] or ([1, 8] if small else [1, 8] if a.quick else [1, 64, 768])
    a.kernel_scale = a.kernel_scale or ("quick" if a.quick else "full")
    if a.warmup is None:
        a.warmup = 1 if small else (2 if a.quick else 3)
    if a.iters is None:
        a.iters = 3 if small else (5 if a.quick else 15)
    a.arch_list = _csv(a.archs)
    bad = sorted(set(a.arch_list) - set(ARCHS))
    if bad:
        raise SystemExit(f"--archs: unknown {bad}; choose from {list(ARCHS)}")
    a.section_list = _csv(a.sections)
    a.compile_archs = set(_csv(a.compile_models)) if a.compile_models is not None else ({"trm_mlp"} if small else set(ARCHS))
    a.compile_first_batch_only = a.quick and a.compile_models is None
    a.solve_iters = 1 if small else a.iters  # a solve is 16 ACT steps; its first call is the warm-up
    return a


def _log(msg: str) -> None:
    print(msg, flush=True)


def run(a: argparse.Namespace) -> int:
    if getattr(a, "readout", None):
        print(readout(a.readout))
        return 0
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    a = _resolve(a, device)
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    t_start = time.perf_counter()
    meta = environment(device, a.quick)
    results: Dict[str, Any] = {"meta": meta, "args": {k: v for k, v in vars(a).items() if isinstance(v, (str, int, float, bool, list, type(None)))}}
    out = os.path.join(a.out, f"{a.device}-{meta['date']}")
    os.makedirs(out, exist_ok=True)
    _log(meta_line(meta))

    if "kernels" in a.section_list:
        results["roofline"] = measure_roofline(device, dtype, a.quick)
        _log(f"roofline: {results['roofline']['copy_GBps']:.1f} GB/s, {results['roofline']['matmul_TFLOPs']:.3f} TFLOP/s")
        tri_ok, tri_why = triton_usable(device, a.triton_cpu)
        rows = []
        for case in kernel_cases(a.kernel_scale, _csv(a.ops)):
            for mode in ("fwd", "fwd+bwd"):
                for variant in ("eager", "compile", "triton"):
                    if variant == "compile" and a.no_compile:
                        row = {"op": case.op, "shape": case.shape, "dims": case.dims, "variant": variant, "mode": mode, "skipped": "--no-compile"}
                    elif variant == "triton" and not tri_ok:
                        row = {"op": case.op, "shape": case.shape, "dims": case.dims, "variant": variant, "mode": mode, "skipped": tri_why}
                    else:
                        row = run_kernel_case(case, variant, mode, device, dtype, a.warmup, a.iters, results["roofline"])
                    rows.append(row)
                    _log(f"kernel {case.name:38s} {mode:8s} {variant:8s} " + (
                        f"{row['ms']:.3f} ms" if "ms" in row else (row.get("error") or "skipped")))
        results["kernels"] = rows

    if "models" in a.section_list:
        rows = []
        results["model_config"] = {"hidden": a.hidden, "seq_len": a.seq_len, "solve_steps": a.solve_steps, "dtype": a.dtype, "batches": a.batch_list, "optimizer": make_optimizer([torch.zeros(1, requires_grad=True)])[1]}
        for arch in a.arch_list:
            for kind in ("train", "solve"):
                for b in a.batch_list:
                    for variant in MODEL_VARIANTS:
                        if (variant.startswith("compile") and not a.no_compile
                                and (arch not in a.compile_archs or (a.compile_first_batch_only and b != a.batch_list[0]))):
                            row = {"arch": arch, "kind": kind, "batch": b, "variant": variant,
                                   "skipped": "whole-model torch.compile not run for this case in --quick (minutes per compile "
                                              "on a small CPU; see --compile-models)"}
                        else:
                            row = run_model_case(arch, kind, b, variant, device, a, a.warmup,
                                                 a.solve_iters if kind == "solve" else a.iters)
                        if "skipped" in row and ((variant in SOLVE_ONLY and kind != "solve")
                                                 or (variant.endswith("_cg") and device.type != "cuda")):
                            continue  # rows that cannot exist here: not emitted at all
                        rows.append(row)
                        _log(f"model {arch:8s} {kind:6s} b={b:<4d} {variant:10s} " + (
                            f"{row['ms']:.1f} ms" if "ms" in row else (row.get("error") or "skipped: " + row["skipped"])))
                    rows.append(run_model_floor(arch, kind, b, device, a, a.warmup, a.iters))
        results["models"] = rows

    if "counters" in a.section_list:
        results["counters"], results["counter_config"] = run_counters(a, device)

    if "grad_cycles" in a.section_list:
        results["grad_cycles"] = run_grad_cycles(a, device)

    meta["runtime_s"] = time.perf_counter() - t_start
    meta["loadavg_end"] = _loadavg()
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    md = markdown(results)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    png = plot(results, os.path.join(out, "speedup.png"))
    print(md)
    _log(f"written to {out}/ (results.json, results.md{', speedup.png' if png else ''}) in {meta['runtime_s']:.0f} s")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastrecur.bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
