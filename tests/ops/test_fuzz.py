"""Fuzzing of every fused op (``fastrecur.ops``) through the Triton interpreter: random shapes, strides
(non-contiguous inputs), dtypes (fp32, bf16, fp16) and activation scales (down to 1e-3), forward and the gradient
of every differentiable input, each against the op's eager math run in float64 (``fastrecur.ops.reference``).

Tolerance, per output and gradient: the eager computation in the same dtype (what the models' eager backend runs)
has its own error against float64, ``eager_err``; the fused op may be off by at most ``max(K * eager_err,
FLOOR[dtype] * kappa)`` (the measured worst cases: ``benchmarks/results/fuzz-2026-11-29``); see ``K`` and
``FLOOR`` below for the reasons of each constant. ``kappa`` (>= 1; :func:`_norm_conditioning`) is how much the
case's own arithmetic amplifies roundoff -- cancellation in the residual sum before a norm, and in the norm's
backward -- for the ops that end in a norm: eager's error alone is no yardstick there, as eager can be lucky on a
row of two values (seen: 7x less error than the fused op at 22 eps of fp32, with kappa 24). A norm over one
element is the extreme (its exact gradient is suppressed by eps: kappa ~ 1e5, only the forward is really held).
Vocabularies of one class are not drawn: stablemax's gradient is then exactly zero.

- default run: ``SAMPLE_CASES`` cases per op (seconds);
- ``pytest -m fuzz tests/ops/test_fuzz.py``: ``FASTRECUR_FUZZ_CASES`` (default 1000) cases per op; the worst
  error of each (op, dtype, output) is printed and, with ``FASTRECUR_FUZZ_JSON=path``, written as JSON. A failing
  case is named by its op and index: ``case(op, index)`` rebuilds it (the seed is derived from both).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Tuple

import pytest
import torch

from fastrecur.ops import add_rms_norm, rotary_attention, stablemax_cross_entropy, swiglu_mlp_block, token_mix_block
from fastrecur.ops import reference as R
from fastrecur.ops.rotary_attention import SUPPORTED_HEAD_DIMS

from .helpers import rel_err

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
IGNORE = R.IGNORE_LABEL_ID
SAMPLE_CASES = 10  # per op in the default run
# Bound: max(K * eager's error, FLOOR), per dtype of the compared tensor. K: the fused kernels round at other points
# than eager and sum in another order (measured: up to ~3x eager's error where eager's is not tiny). FLOOR, for cases
# where eager happens to be nearly exact: 8 units of roundoff (eps) in fp32, where reductions over ~100 terms in
# another order move ~10 eps; 4 eps in fp16/bf16; stablemax's loss is float64 whatever the logits' dtype (1e-12, as
# its own test). Conversions to bf16 round to nearest even, as on a GPU (see _round_to_nearest_bf16).
K = {torch.float32: 4.0, torch.float16: 4.0, torch.bfloat16: 4.0, torch.float64: 4.0}
FLOOR = {torch.float32: 8 * 2.0**-23, torch.float16: 4 * 2.0**-10, torch.bfloat16: 4 * 2.0**-7, torch.float64: 1e-12}


@dataclass
class Case:
    """One fuzz case: the differentiable inputs (in ``dtype``, any strides) and everything else."""

    op: str
    index: int
    dtype: torch.dtype
    inputs: Dict[str, torch.Tensor]
    fixed: Dict[str, Any] = field(default_factory=dict)
    desc: str = ""


@pytest.fixture(autouse=True)
def _round_to_nearest_bf16(monkeypatch):
    """The Triton interpreter converts fp32 -> bf16 by truncation (``cast_impl``; triton 3.8), where GPUs round to
    nearest even. A truncation error has one sign, so it adds up over a reduction: token_mix_block in bf16 (case
    19) is 11x eager's error with truncation and exactly eager's with rounding. Here the conversion rounds, so the
    bf16 cases measure the kernels, not the interpreter (fp16 conversions already round: numpy's ``astype``)."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    truncating = builder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            rounded = torch.from_numpy(np.ascontiguousarray(src.data)).to(torch.bfloat16)
            return interpreter.TensorHandle(rounded.view(torch.int16).numpy().view(np.uint16), dst_type.scalar)
        return truncating(self, src, dst_type)

    monkeypatch.setattr(builder, "cast_impl", cast_impl)


def test_bf16_conversion_rounds_to_nearest():
    """The fixture above is in force: a kernel's fp32 -> bf16 cast gives torch's round-to-nearest-even result for
    values just above the midpoint between two bf16 numbers (truncation would give the lower one)."""
    import triton
    import triton.language as tl

    @triton.jit
    def to_bf16(x_ptr, y_ptr, n: tl.constexpr):
        offs = tl.arange(0, n)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs).to(tl.bfloat16))

    x = torch.tensor([1.0 + 2**-8 + 2**-12, -(3.0 + 2**-7 + 2**-11), 1.0 + 2**-9, 0.1], dtype=torch.float32)
    y = torch.empty(4, dtype=torch.bfloat16)
    to_bf16[(1,)](x, y, 4)
    assert torch.equal(y, x.to(torch.bfloat16)) and y[0] > 1.0 + 2**-8


