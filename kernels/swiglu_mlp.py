"""SwiGLU MLP block with the residual add and RMSNorm fused: ``y = rms_norm(h + (silu(gate) * up) @ W_down.T)``.

Three batched, fully strided matmul kernels (used as they are by ``token_mix.py``, which runs the same block
on the transposed view of h without materialising it):

* ``swiglu_gate_up_kernel``  act[b, m, n] = silu(g) * u,  g = X[b] @ W[:N].T,  u = X[b] @ W[N:].T
  (gate and up tiles computed by one program; ``gu`` is never written).
* ``matmul_residual_norm_kernel``  y[b, m, :] = rms_norm(H[b, m, :] + A[b, m, :] @ W.T) -- a program owns
  whole rows (BLOCK_N >= N) so the norm is its epilogue; with NORM=False it is ``H + A @ W.T``.
* ``swiglu_mlp_bwd_kernel``  one pass over K computing three tiles: dact = dS @ W_down and the recomputed
  gate/up; its epilogue writes d(gate, up) and the recomputed act (for the W_down gradient).

All accumulate in fp32 (``tl.dot``) and reproduce eager's rounding of the intermediates (gate, up, silu,
the down projection and the residual sum are rounded to the activation dtype where eager rounds them).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .add_rms_norm import TL_PTR, dot_options, rms_norm_bwd, round_to

__all__ = [
    "swiglu_gate_up",
    "matmul_residual_norm",
    "swiglu_mlp_bwd_tiles",
    "swiglu_mlp_fwd",
    "swiglu_mlp_bwd",
    "compile_targets",
]

MAX_NORM_COLS = 2048  # the norm epilogue keeps [BLOCK_M, next_pow2(N)] fp32 in registers


@triton.jit
def _tile_coords(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """Grouped tile order: GROUP_M row tiles share each column sweep, so X tiles are reused from L2."""
    width = GROUP_M * num_n
    group = pid // width
    first_m = group * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    return pid_m, pid_n


@triton.jit
def _swiglu(g, u, DTYPE: tl.constexpr):
    """Gate/up epilogue with eager's roundings (gu rounded, silu rounded). Returns g, u, sigmoid, silu, act."""
    g = round_to(g, DTYPE)
    u = round_to(u, DTYPE)
    sig = tl.sigmoid(g)
    silu = round_to(g * sig, DTYPE)
    return g, u, sig, silu, silu * u


