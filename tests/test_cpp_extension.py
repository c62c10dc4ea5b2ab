"""Tests of the native extension fastrecur._C: the fused elementwise CPU ops against eager torch, and the
native recursion (run_steps_cpp) against a plain Python loop of the block math written here from torch ops.

Skipped when the extension is not built, unless FASTRECUR_REQUIRE_EXT=1 (then they fail).
"""

import os

import pytest
import torch
import torch.nn.functional as F

from fastrecur import _ext
from fastrecur.core.cpp_runner import AttentionBlockWeights, MixerBlockWeights, run_steps_cpp
from fastrecur.core.schedule import Copy, Update
from golden import scale_err

EPS = 1e-5


@pytest.fixture(autouse=True)
def _need_ext():
    if not _ext.available():
        if os.environ.get("FASTRECUR_REQUIRE_EXT") == "1":
            pytest.fail(f"FASTRECUR_REQUIRE_EXT=1 but {_ext.status()}")
        pytest.skip(_ext.status())


def C():
    return torch.ops.fastrecur_C


# ----------------------------------------------------------------------------------------------------------
# Eager reference (the model math, from plain torch ops)
# ----------------------------------------------------------------------------------------------------------


def rms(x, eps=EPS):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def swiglu_mlp(h, gate_up, down):
    g, u = (h @ gate_up.T).chunk(2, dim=-1)
    return (F.silu(g) * u) @ down.T


def rope(q, cos, sin):  # q [B, S, H, hd]
    qf = q.float()
    half = q.shape[-1] // 2
    rot = torch.cat((-qf[..., half:], qf[..., :half]), dim=-1)
    return (qf * cos[:, None, :] + rot * sin[:, None, :]).to(q.dtype)


def attention_block(h, w, num_heads, cos, sin):
    B, S, _ = h.shape
    qkv = (h @ w.qkv.T).view(B, S, 3, num_heads, -1)
    q, k, v = qkv.unbind(2)
    if cos is not None:
        q, k = rope(q, cos, sin), rope(k, cos, sin)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    h = rms(h + o.transpose(1, 2).reshape(B, S, -1) @ w.o.T)
    return rms(h + swiglu_mlp(h, w.gate_up, w.down))


def mixer_block(h, w):
    hT = h.transpose(1, 2)
    h = rms(hT + swiglu_mlp(hT, w.t_gate_up, w.t_down)).transpose(1, 2)
    return rms(h + swiglu_mlp(h, w.gate_up, w.down))


def eager_loop(steps, states, x, levels, cos, sin, num_heads):
    st = dict(states)
    for step in steps:
        if isinstance(step, Copy):
            st[step.target] = st[step.source]
            continue
        h = st[step.target]
        inj = None
        for name in step.inject:
            v = x if name == "x" else st[name]
            inj = v if inj is None else inj + v
        if inj is not None:
            h = h + inj
        for w in levels[step.level]:
            attention = isinstance(w, AttentionBlockWeights)
            h = attention_block(h, w, num_heads, cos, sin) if attention else mixer_block(h, w)
        st[step.target] = h
    return st


# ----------------------------------------------------------------------------------------------------------
# Problem builders (small, odd sizes: tails of the vector loops, B = 1 and B > 1)
# ----------------------------------------------------------------------------------------------------------

B, S, D, H, HD, INTER, INTER_T = 2, 7, 40, 2, 20, 56, 12


def rand_w(rows, cols):
    return torch.randn(rows, cols) / cols**0.5


def attention_weights(n):
    return [
        AttentionBlockWeights(rand_w(3 * H * HD, D), rand_w(D, H * HD), rand_w(2 * INTER, D), rand_w(D, INTER))
        for _ in range(n)
    ]


def mixer_weights(n, seq=S):
    return [
        MixerBlockWeights(rand_w(2 * INTER_T, seq), rand_w(seq, INTER_T), rand_w(2 * INTER, D), rand_w(D, INTER))
        for _ in range(n)
    ]