# ----------------------------------------------------------------------------------------------------------
# Random inputs
# ----------------------------------------------------------------------------------------------------------
def _tensor(
    rng: random.Random,
    gen: torch.Generator,
    shape: Tuple[int, ...],
    dtype: torch.dtype,
    scale: float,
    *,
    last_contiguous: bool = False,
) -> Tuple[torch.Tensor, str]:
    """A random tensor of ``shape`` with a random layout: contiguous, a strided slice of a larger tensor, or a
    permuted view (the last dim kept contiguous when asked). Returns it and a word for the layout."""
    layout = rng.choice(
        ["contiguous", "sliced", "permuted"] if len(shape) > 1 or not last_contiguous else ["contiguous", "sliced"]
    )
    if layout == "sliced":
        steps = [rng.choice([1, 2, 3]) for _ in shape]
        if last_contiguous:
            steps[-1] = 1
        big = torch.randn(
            [s * st + rng.choice([0, 1]) for s, st in zip(shape, steps)], generator=gen, dtype=torch.float64
        )
        t = (big * scale).to(dtype)[tuple(slice(0, s * st, st) for s, st in zip(shape, steps))]
    elif layout == "permuted":
        dims = list(range(len(shape)))
        order = dims[:-1] if last_contiguous else dims[:]
        rng.shuffle(order)
        perm = order + ([dims[-1]] if last_contiguous else [])
        base = torch.randn([shape[d] for d in perm], generator=gen, dtype=torch.float64)
        t = (base * scale).to(dtype).permute([perm.index(d) for d in dims])
    else:
        t = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    assert tuple(t.shape) == tuple(shape)
    return t, layout


def _scale(rng: random.Random) -> float:
    """Activation scale, log-uniform in [1e-3, 10]: small activations are where the norms' eps matters."""
    return 10 ** rng.uniform(-3, 1)


def _gen_add_rms_norm(rng, gen, dtype):
    lead = tuple(rng.randint(1, 5) for _ in range(rng.randint(1, 3)))
    d = rng.choice([1, 2, 3, 7, 16, 33, 64, 100, 128, 257])
    s = _scale(rng)
    x, lx = _tensor(rng, gen, lead + (d,), dtype, s)
    r, lr = _tensor(rng, gen, lead + (d,), dtype, s)
    inputs = {"x": x, "residual": r}
    if rng.random() < 0.5:
        inputs["weight"] = _tensor(rng, gen, (d,), dtype, 1.0)[0]
    eps = rng.choice([1e-5, 1e-6, 1e-2])
    desc = f"x {list(x.shape)} {lx}, residual {lr}, weight {'weight' in inputs}, eps {eps:g}, scale {s:.2g}"
    return inputs, {"eps": eps}, desc


def _gen_swiglu(rng, gen, dtype):
    lead = tuple(rng.randint(1, 6) for _ in range(rng.randint(1, 2)))
    d, i = rng.choice([1, 2, 4, 8, 24, 32, 48, 64]), rng.choice([1, 3, 16, 40, 64, 96])
    s = _scale(rng)
    h, lh = _tensor(rng, gen, lead + (d,), dtype, s)
    wgu, lg = _tensor(rng, gen, (2 * i, d), dtype, d**-0.5)
    wd, ld = _tensor(rng, gen, (d, i), dtype, i**-0.5)
    eps = rng.choice([1e-5, 1e-2])
    return (
        {"h": h, "w_gate_up": wgu, "w_down": wd},
        {"eps": eps},
        f"h {list(h.shape)} {lh}, I {i}, weights {lg}/{ld}, eps {eps:g}, scale {s:.2g}",
    )