@triton.jit
def swiglu_gate_up_kernel(
    X, W, ACT,
    M, N, K,
    s_xb, s_xm, s_xk,
    s_wn, s_wk,
    s_ab, s_am, s_an,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr, IN_PREC: tl.constexpr,
):
    """act[b, m, n] = silu(sum_k X[b,m,k] W[n,k]) * sum_k X[b,m,k] W[N+n,k]   (W is [2N, K]).

    Bytes: reads X once per column tile (from L2 after the first) and W, writes act [M, N] once.
    Eager writes gu [M, 2N], reads it back for silu (writes [M, N]), and reads both for the product
    (writes [M, N] again): about 6*M*N elements more traffic than this kernel.
    """
    pid_m, pid_n = _tile_coords(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    b = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < N
    om = offs_m.to(tl.int64)  # 64-bit offsets: strided token-mix views span the whole tensor
    on = offs_n.to(tl.int64)
    x_ptrs = X + b * s_xb + om[:, None] * s_xm + offs_k[None, :] * s_xk
    wg_ptrs = W + on[None, :] * s_wn + offs_k[:, None] * s_wk
    wu_ptrs = wg_ptrs + N * s_wn
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        x = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        wg = tl.load(wg_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        wu = tl.load(wu_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        if UPCAST:
            x = x.to(tl.float32)
            wg = wg.to(tl.float32)
            wu = wu.to(tl.float32)
        acc_g = tl.dot(x, wg, acc_g, input_precision=IN_PREC)
        acc_u = tl.dot(x, wu, acc_u, input_precision=IN_PREC)
        x_ptrs += BLOCK_K * s_xk
        wg_ptrs += BLOCK_K * s_wk
        wu_ptrs += BLOCK_K * s_wk
    _, _, _, _, act = _swiglu(acc_g, acc_u, ACT.dtype.element_ty)
    a_ptrs = ACT + b * s_ab + om[:, None] * s_am + on[None, :] * s_an
    tl.store(a_ptrs, act.to(ACT.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def matmul_residual_norm_kernel(
    A, W, H, Y, RSTD,
    M, N, K,
    s_ab, s_am, s_ak,
    s_wn, s_wk,
    s_hb, s_hm, s_hn,
    s_yb, s_ym, s_yn,
    eps,
    NORM: tl.constexpr, ROUND: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, IN_PREC: tl.constexpr,
):
    """y[b, m, :] = rms_norm(H[b, m, :] + A[b, m, :] @ W.T) over the N axis (W is [N, K]); rstd[b, m] saved.

    NORM=False: y = H + A @ W.T (one rounding), used for the token-mix input gradient.
    Bytes (forward): reads act once, W (L2-resident) once per row block, h once; writes y and rstd.
    Eager writes the projection, reads it with h to write the sum, then the norm's ~8 passes.
    """
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < N
    om = offs_m.to(tl.int64)
    on = offs_n.to(tl.int64)
    a_ptrs = A + b * s_ab + om[:, None] * s_am + offs_k[None, :] * s_ak
    w_ptrs = W + on[None, :] * s_wn + offs_k[:, None] * s_wk
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        a = tl.load(a_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(a, w, acc, input_precision=IN_PREC)
        a_ptrs += BLOCK_K * s_ak
        w_ptrs += BLOCK_K * s_wk
    mask = m_mask[:, None] & n_mask[None, :]
    h = tl.load(H + b * s_hb + om[:, None] * s_hm + on[None, :] * s_hn, mask=mask, other=0.0)
    if ROUND:
        # eager: out = linear(...) rounded; s = h + out rounded; the norm then upcasts s
        s = round_to(round_to(acc, Y.dtype.element_ty) + h.to(tl.float32), Y.dtype.element_ty)
    else:
        s = acc + h.to(tl.float32)
    if NORM:
        rstd = tl.math.rsqrt(tl.sum(s * s, axis=1) / N + eps)
        s = s * rstd[:, None]
        tl.store(RSTD + b * M + offs_m, rstd, mask=m_mask)
    tl.store(Y + b * s_yb + om[:, None] * s_ym + on[None, :] * s_yn, s.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def swiglu_mlp_bwd_kernel(
    X, DS, WGU, WD, ACT, DGU,
    M, N, K,
    s_xb, s_xm, s_xk,
    s_db, s_dm, s_dk,
    s_gn, s_gk,
    s_wk, s_wn,
    s_ab, s_am, s_an,
    s_ob, s_om, s_on,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr, IN_PREC: tl.constexpr,
):
    """Given dS (gradient of the residual sum), in one K loop (K = the model dim, the same for all three):
        dact = dS[b] @ WD          (WD = W_down [K, N])
        g, u = X[b] @ WGU[:N].T, X[b] @ WGU[N:].T   (recomputed instead of saved)
    epilogue: DGU[b, m, n] = dact * u * silu'(g), DGU[b, m, N + n] = dact * silu(g), ACT = silu(g) * u.

    Bytes: reads X and dS once per column tile, the weights from L2; writes d(gate, up) [M, 2N] and act
    [M, N]. Eager autograd would also need gu saved from the forward ([M, 2N]) and makes ~8 elementwise
    passes over [M, N] for the SwiGLU backward.
    """
    pid_m, pid_n = _tile_coords(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    b = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < N
    om = offs_m.to(tl.int64)
    on = offs_n.to(tl.int64)
    x_ptrs = X + b * s_xb + om[:, None] * s_xm + offs_k[None, :] * s_xk
    d_ptrs = DS + b * s_db + om[:, None] * s_dm + offs_k[None, :] * s_dk
    wg_ptrs = WGU + on[None, :] * s_gn + offs_k[:, None] * s_gk
    wu_ptrs = wg_ptrs + N * s_gn
    wd_ptrs = WD + offs_k[:, None] * s_wk + on[None, :] * s_wn
    acc_d = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        mk = m_mask[:, None] & k_mask[None, :]
        kn = k_mask[:, None] & n_mask[None, :]
        x = tl.load(x_ptrs, mask=mk, other=0.0)
        d = tl.load(d_ptrs, mask=mk, other=0.0)
        wg = tl.load(wg_ptrs, mask=kn, other=0.0)
        wu = tl.load(wu_ptrs, mask=kn, other=0.0)
        wd = tl.load(wd_ptrs, mask=kn, other=0.0)
        if UPCAST:
            x = x.to(tl.float32)
            d = d.to(tl.float32)
            wg = wg.to(tl.float32)
            wu = wu.to(tl.float32)
            wd = wd.to(tl.float32)
        acc_g = tl.dot(x, wg, acc_g, input_precision=IN_PREC)
        acc_u = tl.dot(x, wu, acc_u, input_precision=IN_PREC)
        acc_d = tl.dot(d, wd, acc_d, input_precision=IN_PREC)
        x_ptrs += BLOCK_K * s_xk
        d_ptrs += BLOCK_K * s_dk
        wg_ptrs += BLOCK_K * s_gk
        wu_ptrs += BLOCK_K * s_gk
        wd_ptrs += BLOCK_K * s_wk
    g, u, sig, silu, act = _swiglu(acc_g, acc_u, ACT.dtype.element_ty)
    dgate = acc_d * u * sig * (1.0 + g * (1.0 - sig))
    dup = acc_d * silu
    mask = m_mask[:, None] & n_mask[None, :]
    out_ty = DGU.dtype.element_ty
    tl.store(ACT + b * s_ab + om[:, None] * s_am + on[None, :] * s_an, act.to(out_ty), mask=mask)
    o_ptrs = DGU + b * s_ob + om[:, None] * s_om + on[None, :] * s_on
    tl.store(o_ptrs, dgate.to(out_ty), mask=mask)
    tl.store(o_ptrs + N.to(tl.int64) * s_on, dup.to(out_ty), mask=mask)


# --------------------------------------------------------------------------------------------------------
# Launchers. 3-D operands are [batch, m, k]-indexed views with arbitrary strides; weights are 2-D.
# --------------------------------------------------------------------------------------------------------
def _s3(t):
    return t.stride(0), t.stride(1), t.stride(2)


def _tile_config(m: int, n: int, k: int, n_acc: int):
    """Block sizes for the tiled kernels: big tiles on the GPU, clamped to the problem (the interpreter is
    fastest with few, large programs). n_acc = number of [BLOCK_M, BLOCK_N] fp32 accumulators."""
    block_m = min(128 if n_acc < 3 else 64, max(16, triton.next_power_of_2(m)))
    block_n = min(64, max(16, triton.next_power_of_2(n)))
    block_k = min(64 if n_acc < 3 else 32, max(16, triton.next_power_of_2(k)))
    num_warps = 8 if block_m * block_n * n_acc >= 3 * 64 * 64 else 4
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8, num_warps=num_warps, num_stages=3)


def _norm_config(m: int, n: int, k: int):
    """Row-owning kernel: BLOCK_N = next_pow2(N); BLOCK_M so that the fp32 accumulator is <= 16K values
    (64 registers per thread at 8 warps), leaving room for the epilogue without spills."""
    block_n = max(16, triton.next_power_of_2(n))
    block_m = max(16, min(64, 16384 // block_n, triton.next_power_of_2(m)))
    block_k = 32 if block_n <= 512 else 16
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=8 if block_n >= 256 else 4,
                num_stages=2)


def swiglu_gate_up(x3, w_gate_up, act3):
    """act3[b] = silu(x3[b] @ Wg.T) * (x3[b] @ Wu.T); x3 [B, M, K], w_gate_up [2N, K], act3 [B, M, N]."""
    n_batch, m, k = x3.shape
    n = act3.shape[2]
    cfg = _tile_config(m, n, k, n_acc=2)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]), n_batch)
    swiglu_gate_up_kernel[grid](
        x3, w_gate_up, act3, m, n, k, *_s3(x3), w_gate_up.stride(0), w_gate_up.stride(1), *_s3(act3),
        **cfg, **dot_options(x3.dtype),
    )
    return act3


def matmul_residual_norm(a3, w, h3, y3, rstd, eps: float, norm: bool = True):
    """y3[b] = rms_norm(h3[b] + a3[b] @ w.T) (norm=True, rstd [B, M] fp32 written) or h3[b] + a3[b] @ w.T.

    a3 [B, M, K], w [N, K], h3 and y3 [B, M, N]; N <= MAX_NORM_COLS.
    """
    n_batch, m, k = a3.shape
    n = w.shape[0]
    if n > MAX_NORM_COLS:
        raise ValueError(f"matmul_residual_norm: the norm dimension {n} exceeds {MAX_NORM_COLS}")
    cfg = _norm_config(m, n, k)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]), n_batch)
    matmul_residual_norm_kernel[grid](
        a3, w, h3, y3, rstd if rstd is not None else y3, m, n, k,
        *_s3(a3), w.stride(0), w.stride(1), *_s3(h3), *_s3(y3), eps,
        NORM=norm, ROUND=norm, **cfg, **dot_options(a3.dtype),
    )
    return y3


def swiglu_mlp_bwd_tiles(x3, ds3, w_gate_up, w_down, act3, dgu3):
    """act3 (recomputed) and dgu3 = d(gate, up) from ds3 = d(h + mlp(h)); shapes as in the kernel docstring.

    x3, ds3 [B, M, K]; w_gate_up [2N, K]; w_down [K, N]; act3 [B, M, N]; dgu3 [B, M, 2N] (up at +N).
    """
    n_batch, m, k = x3.shape
    n = act3.shape[2]
    cfg = _tile_config(m, n, k, n_acc=3)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]), n_batch)
    swiglu_mlp_bwd_kernel[grid](
        x3, ds3, w_gate_up, w_down, act3, dgu3, m, n, k,
        *_s3(x3), *_s3(ds3), w_gate_up.stride(0), w_gate_up.stride(1), w_down.stride(0), w_down.stride(1),
        *_s3(act3), *_s3(dgu3),
        **cfg, **dot_options(x3.dtype),
    )
    return act3, dgu3