def rope_tables(seq=S, hd=HD):
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    freqs = torch.outer(torch.arange(seq, dtype=torch.float32), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def trm_steps(h_cycles=2, l_cycles=2):
    steps = []
    for _ in range(h_cycles):
        steps += [Update("z_L", "L", ("z_H", "x"))] * l_cycles + [Update("z_H", "L", ("z_L",))]
    return steps


HRM_STEPS = [Update("z_L", "L", ("z_H", "x"))] * 2 + [Update("z_H", "H", ("z_L",))] + [Update("z_L", "L", ("z_H", "x"))]
SRM_STEPS = [Copy("a", "z")] + [Update("z", "L", ("a", "x"))] * 2 + [Copy("a", "z"), Update("z", "L", ("a", "x"))]


def make_case(name, batch=B):
    torch.manual_seed(1)
    seq = S
    x = torch.randn(batch, seq, D)
    if name == "trm":
        return (
            trm_steps(),
            {"z_H": torch.randn(batch, seq, D), "z_L": torch.randn(batch, seq, D)},
            x,
            {"L": attention_weights(2)},
            rope_tables(),
        )
    if name == "trm_mlp_t":
        return (
            trm_steps(),
            {"z_H": torch.randn(batch, seq, D), "z_L": torch.randn(batch, seq, D)},
            x,
            {"L": mixer_weights(2)},
            (None, None),
        )
    if name == "hrm":
        return (
            HRM_STEPS,
            {"z_H": torch.randn(batch, seq, D), "z_L": torch.randn(batch, seq, D)},
            x,
            {"H": attention_weights(2), "L": attention_weights(2)},
            rope_tables(),
        )
    if name == "srm":
        return SRM_STEPS, {"z": torch.randn(batch, seq, D)}, x, {"L": attention_weights(1)}, (None, None)
    raise KeyError(name)


def cast_case(case, dtype):
    steps, states, x, levels, (cos, sin) = case
    states = {k: v.to(dtype).contiguous() for k, v in states.items()}
    levels = {k: [type(w)(*(t.to(dtype) for t in w)) for w in ws] for k, ws in levels.items()}
    return steps, states, x.to(dtype), levels, (cos, sin)


def run_both(case, **kwargs):
    steps, states, x, levels, (cos, sin) = case
    ref = eager_loop(steps, states, x, levels, cos, sin, H)
    got = run_steps_cpp(steps, {k: v.clone() for k, v in states.items()}, x, levels, cos, sin, H, EPS, **kwargs)
    return ref, got


# ----------------------------------------------------------------------------------------------------------
# Fused elementwise ops vs eager
# ----------------------------------------------------------------------------------------------------------

TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=1e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=8e-3, atol=8e-3),
}  # about one ulp of the output dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("inplace", [False, True])
def test_add_rms_norm(dtype, inplace):
    a, b = torch.randn(3, 5, 300, dtype=dtype), torch.randn(3, 5, 300, dtype=dtype)  # 300 > one staging block
    ref = rms(a + b)
    out = a if inplace else torch.empty_like(a)
    C().add_rms_norm(a, b, EPS, out)
    torch.testing.assert_close(out, ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_swiglu(dtype):
    gu = torch.randn(1, 6, 2 * 37, dtype=dtype) * 4
    out = torch.empty(1, 6, 37, dtype=dtype)
    C().swiglu(gu, out)
    g, u = gu.chunk(2, -1)
    ref = (F.silu(g.float()) * u.float()).to(dtype)
    torch.testing.assert_close(out, ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rope(dtype):
    x = torch.randn(2, 7, 3, 20, dtype=dtype)
    cos, sin = rope_tables(7, 20)
    ref = rope(x, cos, sin)
    C().rope_(x, cos, sin)
    torch.testing.assert_close(x, ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("inplace", [False, True])
def test_add_rms_norm_dim1(dtype, inplace):
    a = torch.randn(2, 9, 70, dtype=dtype)
    b = torch.randn(9, 2, 70, dtype=dtype).transpose(0, 1)  # strided operand, as in the mixer block
    ref = rms((a + b).transpose(1, 2)).transpose(1, 2)
    out = a if inplace else torch.empty_like(a)
    C().add_rms_norm_dim1(a, b, EPS, out)
    torch.testing.assert_close(out, ref, **TOL[dtype])


# Widths around the vector lengths (8 fp32 lanes with AVX2, 16 with AVX-512) and the token-axis norm's
# 64-column strips: whole vectors only, a tail only, whole vectors plus a tail.
WIDTHS = [1, 7, 16, 33, 64, 100]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("width", WIDTHS)
def test_vector_tails(dtype, width):
    """Every kernel at widths that are not multiples of the vector length equals eager; elements past the
    width (a guard column of the same buffer) are never written."""
    torch.manual_seed(width)
    guard = 12345.0

    def padded(*shape):  # [..., width] views of [..., width + 1] buffers whose last column is the guard
        buf = torch.randn(*shape[:-1], shape[-1] + 1).to(dtype)
        buf[..., -1] = guard
        return buf, buf[..., :-1]

    a, b = torch.randn(3, 5, width, dtype=dtype), torch.randn(3, 5, width, dtype=dtype)
    out = torch.empty_like(a)
    C().add_rms_norm(a, b, EPS, out)
    torch.testing.assert_close(out, rms(a + b), **TOL[dtype])

    gu = torch.randn(4, 2 * width, dtype=dtype) * 4
    act = torch.empty(4, width, dtype=dtype)
    C().swiglu(gu, act)
    g, u = gu.float().chunk(2, -1)
    torch.testing.assert_close(act, (F.silu(g) * u).to(dtype), **TOL[dtype])

    a3 = torch.randn(2, 9, width, dtype=dtype)
    buf, b3 = padded(2, 9, width)  # strided operand (row stride width + 1)
    obuf = torch.full((3, 9, width), guard, dtype=dtype)
    out3 = obuf[:2]  # contiguous; obuf[2] follows its last element
    C().add_rms_norm_dim1(a3, b3, EPS, out3)
    torch.testing.assert_close(out3, rms((a3 + b3).transpose(1, 2)).transpose(1, 2), **TOL[dtype])
    assert (obuf[2] == guard).all() and (buf[..., -1] == guard).all()

    hd = 2 * width
    x = torch.randn(2, 3, 2, hd, dtype=dtype)
    cos, sin = rope_tables(3, hd)
    ref = rope(x, cos, sin)
    C().rope_(x, cos, sin)
    torch.testing.assert_close(x, ref, **TOL[dtype])

    t, s0, s1 = (torch.randn(3, width, dtype=dtype) for _ in range(3))
    ref = t + (s0 + s1)
    C().inject_add(t, [s0, s1])
    torch.testing.assert_close(t, ref, rtol=0, atol=0)  # eager's order and rounding: bitwise equal


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_inject_add(dtype):
    """target += (srcs[0] + srcs[1] + ...), every partial sum rounded like eager's left-to-right sum, bitwise;
    a source may be the target itself; bad arguments are refused naming them."""
    torch.manual_seed(0)
    srcs = [torch.randn(2, 7, 300, dtype=dtype) for _ in range(4)]
    t = torch.randn(2, 7, 300, dtype=dtype)
    ref = t + (((srcs[0] + srcs[1]) + srcs[2]) + srcs[3])
    C().inject_add(t, srcs)
    torch.testing.assert_close(t, ref, rtol=0, atol=0)
    ref = t + (t + srcs[0])
    C().inject_add(t, [t, srcs[0]])
    torch.testing.assert_close(t, ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="srcs must hold 1 to 8"):
        C().inject_add(t, [])
    with pytest.raises(ValueError, match=r"srcs\[1\] must have the shape"):
        C().inject_add(t, [srcs[0], srcs[1][:, :3]])
    with pytest.raises(TypeError, match=r"srcs\[0\] has dtype"):
        C().inject_add(t, [srcs[0].double()])
    with pytest.raises(ValueError, match="partially overlaps"):
        flat = torch.randn(2 * 7 * 300 + 1, dtype=dtype)
        C().inject_add(flat[:-1].view(2, 7, 300), [flat[1:].view(2, 7, 300)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_add_rms_norm_special_values(dtype):
    """Both norms (rows, token axis) on rows holding +-inf, NaN, zeros of either sign and huge or tiny values
    give eager's result, signs of zeros included: a row (column) with an inf has scale 0 (its finite entries 0,
    the inf NaN), NaN spreads over its row (column), an all-zero row stays 0 (-0 + -0 stays -0). With eps = 0,
    tiny rows (squares below fp32's normal range) still normalise to rms 1."""
    inf, nan = float("inf"), float("nan")
    a = torch.randn(7, 96)
    a[1, 5], a[2, 7], a[3], a[6] = inf, nan, 0.0, -0.0
    a[4] *= 1e30 if dtype != torch.float16 else 1e4
    a[5] *= 1e-30 if dtype != torch.float16 else 1e-3
    b = torch.randn(7, 96)
    b[1, 9], b[3], b[6, ::2], b[6, 1::2] = -inf, 0.0, -0.0, 0.0
    a, b = a.to(dtype), b.to(dtype)
    for eps in (EPS, 0.0):
        ref = rms(a + b, eps)
        out = torch.empty_like(a)
        C().add_rms_norm(a, b, eps, out)
        # The token-axis kernel normalises over dim 1: the same values, transposed.
        at, bt = a.t().contiguous()[None], b.t().contiguous()[None]
        out1 = torch.empty_like(at)
        C().add_rms_norm_dim1(at, bt, eps, out1)
        for got, want in ((out, ref), (out1, ref.t()[None])):
            nan_ = want.isnan()
            assert torch.equal(got.isnan(), nan_)
            torch.testing.assert_close(got[~nan_], want[~nan_], **TOL[dtype])
            assert torch.equal(got[~nan_].signbit(), want[~nan_].signbit())
    tiny = torch.full((2, 96), 1e-20 if dtype != torch.float16 else 1e-7).to(dtype)
    out = torch.empty_like(tiny)
    C().add_rms_norm(tiny, tiny, 0.0, out)
    torch.testing.assert_close(out, rms(tiny + tiny, 0.0), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_swiglu_extreme_gates(dtype):
    """The SwiGLU's exp and division hold over the whole range, as eager's silu(x) * u does: huge negative
    gates give 0 (exp overflows: x / inf), also between the clamp of the exp's argument and fp32's overflow
    (88.5 < 88.72 < 89), huge positive ones silu(x) = x, +inf gives inf * u, and -inf and NaN give NaN."""
    inf = float("inf")
    g = torch.tensor(
        [-1e4, -200.0, -89.5, -88.5, -30.0, -1e-3, 0.0, 1e-3, 30.0, 88.5, 200.0, 1e4, inf, -inf, float("nan")] * 2
    )
    u = torch.linspace(-2, 3, g.numel())
    gu = torch.cat([g, u]).to(dtype)[None]
    out = torch.empty(1, g.numel(), dtype=dtype)
    C().swiglu(gu, out)
    gf, uf = gu.float().chunk(2, -1)
    ref = (F.silu(gf) * uf).to(dtype)
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.isinf(), ref.isinf())
    keep = torch.isfinite(ref)
    torch.testing.assert_close(out[keep], ref[keep], **TOL[dtype])
    assert torch.equal(out[~keep & ~ref.isnan()], ref[~keep & ~ref.isnan()])


# ----------------------------------------------------------------------------------------------------------
# The recursion vs the eager loop
# ----------------------------------------------------------------------------------------------------------

CASES = ["trm", "trm_mlp_t", "hrm", "srm"]


@pytest.mark.parametrize("name", CASES)
def test_run_steps_fp32(name):
    ref, got = run_both(make_case(name))
    assert set(got) >= set(ref)
    for k in ref:
        assert scale_err(got[k], ref[k]) <= 1e-5, k


@pytest.mark.parametrize("per_item", [False, True], ids=["whole_batch", "per_item"])
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("threads", [1, 2])
def test_run_steps_threading_modes(name, per_item, threads):
    """Both CPU modes -- threads split each op over the whole batch, or threads take batch items and run whole
    level calls on them -- equal the eager loop, at 1 and 2 threads and with more items than threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ref, got = run_both(make_case(name, batch=3), per_item=per_item)
    finally:
        torch.set_num_threads(old)
    for k in ref:
        assert scale_err(got[k], ref[k]) <= 1e-5, k


GEMMS = ["aten", "onednn", "onednn_fused", "auto"]


def flip_layout(levels):
    """Right-multiplied weights as Wt.t() (Wt contiguous), the layout the models cache on the CPU."""
    fields = ("qkv", "o", "gate_up", "down")
    return {
        name: [w._replace(**{f: getattr(w, f).t().contiguous().t() for f in fields if f in w._fields}) for w in ws]
        for name, ws in levels.items()
    }


@pytest.mark.parametrize("layout", ["linear", "transposed"])
@pytest.mark.parametrize("per_item", [False, True], ids=["whole_batch", "per_item"])
@pytest.mark.parametrize("gemm", GEMMS)
@pytest.mark.parametrize("name", CASES)
def test_run_steps_gemm_libraries(name, gemm, per_item, layout):
    """Every GEMM library choice (ATen, oneDNN, oneDNN with SwiGLU as post-ops, measured) equals the eager loop
    in fp32, in both threading modes (2 threads) and both weight layouts (the transposed one makes the fused
    SwiGLU split copies of its weight halves: oneDNN's fast paths need dense matrices)."""
    steps, states, x, levels, tables = make_case(name, batch=3)
    if layout == "transposed":
        levels = flip_layout(levels)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ref, got = run_both((steps, states, x, levels, tables), per_item=per_item, gemm=gemm)
    finally:
        torch.set_num_threads(old)
    for k in ref:
        assert scale_err(got[k], ref[k]) <= 1e-5, k


def test_fused_swiglu_weight_halves_follow_new_weights():
    """The fused SwiGLU's dense copies of the weight halves are cached per weight: new weights of the same shape
    must not reuse them, and an in-place update must refresh them. (Before the cache held the weight itself, a
    new weight placed at a freed one's address, with the same version 0, got the old halves: seen once in the
    ISA-variant run of test_run_steps_gemm_libraries; whether the allocator reuses an address here is luck.)"""
    for _ in range(4):  # each round frees the last round's weights and makes new ones of the same shapes
        steps, states, x, levels, tables = make_case("trm_mlp_t", batch=2)
        levels = flip_layout(levels)
        ref, got = run_both((steps, states, x, levels, tables), gemm="onednn_fused")
        for k in ref:
            assert scale_err(got[k], ref[k]) <= 1e-5, k
    with torch.no_grad():
        levels["L"][0].gate_up.mul_(0.5)  # in place: same address, version + 1
    ref, got = run_both((steps, states, x, levels, tables), gemm="onednn_fused")
    for k in ref:
        assert scale_err(got[k], ref[k]) <= 1e-5, k


@pytest.mark.parametrize("gemm", ["onednn", "onednn_fused"])
@pytest.mark.parametrize("name", CASES)
def test_run_steps_gemm_libraries_bf16(name, gemm):
    """bf16 through oneDNN (plain or with SwiGLU post-ops, which round silu(gate) to bf16 before the multiply):
    error vs the fp32 loop at most ~2x the eager bf16 loop's, as for ATen (test_run_steps_low_precision)."""
    case32 = make_case(name, batch=2)
    ref32 = eager_loop(*case32[:4], *case32[4], H)
    ref16, got16 = run_both(cast_case(case32, torch.bfloat16), gemm=gemm)
    for k in ref32:
        err_eager, err_cpp = rmse(ref16[k], ref32[k]), rmse(got16[k], ref32[k])
        assert err_cpp <= 2 * err_eager + 5e-3, (k, err_cpp, err_eager)


def test_run_steps_gemm_argument_checks(monkeypatch):
    steps, states, x, levels, (cos, sin) = make_case("trm")
    with pytest.raises(ValueError, match="gemm must be one of auto, aten, onednn, onednn_fused, got 'mkl'"):
        run_steps_cpp(steps, states, x, levels, cos, sin, H, gemm="mkl")
    monkeypatch.setenv("FASTRECUR_CPU_GEMM", "fast")
    with pytest.raises(ValueError, match="FASTRECUR_CPU_GEMM must be one of"):
        run_steps_cpp(steps, states, x, levels, cos, sin, H)
    monkeypatch.setenv("FASTRECUR_CPU_GEMM", "onednn")
    ref, got = run_both(make_case("trm"))  # the variable chooses when the argument is None
    for k in ref:
        assert scale_err(got[k], ref[k]) <= 1e-5, k
    half = cast_case(make_case("trm"), torch.float16)
    try:  # oneDNN has an fp16 inner product only on CPUs with AVX512-FP16 or AMX-FP16
        run_both(half, gemm="onednn")
    except ValueError as e:
        assert "oneDNN has no Half inner product on this CPU" in str(e)


def test_run_steps_transposed_weight_layout():
    """Right-multiplied weights given as Wt.t() (Wt contiguous, the layout the models cache on CPU) give the
    same result as nn.Linear's contiguous layout; other strides are refused."""
    steps, states, x, levels, (cos, sin) = make_case("trm")
    flip = {
        "L": [
            w._replace(**{f: getattr(w, f).t().contiguous().t() for f in ("qkv", "o", "gate_up", "down")})
            for w in levels["L"]
        ]
    }
    assert not flip["L"][0].gate_up.is_contiguous()
    ref = run_steps_cpp(steps, {k: v.clone() for k, v in states.items()}, x, levels, cos, sin, H, EPS)
    got = run_steps_cpp(steps, {k: v.clone() for k, v in states.items()}, x, flip, cos, sin, H, EPS)
    for k in ref:
        assert scale_err(got[k], ref[k]) <= 1e-6, k
    w = levels["L"][0]
    with pytest.raises(ValueError, match="gate_up must be contiguous or the transpose"):
        run_steps_cpp(steps, states, x, {"L": [w._replace(gate_up=torch.randn(2 * INTER, 2 * D)[:, ::2])]}, cos, sin, H)
    mw = mixer_weights(1)[0]
    with pytest.raises(ValueError, match="t_gate_up must be contiguous"):
        run_steps_cpp(steps, states, x, {"L": [mw._replace(t_gate_up=mw.t_gate_up.t().contiguous().t())]})
    with pytest.raises(TypeError, match="per_item"):
        run_steps_cpp(steps, states, x, levels, cos, sin, H, per_item=2)


def test_run_steps_fp32_batch1():
    ref, got = run_both(make_case("trm", batch=1))
    for k in ref:
        assert scale_err(got[k], ref[k]) <= 1e-5, k


def rmse(a, b):
    return (a.double() - b.double()).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("batch", [1, 4], ids=["b1_whole_batch", "b4_per_item_pairs"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", CASES)
def test_run_steps_low_precision(name, dtype, batch):
    """Error vs the fp32 loop at most ~2x the eager low-precision loop's (RMS over all elements: the max is
    dominated by the chaotic growth of rounding noise through the recursion, for either path). Batch 4 runs
    the per-item mode with two 16-bit items per chunk (at 2+ threads; whole batch at 1)."""
    case32 = make_case(name, batch=batch)
    ref32 = eager_loop(*case32[:4], *case32[4], H)
    ref16, got16 = run_both(cast_case(case32, dtype))
    for k in ref32:
        assert got16[k].dtype == dtype
        err_eager, err_cpp = rmse(ref16[k], ref32[k]), rmse(got16[k], ref32[k])
        assert err_cpp <= 2 * err_eager + 5e-3, (k, err_cpp, err_eager)


def test_run_steps_in_place_and_scratch():
    steps, states, x, levels, (cos, sin) = make_case("srm")
    z = states["z"]
    out = run_steps_cpp(steps, states, x, levels, cos, sin, H, EPS)
    assert out is states and out["z"] is z  # updated in place
    assert "a" in out and out["a"].shape == z.shape  # scratch state allocated by the runner
    ref = eager_loop(steps, make_case("srm")[1], x, levels, cos, sin, H)
    assert scale_err(out["a"], ref["a"]) <= 1e-5


def test_workspace_reused():
    case = make_case("trm")
    run_both(case)
    before = _ext.workspace_info()
    steps, states, x, levels, (cos, sin) = case
    run_steps_cpp(steps, states, x, levels, cos, sin, H, EPS)
    after = _ext.workspace_info()
    assert after["allocations"] == before["allocations"]
    assert after["bytes"] == before["bytes"]
    assert after["last_call_ops"] > 0
    _ext.clear_workspaces()
    run_steps_cpp(steps, states, x, levels, cos, sin, H, EPS)
    assert _ext.workspace_info()["allocations"] == after["allocations"] + 1


def test_status():
    assert _ext.available()
    assert "fastrecur._C loaded" in _ext.status()
    assert isinstance(_ext.has_cuda_kernels(), bool)


def test_cpu_isa_guard(monkeypatch):
    """The library says which instruction set its CPU kernels use; on a CPU lacking it, fastrecur refuses to load
    it with the reason (instead of dying with SIGILL)."""
    if os.environ.get("FASTRECUR_EXT_LIBRARY"):
        pytest.skip("a library loaded by path has no build record")
    info = pytest.importorskip("fastrecur._build_info")
    assert _ext.cpu_isa() == info.CPU_ISA and info.CPU_ISA in _ext.status()
    assert _ext._cpu_isa_mismatch() is None  # it loaded here, so this CPU has what it needs
    if not info.CPU_ISA_NEEDS:
        pytest.skip("portable build: runs on any CPU")
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {})
    msg = _ext._cpu_isa_mismatch()
    assert msg and info.CPU_ISA in msg and info.CPU_ISA_NEEDS[0] in msg and "FASTRECUR_CPU_ISA" in msg


def test_build_cpu_isa_choice(monkeypatch):
    """FASTRECUR_CPU_ISA picks the instruction set (flags and at::vec capability macro), or fails clearly."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "csrc"))
    try:
        import build_config
    finally:
        sys.path.pop(0)
    for isa, macro in (
        ("avx2", "-DCPU_CAPABILITY_AVX2"),
        ("avx512", "-DCPU_CAPABILITY_AVX512"),
        ("avx512_bf16", "-DCPU_CAPABILITY_AVX512"),
    ):
        monkeypatch.setenv("FASTRECUR_CPU_ISA", isa)
        cxx = build_config.extension_kwargs(with_cuda=False)["extra_compile_args"]["cxx"]
        assert macro in cxx and f"-DFASTRECUR_CPU_ISA={isa}" in cxx
        assert ("-mavx512bf16" in cxx) == (isa == "avx512_bf16")  # the BF16 conversions only where asked for
    monkeypatch.setenv("FASTRECUR_CPU_ISA", "sse9")
    with pytest.raises(ValueError, match="FASTRECUR_CPU_ISA"):
        build_config.cpu_isa()


# ----------------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------------


def test_bad_states():
    steps, states, x, levels, (cos, sin) = make_case("trm")
    with pytest.raises(TypeError, match="z_H"):
        run_steps_cpp(steps, {**states, "z_H": states["z_H"].double()}, x, levels, cos, sin, H)
    with pytest.raises(ValueError, match="contiguous"):
        run_steps_cpp(steps, {**states, "z_H": states["z_H"].transpose(0, 1)}, x, levels, cos, sin, H)
    with pytest.raises(ValueError, match="share memory"):
        run_steps_cpp(steps, {"z_H": states["z_L"], "z_L": states["z_L"]}, x, levels, cos, sin, H)
    with pytest.raises(ValueError, match="shape"):
        run_steps_cpp(steps, {**states, "z_L": torch.randn(B, S + 1, D)}, x, levels, cos, sin, H)
    with pytest.raises(ValueError, match="z_H"):
        run_steps_cpp(steps, {"z_L": states["z_L"]}, x, levels, cos, sin, H)
    with pytest.raises(ValueError, match="requires grad"):
        run_steps_cpp(steps, {**states, "z_H": states["z_H"].requires_grad_()}, x, levels, cos, sin, H)


def test_bad_weights_and_tables():
    steps, states, x, levels, (cos, sin) = make_case("trm")
    w = levels["L"][0]
    with pytest.raises(ValueError, match="qkv"):
        run_steps_cpp(steps, states, x, {"L": [w._replace(qkv=rand_w(3 * H * HD, D + 1))]}, cos, sin, H)
    with pytest.raises(ValueError, match="down"):
        run_steps_cpp(steps, states, x, {"L": [w._replace(down=rand_w(D, INTER + 2))]}, cos, sin, H)
    with pytest.raises(ValueError, match="levels has no entry"):
        run_steps_cpp(steps, states, x, {"H": levels["L"]}, cos, sin, H)
    with pytest.raises(TypeError, match="one kind"):
        run_steps_cpp(steps, states, x, {"L": [w] + mixer_weights(1)}, cos, sin, H)
    with pytest.raises(ValueError, match="cos"):
        run_steps_cpp(steps, states, x, levels, cos[:, :4].contiguous(), sin[:, :4].contiguous(), H)
    with pytest.raises(TypeError, match="cos"):
        run_steps_cpp(steps, states, x, levels, cos.double(), sin.double(), H)
    with pytest.raises(ValueError, match="together"):
        run_steps_cpp(steps, states, x, levels, cos, None, H)


def test_bad_raw_op_inputs():
    steps, states, x, levels, (cos, sin) = make_case("trm")
    weights = [t for blk in levels["L"] for t in blk]
    tensors = [states["z_H"], states["z_L"]]
    prog = torch.tensor([[0, 0, 0, 1, 1]])  # writes slot 0 (x)
    with pytest.raises(ValueError, match="target slot"):
        C().run_steps(tensors, x, prog, weights, [0, 2], cos, sin, H, EPS, 0)
    prog = torch.tensor([[0, 1, 3, 1, 1]])  # level 3 does not exist
    with pytest.raises(ValueError, match="level 3"):
        C().run_steps(tensors, x, prog, weights, [0, 2], cos, sin, H, EPS, 0)
    with pytest.raises(ValueError, match="4 tensors per block"):
        C().run_steps(tensors, x, torch.tensor([[1, 1, 2, 0]]), weights[:-1], [0, 2], cos, sin, H, EPS, 0)
    with pytest.raises(ValueError, match="per_item"):
        C().run_steps(tensors, x, torch.tensor([[1, 1, 0, 0]]), weights, [0, 2], cos, sin, H, EPS, 0, 3)
    with pytest.raises(ValueError, match="gemm must be -1"):
        C().run_steps(tensors, x, torch.tensor([[1, 1, 0, 0]]), weights, [0, 2], cos, sin, H, EPS, 0, -1, 3)
    a = torch.randn(4, 33)
    with pytest.raises(ValueError, match="partially overlaps"):
        C().add_rms_norm(a[:3], a[1:], EPS, a[1:])
    with pytest.raises(TypeError, match="dtype"):
        C().swiglu(torch.randn(3, 8), torch.empty(3, 4, dtype=torch.float64))


def test_kernel_roofline_rows():
    """fastrecur.bench.roofline: the bytes each kernel must move (hand-counted at one Sudoku item: 97 rows of
    512, SwiGLU width 1536, 16 RoPE heads of 64 plus the fp32 tables), timings that are positive, the ratio
    to the copy, and a table headed by the CPU's ISA features."""
    from fastrecur.bench import roofline

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = roofline.kernel_roofline(torch.device("cpu"), [torch.bfloat16], [1], rounds=1)
    finally:
        torch.set_num_threads(old)
    want = {
        "add_rms_norm": 3 * 97 * 512 * 2,
        "add_rms_norm_dim1": 3 * 97 * 512 * 2,
        "swiglu": 3 * 97 * 1536 * 2,
        "rope": 2 * 97 * 16 * 64 * 2 + 2 * 97 * 64 * 4,
        "inject_add": 4 * 97 * 512 * 2,
    }
    assert {r["kernel"]: r["bytes"] for r in rows} == want
    for r in rows:
        assert r["kernel_us"] > 0 and r["copy_us"] > 0
        assert r["fraction_of_copy"] == pytest.approx(r["copy_us"] / r["kernel_us"])
    line = roofline.device_line(torch.device("cpu"))
    assert "AVX512-BF16" in line and "AMX" in line and _ext.cpu_isa() in line
    assert roofline.markdown(rows, line, "wall time").startswith(f"Kernel roofline: {line}")
    with pytest.raises(ValueError, match="kernel must be one of"):
        roofline.kernel_case("softmax", 1, torch.float32, torch.device("cpu"))


def test_gemm_fusion_rows():
    """fastrecur.bench.gemm_fusion: one row per site, every variant timed (positive µs), the ratios computed
    from those times, and tables headed as asked."""
    from fastrecur.bench import gemm_fusion
    from fastrecur.bench.common import onednn_runs

    if not onednn_runs(torch.float32):
        pytest.skip("this torch has no oneDNN")
    swiglu, down = gemm_fusion.fusion_rows(torch.float32, 1, rounds=1)
    assert (swiglu["site"], down["site"]) == ("gate/up + SwiGLU", "down + residual add")
    times = [swiglu[k] for k in ("aten + kernel", "onednn + kernel", "onednn post-ops")]
    assert min(times) > 0
    assert swiglu["post_ops_x_best_other"] == pytest.approx(times[2] / min(times[:2]))
    assert down["post_op_extra_us"] == pytest.approx(down["onednn GEMM + add post-op"] - down["onednn GEMM"])
    md = gemm_fusion.markdown([swiglu, down], "HEADER", "wall time")
    assert md.startswith("oneDNN post-ops against GEMM + fastrecur kernel: HEADER") and "| float32 | 1 |" in md
