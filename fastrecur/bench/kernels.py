"""Kernel level: every fused op against its eager sequence and torch.compile of it."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch

from fastrecur.nn.blocks import swiglu_intermediate_size

from .common import EPS, KERNEL_OPS, _sync, measure_kernel, peak_memory

# Benchmark shapes: B, S (positions incl. puzzle prefix), D, heads, label positions, vocab, whether TRM-MLP
# (token mixing) runs at that shape (the MLP variant is a Sudoku configuration).
KERNEL_SHAPES = {
    "TRM-Sudoku": dict(B=768, S=97, D=512, H=8, L=81, V=11, mixer=True),
    "HRM-Sudoku": dict(B=768, S=82, D=512, H=8, L=81, V=11, mixer=False),
    "TRM-Maze": dict(B=768, S=916, D=512, H=8, L=900, V=6, mixer=False),
}
# Batch per shape at each scale; "tiny" also shrinks S and D (tests only).
_KERNEL_BATCH = {
    "full": {"TRM-Sudoku": 768, "HRM-Sudoku": 768, "TRM-Maze": 768},
    "quick": {"TRM-Sudoku": 8, "HRM-Sudoku": 8, "TRM-Maze": 1},
}


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
                lambda x, r: fused("add_rms_norm")(x, r, EPS),
            ),
            "swiglu_mlp_block": (
                lambda dev, dt: (
                    [
                        randn(B, S, D, device=dev, dtype=dt),
                        randn(2 * I, D, device=dev, dtype=dt, std=D**-0.5),
                        randn(D, I, device=dev, dtype=dt, std=I**-0.5),
                    ],
                    [0, 1, 2],
                ),
                lambda h, wgu, wd: R.swiglu_mlp_block(h, wgu, wd, EPS),
                lambda h, wgu, wd: fused("swiglu_mlp_block")(h, wgu, wd, EPS),
            ),
            "token_mix_block": (
                lambda dev, dt: (
                    [
                        randn(B, S, D, device=dev, dtype=dt),
                        randn(2 * It, S, device=dev, dtype=dt, std=S**-0.5),
                        randn(S, It, device=dev, dtype=dt, std=It**-0.5),
                    ],
                    [0, 1, 2],
                ),
                lambda h, wgu, wd: R.token_mix_block(h, wgu, wd, EPS),
                lambda h, wgu, wd: fused("token_mix_block")(h, wgu, wd, EPS),
            ),
            "rotary_attention": (
                lambda dev, dt: ([randn(B, S, 3 * D, device=dev, dtype=dt), *_rope_tables(S, hd, dev)], [0]),
                lambda qkv, cos, sin: R.rotary_attention(qkv, cos, sin, H),
                lambda qkv, cos, sin: fused("rotary_attention")(qkv, cos, sin, H),
            ),
            "stablemax_cross_entropy": (
                lambda dev, dt: (
                    [randn(B, L, V, device=dev, dtype=dt, std=3.0), torch.randint(0, V, (B, L), device=dev)],
                    [0],
                ),
                lambda logits, labels: R.stablemax_cross_entropy(logits, labels),
                lambda logits, labels: fused("stablemax_cross_entropy")(logits, labels),
            ),
        }
        for op in ops:
            if op == "token_mix_block" and not d["mixer"]:
                continue
            make, eager, fz = makers[op]
            cases.append(KernelCase(op, shape, dict(d), make, eager, fz))
    return cases


def kernel_callable(
    case: KernelCase, variant: str, mode: str, device: torch.device, dtype: torch.dtype
) -> Callable[[], Any]:
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


def run_kernel_case(
    case: KernelCase,
    variant: str,
    mode: str,
    device: torch.device,
    dtype: torch.dtype,
    warmup: int,
    iters: int,
    roofline: Optional[dict] = None,
) -> dict:
    """Time one (case, variant, mode); a row of results (errors are recorded, not raised)."""
    row = {
        "op": case.op,
        "shape": case.shape,
        "dims": case.dims,
        "variant": variant,
        "mode": mode,
        "dtype": str(dtype).replace("torch.", ""),
    }
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