def swiglu_mlp_fwd(h2, w_gate_up, w_down, eps: float, y=None, rstd=None):
    """Forward on h2 [M, D] (any strides). Writes into (or allocates) y [M, D] and rstd [M] fp32
    (contiguous); returns them."""
    m, d = h2.shape
    i = w_down.shape[1]
    if y is None:
        y = torch.empty((m, d), dtype=h2.dtype, device=h2.device)
    if rstd is None:
        rstd = torch.empty((m,), dtype=torch.float32, device=h2.device)
    if m == 0:
        return y, rstd
    act = torch.empty((m, i), dtype=h2.dtype, device=h2.device)
    h3 = h2.unsqueeze(0)
    swiglu_gate_up(h3, w_gate_up, act.unsqueeze(0))
    matmul_residual_norm(act.unsqueeze(0), w_down, h3, y.unsqueeze(0), rstd, eps)
    return y, rstd


def swiglu_mlp_bwd(dy2, h2, y2, rstd, w_gate_up, w_down, dh=None):
    """Backward on 2-D views: returns (dh [M, D], dw_gate_up [2I, D], dw_down [D, I]); dh is written into
    the given contiguous [M, D] view when one is passed.

    Triton: norm backward (from y and rstd), then the fused dact/gate/up kernel; torch (cuBLAS): the two
    weight gradients and dh = ds + dgu @ W_gate_up (addmm: one GEMM with the residual add in its epilogue).
    """
    m, d = h2.shape
    i = w_down.shape[1]
    ds, _ = rms_norm_bwd(dy2.unsqueeze(0), rstd.unsqueeze(0), y3=y2.unsqueeze(0))
    ds = ds[0]
    act = torch.empty((m, i), dtype=h2.dtype, device=h2.device)
    dgu = torch.empty((m, 2 * i), dtype=h2.dtype, device=h2.device)
    if m > 0:
        swiglu_mlp_bwd_tiles(h2.unsqueeze(0), ds.unsqueeze(0), w_gate_up, w_down, act.unsqueeze(0), dgu.unsqueeze(0))
    dw_down = ds.t().mm(act)
    dw_gate_up = dgu.t().mm(h2)
    dh = torch.addmm(ds, dgu, w_gate_up, out=dh)
    return dh, dw_gate_up, dw_down