def _gen_token_mix(rng, gen, dtype):
    b, tokens, d = rng.randint(1, 3), rng.choice([1, 2, 5, 16, 17, 33]), rng.choice([1, 4, 8, 13, 32])
    i = rng.choice([1, 8, 24, 64])
    s = _scale(rng)
    h, lh = _tensor(rng, gen, (b, tokens, d), dtype, s)
    wgu, lg = _tensor(rng, gen, (2 * i, tokens), dtype, tokens**-0.5)
    wd, ld = _tensor(rng, gen, (tokens, i), dtype, i**-0.5)
    eps = rng.choice([1e-5, 1e-2])
    return (
        {"h": h, "w_gate_up_t": wgu, "w_down_t": wd},
        {"eps": eps},
        f"h {list(h.shape)} {lh}, I {i}, weights {lg}/{ld}, eps {eps:g}, scale {s:.2g}",
    )


def _rope_tables(seq: int, hd: int, base: float):
    inv_freq = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    emb = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq).repeat(1, 2)
    return emb.cos(), emb.sin()


def _gen_rotary(rng, gen, dtype):
    b, s_len, heads = rng.randint(1, 2), rng.choice([1, 2, 9, 16, 33, 70]), rng.randint(1, 2)
    hd = rng.choice(SUPPORTED_HEAD_DIMS[:2])  # 16, 32: the larger ones run the same code with wider tiles
    s = 10 ** rng.uniform(-3, 0.5)  # q.k scales with s^2: beyond ~3 the softmax is one-hot
    qkv, lq = _tensor(rng, gen, (b, s_len, 3 * heads * hd), dtype, s, last_contiguous=True)
    rope = rng.random() < 0.75
    cos, sin = _rope_tables(s_len, hd, rng.choice([10000.0, 100.0])) if rope else (None, None)
    return (
        {"qkv": qkv},
        {"cos": cos, "sin": sin, "num_heads": heads},
        f"qkv {list(qkv.shape)} {lq}, heads {heads}x{hd}, rope {rope}, scale {s:.2g}",
    )


def _gen_stablemax(rng, gen, dtype):
    shape = (rng.randint(1, 3), rng.randint(1, 9)) if rng.random() < 0.7 else (rng.randint(1, 12),)
    v = rng.choice([2, 3, 6, 11, 12, 33, 100])
    s = 10 ** rng.uniform(-3, 1.5)
    logits, ll = _tensor(rng, gen, shape + (v,), dtype, s)
    labels = torch.randint(0, v, shape, generator=gen)
    labels[torch.rand(shape, generator=gen) < 0.2] = IGNORE
    return {"logits": logits}, {"labels": labels}, f"logits {list(logits.shape)} {ll}, scale {s:.2g}"


def _rope64(fixed, fp64):
    cos, sin = fixed["cos"], fixed["sin"]
    return (cos.double(), sin.double()) if fp64 and cos is not None else (cos, sin)


def _norm_conditioning(x, r, dy, eps, weight=None) -> Tuple[float, float]:
    """How much ``rms_norm(x + r) [* weight]`` (rows along the last dim, fp64 inputs, upstream gradient ``dy``)
    amplifies roundoff, for the output and for the gradients: ``(kappa_out, kappa_grad)``, both >= 1.

    kappa_out: cancellation in the sum, max over rows of ``max|x| + |r|`` over ``max|x + r|`` -- every
    implementation rounds the summands, so its error relative to the output scales with it. kappa_grad: kappa_out
    times the cancellation in the norm's backward, max over rows of ``rstd * max|dy|`` (the gradient's size before
    the projection that removes the output's direction) over ``max|ds|`` -- a backward computed from the rounded
    output (the fused ops save y) carries the output's roundoff relative to that natural size; every input gradient
    is a linear map of ds. A norm over one element is the extreme: ds is suppressed by eps, kappa_grad ~ x^2 / eps."""
    s = (x + r).detach().requires_grad_()
    (ds,) = torch.autograd.grad(R.rms_norm(s, eps, weight), s, dy)
    tiny = torch.finfo(torch.float64).tiny
    kappa_out = float(((x.abs() + r.abs()).amax(-1) / s.detach().abs().amax(-1).clamp_min(tiny)).max())
    rstd = torch.rsqrt(s.detach().square().mean(-1) + eps)
    upstream = (dy * weight).abs() if weight is not None else dy.abs()
    projection = float((rstd * upstream.amax(-1) / ds.abs().amax(-1).clamp_min(tiny)).max())  # worst row
    return max(1.0, kappa_out), max(1.0, kappa_out * projection)


def _swiglu_conditioning(h, w_gate_up, w_down, dy, eps):
    return _norm_conditioning(h, R.swiglu(h, w_gate_up, w_down), dy, eps)


