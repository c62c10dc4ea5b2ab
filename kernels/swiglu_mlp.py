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

from ._common import TL_PTR, dot_options, norm_outputs, round_to, strides3
from .add_rms_norm import rms_norm_bwd

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
def _tile_offsets(pid_m, pid_n, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Row and column indices of tile (pid_m, pid_n) as 64-bit offsets (strided token-mix views span the whole
    tensor), and their masks."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return offs_m.to(tl.int64), offs_n.to(tl.int64), offs_m < M, offs_n < N


@triton.jit
def _load_operand(ptrs, mask, UPCAST: tl.constexpr):
    """A ``tl.dot`` operand tile (0 where masked), upcast to fp32 under UPCAST (see ``_common.dot_options``)."""
    x = tl.load(ptrs, mask=mask, other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


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
    X,
    W,
    ACT,
    M,
    N,
    K,
    s_xb,
    s_xm,
    s_xk,
    s_wn,
    s_wk,
    s_ab,
    s_am,
    s_an,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr,
    IN_PREC: tl.constexpr,
):
    """act[b, m, n] = silu(sum_k X[b,m,k] W[n,k]) * sum_k X[b,m,k] W[N+n,k]   (W is [2N, K]).

    Bytes: reads X once per column tile (from L2 after the first) and W, writes act [M, N] once.
    Eager writes gu [M, 2N], reads it back for silu (writes [M, N]), and reads both for the product
    (writes [M, N] again): about 6*M*N elements more traffic than this kernel.
    """
    pid_m, pid_n = _tile_coords(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    b = tl.program_id(1).to(tl.int64)
    om, on, m_mask, n_mask = _tile_offsets(pid_m, pid_n, M, N, BLOCK_M, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = X + b * s_xb + om[:, None] * s_xm + offs_k[None, :] * s_xk
    wg_ptrs = W + on[None, :] * s_wn + offs_k[:, None] * s_wk
    wu_ptrs = wg_ptrs + N * s_wn
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        x = _load_operand(x_ptrs, m_mask[:, None] & k_mask[None, :], UPCAST)
        wg = _load_operand(wg_ptrs, k_mask[:, None] & n_mask[None, :], UPCAST)
        wu = _load_operand(wu_ptrs, k_mask[:, None] & n_mask[None, :], UPCAST)
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
    A,
    W,
    H,
    Y,
    RSTD,
    M,
    N,
    K,
    s_ab,
    s_am,
    s_ak,
    s_wn,
    s_wk,
    s_hb,
    s_hm,
    s_hn,
    s_yb,
    s_ym,
    s_yn,
    eps,
    NORM: tl.constexpr,
    ROUND: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    IN_PREC: tl.constexpr,
):
    """y[b, m, :] = rms_norm(H[b, m, :] + A[b, m, :] @ W.T) over the N axis (W is [N, K]); rstd[b, m] saved.

    NORM=False: y = H + A @ W.T (one rounding), used for the token-mix input gradient.
    Bytes (forward): reads act once, W (L2-resident) once per row block, h once; writes y and rstd.
    Eager writes the projection, reads it with h to write the sum, then the norm's ~8 passes.
    """
    b = tl.program_id(1).to(tl.int64)
    om, on, m_mask, n_mask = _tile_offsets(tl.program_id(0), 0, M, N, BLOCK_M, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = A + b * s_ab + om[:, None] * s_am + offs_k[None, :] * s_ak
    w_ptrs = W + on[None, :] * s_wn + offs_k[:, None] * s_wk
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        a = _load_operand(a_ptrs, m_mask[:, None] & k_mask[None, :], UPCAST)
        w = _load_operand(w_ptrs, k_mask[:, None] & n_mask[None, :], UPCAST)
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
        tl.store(RSTD + b * M + om, rstd, mask=m_mask)
    tl.store(Y + b * s_yb + om[:, None] * s_ym + on[None, :] * s_yn, s.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def swiglu_mlp_bwd_kernel(
    X,
    DS,
    WGU,
    WD,
    ACT,
    DGU,
    M,
    N,
    K,
    s_xb,
    s_xm,
    s_xk,
    s_db,
    s_dm,
    s_dk,
    s_gn,
    s_gk,
    s_wk,
    s_wn,
    s_ab,
    s_am,
    s_an,
    s_ob,
    s_om,
    s_on,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr,
    IN_PREC: tl.constexpr,
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
    om, on, m_mask, n_mask = _tile_offsets(pid_m, pid_n, M, N, BLOCK_M, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
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
        x = _load_operand(x_ptrs, mk, UPCAST)
        d = _load_operand(d_ptrs, mk, UPCAST)
        wg = _load_operand(wg_ptrs, kn, UPCAST)
        wu = _load_operand(wu_ptrs, kn, UPCAST)
        wd = _load_operand(wd_ptrs, kn, UPCAST)
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
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=8 if block_n >= 256 else 4, num_stages=2)


def swiglu_gate_up(x3, w_gate_up, act3):
    """act3[b] = silu(x3[b] @ Wg.T) * (x3[b] @ Wu.T); x3 [B, M, K], w_gate_up [2N, K], act3 [B, M, N]."""
    n_batch, m, k = x3.shape
    n = act3.shape[2]
    cfg = _tile_config(m, n, k, n_acc=2)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]), n_batch)
    swiglu_gate_up_kernel[grid](
        x3,
        w_gate_up,
        act3,
        m,
        n,
        k,
        *strides3(x3),
        w_gate_up.stride(0),
        w_gate_up.stride(1),
        *strides3(act3),
        **cfg,
        **dot_options(x3.dtype),
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
        a3,
        w,
        h3,
        y3,
        rstd if rstd is not None else y3,
        m,
        n,
        k,
        *strides3(a3),
        w.stride(0),
        w.stride(1),
        *strides3(h3),
        *strides3(y3),
        eps,
        NORM=norm,
        ROUND=norm,
        **cfg,
        **dot_options(a3.dtype),
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
        x3,
        ds3,
        w_gate_up,
        w_down,
        act3,
        dgu3,
        m,
        n,
        k,
        *strides3(x3),
        *strides3(ds3),
        w_gate_up.stride(0),
        w_gate_up.stride(1),
        w_down.stride(0),
        w_down.stride(1),
        *strides3(act3),
        *strides3(dgu3),
        **cfg,
        **dot_options(x3.dtype),
    )
    return act3, dgu3


def swiglu_mlp_fwd(h2, w_gate_up, w_down, eps: float, y=None, rstd=None):
    """Forward on h2 [M, D] (any strides). Writes into (or allocates) y [M, D] and rstd [M] fp32
    (contiguous); returns them."""
    m = h2.shape[0]
    i = w_down.shape[1]
    y, rstd = norm_outputs(h2, y, rstd)
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
    weight gradients and dh = ds + dgu @ W_gate_up (addmm: one GEMM with the residual add in its epilogue, one
    rounding). On the CPU (the interpreter) dh is the product, then the add, as eager autograd computes it: MKL's
    SGEMM with beta=1 and fewer than 4 rows adds each of the 2I products into C in turn, rounding at the scale of
    ds every time (measured: 13 ulps of fp32 where eps dominates the norm and ds ~ 500, fuzz case 108).
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
    if ds.is_cuda:
        dh = torch.addmm(ds, dgu, w_gate_up, out=dh)
    else:
        dh = torch.mm(dgu, w_gate_up, out=dh).add_(ds)
    return dh, dw_gate_up, dw_down


# --------------------------------------------------------------------------------------------------------
# Ahead-of-time compile metadata (entry format: see ``_common``)
# --------------------------------------------------------------------------------------------------------
_KERNEL_PTRS = {  # pointer arguments of each kernel, always 16-aligned (torch allocations)
    "gate_up": ("swiglu_gate_up_kernel", ["X", "W", "ACT"]),
    "norm": ("matmul_residual_norm_kernel", ["A", "W", "H", "Y", "RSTD"]),
    "bwd": ("swiglu_mlp_bwd_kernel", ["X", "DS", "WGU", "WD", "ACT", "DGU"]),
}


def block_compile_targets(dtype: torch.dtype, rows: int, n: int, i: int, layout: dict, suffix: str = ""):
    """``compile_targets()`` entries of the three kernels of one SwiGLU block over ``n`` features of ``rows`` rows
    with hidden size ``i``: gate/up (M=rows, N=i, K=n), down + norm (M=rows, N=n, K=i), backward tiles (M=rows,
    N=i, K=n). ``layout[kernel] = (unit, unaligned)`` for kernel in gate_up/norm/bwd: the stride arguments equal
    to 1 (constexpr, as the JIT specialises them) and the integer arguments not known to be multiples of 16;
    every other integer argument and every pointer is marked 16-aligned."""
    kernels = {
        "gate_up": (swiglu_gate_up_kernel, _tile_config(rows, i, n, 2)),
        "norm": (matmul_residual_norm_kernel, {**_norm_config(rows, n, i), "NORM": True, "ROUND": True}),
        "bwd": (swiglu_mlp_bwd_kernel, _tile_config(rows, i, n, 3)),
    }
    specs = []
    for key, (fn, cfg) in kernels.items():
        name, ptrs = _KERNEL_PTRS[key]
        unit, unaligned = layout[key]
        launch = {k: cfg[k] for k in ("num_warps", "num_stages")}
        consts = {
            **{s: 1 for s in unit},
            **{k: v for k, v in cfg.items() if k not in launch},
            **dot_options(dtype, interpret=False),
        }
        sig = {
            a: ("*fp32" if a == "RSTD" else TL_PTR[dtype]) if a in ptrs else ("fp32" if a == "eps" else "i32")
            for a in fn.arg_names
            if a not in consts
        }
        aligned = [a for a, ty in sig.items() if ty.startswith("*") or (ty == "i32" and a not in unaligned)]
        specs.append(
            {
                "name": name + suffix,
                "fn": fn,
                "signature": sig,
                "constexprs": consts,
                "divisible_by_16": aligned,
                **launch,
            }
        )
    return specs


def compile_targets(dtype: torch.dtype = torch.bfloat16, m: int = 97 * 256, d: int = 512, i: int = 1536):
    """Representative launches (HRM/TRM channel MLP: D=512, I=1536, row-major h and weights). Unit strides are
    constexpr 1 and the rest marked 16-aligned, as the JIT specialises them for contiguous tensors (batch strides
    of the [1, M, D] views are M*D, aligned too); the row count M is not assumed aligned."""
    return block_compile_targets(
        dtype,
        m,
        d,
        i,
        layout={
            "gate_up": (["s_xk", "s_wk", "s_an"], ["M"]),
            "norm": (["s_ak", "s_wk", "s_hn", "s_yn"], ["M"]),
            "bwd": (["s_xk", "s_dk", "s_gk", "s_wn", "s_an", "s_on"], ["M"]),
        },
    )