# --------------------------------------------------------------------------------------------------------
def _matmul_spec(name, fn, ptrs, ints, unit_strides, cfg, dtype, aligned):
    consts = {s: 1 for s in unit_strides}
    consts.update({k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages")})
    consts.update({"UPCAST": False, "IN_PREC": "ieee" if dtype == torch.float32 else "tf32"})
    sig = {**{p: ("*fp32" if p == "RSTD" else TL_PTR[dtype]) for p in ptrs}, **{s: "i32" for s in ints}}
    if "eps" in fn.arg_names:
        sig["eps"] = "fp32"
    return {"name": name, "fn": fn, "signature": sig, "constexprs": consts,
            "divisible_by_16": list(ptrs) + [a for a in aligned if a in sig],
            "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}


def compile_targets(dtype: torch.dtype = torch.bfloat16, m: int = 97 * 256, d: int = 512, i: int = 1536):
    """Representative launches (HRM/TRM channel MLP: D=512, I=1536, row-major h and weights) for
    ``add_rms_norm.compile_spec``. Unit strides are constexpr 1 and the rest marked 16-aligned, as the JIT
    specialises them for contiguous tensors (batch strides of the [1, M, D] views are M*D, aligned too)."""
    a = _tile_config(m, i, d, 2)
    b = _norm_config(m, d, i)
    c = _tile_config(m, i, d, 3)
    return [
        _matmul_spec("swiglu_gate_up_kernel", swiglu_gate_up_kernel, ["X", "W", "ACT"],
                     ["M", "N", "K", "s_xb", "s_xm", "s_wn", "s_ab", "s_am"], ["s_xk", "s_wk", "s_an"], a, dtype,
                     ["N", "K", "s_xb", "s_xm", "s_wn", "s_ab", "s_am"]),
        _matmul_spec("matmul_residual_norm_kernel", matmul_residual_norm_kernel, ["A", "W", "H", "Y", "RSTD"],
                     ["M", "N", "K", "s_ab", "s_am", "s_wn", "s_hb", "s_hm", "s_yb", "s_ym"],
                     ["s_ak", "s_wk", "s_hn", "s_yn"], {**b, "NORM": True, "ROUND": True}, dtype,
                     ["N", "K", "s_ab", "s_am", "s_wn", "s_hb", "s_hm", "s_yb", "s_ym"]),
        _matmul_spec("swiglu_mlp_bwd_kernel", swiglu_mlp_bwd_kernel, ["X", "DS", "WGU", "WD", "ACT", "DGU"],
                     ["M", "N", "K", "s_xb", "s_xm", "s_db", "s_dm", "s_gn", "s_wk", "s_ab", "s_am", "s_ob", "s_om"],
                     ["s_xk", "s_dk", "s_gk", "s_wn", "s_an", "s_on"], c, dtype,
                     ["N", "K", "s_xb", "s_xm", "s_db", "s_dm", "s_gn", "s_wk", "s_ab", "s_am", "s_ob", "s_om"]),
    ]