# op -> (generator, fused call, reference call(inputs, fixed, fp64), conditioning(fp64 inputs, fixed, dy) or None)
OPS: Dict[str, Tuple[Callable, Callable, Callable, Any]] = {
    "add_rms_norm": (
        _gen_add_rms_norm,
        lambda t, f: add_rms_norm(t["x"], t["residual"], f["eps"], t.get("weight")),
        lambda t, f, fp64: R.add_rms_norm(t["x"], t["residual"], f["eps"], t.get("weight")),
        lambda t, f, dy: _norm_conditioning(t["x"], t["residual"], dy, f["eps"], t.get("weight")),
    ),
    "swiglu_mlp_block": (
        _gen_swiglu,
        lambda t, f: swiglu_mlp_block(t["h"], t["w_gate_up"], t["w_down"], f["eps"]),
        lambda t, f, fp64: R.swiglu_mlp_block(t["h"], t["w_gate_up"], t["w_down"], f["eps"]),
        lambda t, f, dy: _swiglu_conditioning(t["h"], t["w_gate_up"], t["w_down"], dy, f["eps"]),
    ),
    "token_mix_block": (
        _gen_token_mix,
        lambda t, f: token_mix_block(t["h"], t["w_gate_up_t"], t["w_down_t"], f["eps"]),
        lambda t, f, fp64: R.token_mix_block(t["h"], t["w_gate_up_t"], t["w_down_t"], f["eps"]),
        lambda t, f, dy: _swiglu_conditioning(
            t["h"].transpose(1, 2), t["w_gate_up_t"], t["w_down_t"], dy.transpose(1, 2), f["eps"]
        ),
    ),
    "rotary_attention": (
        _gen_rotary,
        lambda t, f: rotary_attention(t["qkv"], f["cos"], f["sin"], f["num_heads"]),
        lambda t, f, fp64: R.rotary_attention(t["qkv"], *_rope64(f, fp64), f["num_heads"]),
        None,
    ),
    "stablemax_cross_entropy": (
        _gen_stablemax,
        lambda t, f: stablemax_cross_entropy(t["logits"], f["labels"]),
        lambda t, f, fp64: R.stablemax_cross_entropy(t["logits"], f["labels"]),
        None,
    ),
}


def case(op: str, index: int) -> Case:
    """Case ``index`` of ``op``: the seed comes from both, the dtype cycles fp32, bf16, fp16."""
    seed = zlib.crc32(f"{op}:{index}".encode())
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    dtype = DTYPES[index % len(DTYPES)]
    inputs, fixed, desc = OPS[op][0](rng, gen, dtype)
    return Case(op, index, dtype, inputs, fixed, desc)


# ----------------------------------------------------------------------------------------------------------
# One case: errors of the fused op and of eager, against fp64
# ----------------------------------------------------------------------------------------------------------
def _run(call, inputs: Dict[str, torch.Tensor], dy_of: Callable[[torch.Tensor], torch.Tensor]):
    leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
    y = call(leaves)
    grads = torch.autograd.grad(y, list(leaves.values()), dy_of(y))
    return y, dict(zip(leaves, grads))


def measure(c: Case) -> Dict[str, Dict[str, float]]:
    """``{quantity: {"err", "eager_err", "kappa", "bound"}}`` for the output and each input's gradient."""
    _, fused, ref, conditioning = OPS[c.op]
    y64 = ref({k: v.detach().double() for k, v in c.inputs.items()}, c.fixed, True)
    gen = torch.Generator().manual_seed(c.index)
    dy64 = torch.randn(y64.shape, generator=gen, dtype=torch.float64)
    out_dtype = torch.float64 if c.op == "stablemax_cross_entropy" else c.dtype
    dy64 = dy64.to(out_dtype).double()  # the one upstream gradient all three runs see
    y, g = _run(lambda t: fused(t, c.fixed), c.inputs, lambda y_: dy64.to(y_.dtype))
    y_lp, g_lp = _run(lambda t: ref(t, c.fixed, False), c.inputs, lambda y_: dy64.to(y_.dtype))
    leaves64 = {k: v.detach().double().requires_grad_() for k, v in c.inputs.items()}
    y64 = ref(leaves64, c.fixed, True)
    g64 = dict(zip(leaves64, torch.autograd.grad(y64, list(leaves64.values()), dy64)))
    with torch.enable_grad():
        kappa_out, kappa_grad = (
            conditioning({k: v.detach() for k, v in leaves64.items()}, c.fixed, dy64) if conditioning else (1.0, 1.0)
        )
    assert y.shape == y64.shape and y.dtype == out_dtype, (c.op, y.shape, y.dtype)
    rows = {"out": (y, y_lp, y64)}
    for k in c.inputs:
        assert g[k].shape == c.inputs[k].shape and g[k].dtype == c.dtype, (c.op, k, g[k].shape, g[k].dtype)
        rows[f"grad_{k}"] = (g[k], g_lp[k], g64[k])
    out = {}
    for name, (a, e, r) in rows.items():
        err = rel_err(a, r) if torch.isfinite(a).all() else math.inf
        eager = rel_err(e, r)
        kappa = kappa_out if name == "out" else kappa_grad
        out[name] = {
            "err": err,
            "eager_err": eager,
            "kappa": kappa,
            "bound": max(K[a.dtype] * eager, FLOOR[a.dtype] * kappa),
        }
    return out


