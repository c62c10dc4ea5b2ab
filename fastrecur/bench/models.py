"""Model level: training steps and solves per backend, and the GEMM floor they are held to."""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from fastrecur.core.schedule import Update
from fastrecur.models import HRM, SRM, TRM, ACTLossHead, FlatRecurrence
from fastrecur.nn.blocks import swiglu_intermediate_size

from .common import ARCHS, SOLVE_STEPS, _sync, cpp_usable, measure, onednn_runs, peak_memory, triton_usable


def sudoku_cfg(arch: str, dtype: str, batch: int, hidden: int = 512, seq_len: int = 81) -> dict:
    """The Sudoku configuration of ``arch`` (the reference's, hidden size ``hidden`` with heads of 64;
    ``seq_len`` other than 81 only for counting launches, which do not depend on it)."""
    base = dict(
        batch_size=batch,
        seq_len=seq_len,
        puzzle_emb_ndim=hidden,
        num_puzzle_identifiers=1,
        vocab_size=11,
        hidden_size=hidden,
        expansion=4,
        num_heads=max(1, hidden // 64),
        halt_max_steps=SOLVE_STEPS,
        halt_exploration_prob=0.1,
        forward_dtype=dtype,
    )
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
    return {
        "inputs": torch.randint(1, cfg["vocab_size"], (b, s), device=device),
        "labels": torch.randint(1, cfg["vocab_size"], (b, s), device=device),
        "puzzle_identifiers": torch.zeros(b, dtype=torch.int32, device=device),
    }


def _schedule_blocks(model, steps) -> int:
    inner = model.inner
    return sum(
        len(getattr(inner, s.level).layers) * getattr(inner, s.level).repeat for s in steps if isinstance(s, Update)
    )


def _fastest(candidates: List[Callable[[], None]], device) -> Callable[[], None]:
    """The fastest of equivalent GEMM formulations, timed here and now (fastest call of a few, after a
    warm-up): the floor must not be flattered by a layout the backends do not have to use."""
    iters = 10 if device.type == "cuda" else 3  # a GPU GEMM of these shapes takes microseconds
    return min(candidates, key=lambda fn: measure(fn, device, warmup=1, iters=iters)["ms_min"])


def _onednn_candidates(x: torch.Tensor, w: torch.Tensor) -> List[Callable[[], None]]:
    """``x @ w.T`` through oneDNN's inner product (torch's ``mkldnn::_linear_pointwise``, as the C++ loop's
    ``gemm="onednn"`` runs it), when this is a CPU tensor and oneDNN runs the dtype here; else no candidate."""
    if x.device.type != "cpu" or not onednn_runs(x.dtype):
        return []
    linear = torch.ops.mkldnn._linear_pointwise
    return [lambda: linear(x, w, None, "none", [], "")]


def gemm_floor_fn(model, batch_size: int, device, blocks: Optional[int] = None, repeats: int = 1) -> Callable[[], None]:
    """A function running exactly the GEMMs of ``blocks`` block passes (default: one eval ACT step) plus the
    lm_head, ``repeats`` times (same shapes, preallocated outputs, no elementwise work).

    Each GEMM runs in the fastest of its equivalent formulations, timed on ``device`` when the function is
    built: a weight multiplied from the right stored as [in, out] or as nn.Linear's [out, in] (on the CPU the
    first is 13-20 % faster for few rows), and the token MLP as a batched matmul per item or as one GEMM over
    the [tokens, batch * hidden] layout (the one the C++ loop uses); on the CPU also through oneDNN's inner
    product (the C++ loop's other GEMM library; faster than MKL in fp32 on an AMD EPYC)."""
    c, inner = model.config, model.inner
    dt = inner.forward_dtype
    S, D = inner.total_len, c.hidden_size
    M = batch_size * S
    inter = swiglu_intermediate_size(D, c.expansion)
    if blocks is None:
        blocks = _schedule_blocks(model, inner.schedule.steps)
    r = lambda *shape: torch.randn(*shape, device=device, dtype=dt)  # noqa: E731

    def right(x, n_out, out):
        """x @ W for a [in, n_out] weight, in its two storage layouts."""
        w_t, w = r(x.shape[-1], n_out), r(n_out, x.shape[-1])
        mm = [lambda: torch.mm(x, w_t, out=out), lambda: torch.mm(x, w.t(), out=out)]
        return _fastest(mm + _onednn_candidates(x, w), device)

    h, act, gu, out = r(M, D), r(M, inter), r(M, 2 * inter), r(M, D)
    ops: List[Callable[[], None]] = [right(h, 2 * inter, gu), right(act, D, out)]
    if getattr(c, "mlp_t", False):
        it = swiglu_intermediate_size(S, c.expansion)
        wt_gu, wt_d = r(2 * it, S), r(S, it)
        hb, gt, at, ot = r(batch_size, S, D), r(batch_size, 2 * it, D), r(batch_size, it, D), r(batch_size, S, D)
        hT, gT, aT, oT = r(S, batch_size * D), r(2 * it, batch_size * D), r(it, batch_size * D), r(S, batch_size * D)
        ops += [
            _fastest(
                [lambda: torch.matmul(wt_gu, hb, out=gt), lambda: torch.mm(wt_gu, hT, out=gT)]
                + _onednn_candidates(wt_gu, hT.t()),
                device,
            ),
            _fastest(
                [lambda: torch.matmul(wt_d, at, out=ot), lambda: torch.mm(wt_d, aT, out=oT)]
                + _onednn_candidates(wt_d, aT.t()),
                device,
            ),
        ]
    else:
        hd, H = D // c.num_heads, c.num_heads
        qkv = r(M, 3 * D)
        q, k, scores, o = (
            r(batch_size * H, S, hd),
            r(batch_size * H, hd, S),
            r(batch_size * H, S, S),
            r(batch_size * H, S, hd),
        )
        ops += [
            right(h, 3 * D, qkv),
            right(h, D, out),
            lambda: torch.bmm(q, k, out=scores),
            lambda: torch.bmm(scores, q, out=o),
        ]
    logits = r(M, c.vocab_size)
    ops_lm = right(h, c.vocab_size, logits)

    def run():
        for _ in range(repeats):
            for _ in range(blocks):
                for op in ops:
                    op()
            ops_lm()

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

    def model_loop():
        with torch.no_grad():
            carry = model.initial_carry(data)
            for _ in range(steps):
                if cudagraphs:
                    torch.compiler.cudagraph_mark_step_begin()
                carry, out = fwd(carry=carry, batch=data)
            return out["logits"].argmax(-1)

    return model_loop


MODEL_VARIANTS = ("eager", "compile", "compile_cg", "triton", "cpp", "engine", "engine_cg")
# Variants that exist for solves only (inference paths); their train rows are not emitted.
SOLVE_ONLY = {"compile_cg", "engine", "engine_cg"}


def make_engine_solve(model, data, steps: int, cuda_graphs: bool) -> Callable[[], Any]:
    """``fastrecur.engine.solve`` (the C++ loop over whole ACT steps, no autograd, embeddings and weight
    casts once per solve), every row running ``steps`` steps like the reference evaluation."""
    from fastrecur import engine

    model.eval()
    return lambda: engine.solve(
        model, data, halting="max_steps", max_steps=steps, backend="cpp", cuda_graphs=cuda_graphs
    )


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
        return cpp_usable()
    if variant == "triton":
        return triton_usable(device, opts.triton_cpu)
    if variant == "cpp":
        return cpp_usable()
    raise ValueError(variant)


def run_model_case(
    arch: str,
    kind: str,
    batch: int,
    variant: str,
    device: torch.device,
    opts: argparse.Namespace,
    warmup: int,
    iters: int,
    grad_cycles: Optional[int] = None,
) -> dict:
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


def run_model_floor(
    arch: str, kind: str, batch: int, device: torch.device, opts: argparse.Namespace, warmup: int, iters: int
) -> dict:
    """The GEMM floor row of (arch, kind, batch)."""
    cfg = sudoku_cfg(arch, opts.dtype, batch, opts.hidden, opts.seq_len)
    model = build(arch, cfg, "eager")
    with torch.no_grad():
        fn = (
            train_floor_fn(model, batch, device)
            if kind == "train"
            else gemm_floor_fn(model, batch, device, repeats=opts.solve_steps)
        )
        t = measure(fn, device, warmup, iters)
    row = {
        "arch": arch,
        "kind": kind,
        "batch": batch,
        "variant": "gemm_floor",
        "hidden": opts.hidden,
        "dtype": opts.dtype,
        **t,
        "puzzles_per_s": batch / (t["ms"] / 1e3),
    }
    if kind == "solve":
        row["solve_steps"] = opts.solve_steps
    return row