def run_cases(op: str, indices) -> Tuple[Dict[str, Dict[str, Any]], List[str]]:
    """Measure the cases; return per (dtype, quantity) the case nearest its bound (largest error / bound, with the
    case it came from), the largest error among the well-conditioned cases (kappa <= 2) and how many cases had
    kappa > 2; and the descriptions of the cases over their bound."""
    worst: Dict[str, Dict[str, Any]] = {}
    plain: Dict[str, Dict[str, Any]] = {}
    ill: Dict[str, int] = {}
    failures = []
    for i in indices:
        c = case(op, i)
        for q, m in measure(c).items():
            key = f"{DTYPE_NAMES[c.dtype]} {q}"
            ratio = m["err"] / m["bound"]
            if key not in worst or ratio > worst[key]["ratio"]:
                worst[key] = dict(m, ratio=ratio, case=i, desc=c.desc)
            ill[key] = ill.get(key, 0) + (m["kappa"] > 2)
            if m["kappa"] <= 2 and (key not in plain or m["err"] > plain[key]["err"]):
                plain[key] = {"err": m["err"], "eager_err": m["eager_err"], "case": i}
            if not m["err"] <= m["bound"]:
                failures.append(
                    f"case({op!r}, {i}) [{DTYPE_NAMES[c.dtype]}] {q}: error {m['err']:.3g} > bound "
                    f"{m['bound']:.3g} (eager {m['eager_err']:.3g}); {c.desc}"
                )
    for key, w in worst.items():
        w["worst_well_conditioned"], w["ill_conditioned_cases"] = plain.get(key), ill[key]
    return worst, failures


def _summary(op: str, worst: Dict[str, Dict[str, Any]]) -> str:
    lines = [f"{op}: worst error vs fp64 (and eager's own error, bound, error/bound, kappa)"]
    for key in sorted(worst):
        w = worst[key]
        lines.append(
            f"  {key:24s} {w['err']:.3g} (eager {w['eager_err']:.3g}, bound {w['bound']:.3g}, "
            f"{w['ratio']:.2f}, kappa {w['kappa']:.3g}) case {w['case']}"
        )
        p = w["worst_well_conditioned"]
        if p:
            lines.append(
                f"  {'':24s} kappa <= 2: {p['err']:.3g} (eager {p['eager_err']:.3g}) case {p['case']}; "
                f"{w['ill_conditioned_cases']} case(s) with kappa > 2"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", sorted(OPS))
def test_fuzz_sample(op):
    """The default run's sample: SAMPLE_CASES random cases per op, every output and gradient within bound."""
    worst, failures = run_cases(op, range(SAMPLE_CASES))
    assert not failures, "\n".join(failures)
    assert {k.split()[0] for k in worst} == set(DTYPE_NAMES.values())  # every dtype was drawn


_FULL_RESULTS: Dict[str, Any] = {}


@pytest.mark.fuzz
@pytest.mark.parametrize("op", sorted(OPS))
def test_fuzz_full(op):
    """``FASTRECUR_FUZZ_CASES`` (default 1000) cases per op; worst errors printed and written to
    ``FASTRECUR_FUZZ_JSON`` (updated after each op)."""
    n = int(os.environ.get("FASTRECUR_FUZZ_CASES", "1000"))
    t0 = time.perf_counter()
    worst, failures = run_cases(op, range(n))
    seconds = time.perf_counter() - t0
    print("\n" + _summary(op, worst) + f"\n  {n} cases in {seconds:.0f} s")
    _FULL_RESULTS[op] = {
        "cases": n,
        "seconds": round(seconds, 1),
        "failures": failures,
        "worst": worst,
        "K": {str(d): k for d, k in K.items()},
        "floor": {str(d): f for d, f in FLOOR.items()},
    }
    path = os.environ.get("FASTRECUR_FUZZ_JSON")
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"torch": torch.__version__, "ops": _FULL_RESULTS}, f, indent=1)
        os.replace(tmp, path)
    assert not failures, f"{len(failures)} of {n} cases over the bound:\n" + "\n".join(failures[:20])
