"""Fused RoPE + non-causal softmax attention straight from the fused qkv projection (forward and backward).

Layout: ``qkv`` is ``[B, S, 3*H*hd]`` with a contiguous last dimension; q, k and v of head ``h`` are the columns
``h*hd``, ``(H+h)*hd`` and ``(2H+h)*hd`` (+ ``0..hd``). The kernels address it through its strides, so nothing is
split, transposed or copied. The output is ``[B, S, H*hd]`` (head ``h`` in columns ``h*hd..``), ready for ``o_proj``.

Math reproduced (HRM/TRM attention): q and k are rotated NeoX-style in fp32
(``x*cos + rotate_half(x)*sin``, ``rotate_half(x) = cat(-x2, x1)``) and rounded back to the input dtype *before*
the attention, exactly as the reference casts them; then ``softmax(q k^T / sqrt(hd)) v`` with fp32 accumulation,
the probabilities rounded to the input dtype for the ``p @ v`` product (as flash attention does).

Kernels (flash-attention-2 structure, online softmax over ``BLOCK_M x BLOCK_N`` tiles, masked tails; grid axis
0 = batch*head, axis 1 = tiles). Byte counts below use ``E = B*S*H*hd`` (elements of one of q, k, v) and bf16,
so q, k, v, out each weigh ``2E`` bytes; ``T_q``/``T_k`` = number of query/key tiles (1 and 2 for Sudoku's
97 positions, 8 and 15 for Maze's 916 at hd 64).

* ``_attn_fwd_kernel``: one program per (batch*head, query tile). Writes ``out`` and the per-row natural
  log-sum-exp ``lse`` ``[B, H, S]`` fp32 for the backward. Moves ``2E`` (q) + ``4E*T_q`` (k, v per query
  tile, mostly L2 hits) + ``2E`` (out) + ``4*B*H*S`` (lse) + cos/sin (fp32, L2-resident): ``8E`` at Sudoku size.
  The eager sequence it replaces (fp32 upcast of q and k, two multiplies, the negate + ``cat`` of rotate_half,
  the add, the downcast: about ``52E`` per tensor, ``104E`` for q and k; SDPA ``8E``; the output transpose copy
  ``4E``) moves about ``116E``: ~14x.
* ``_attn_bwd_preprocess_kernel``: ``delta = rowsum(dO * O)`` per row: reads ``4E``, writes ``4*B*H*S``.
* ``_attn_bwd_dkdv_kernel``: one program per (batch*head, key tile) accumulates dK, dV over all query tiles,
  then applies RoPE's transpose to dK and writes both into ``dqkv``: reads ``4E`` (k, v) + ``4E*T_k`` (q, dO),
  writes ``4E``.
* ``_attn_bwd_dq_kernel``: one program per (batch*head, query tile) accumulates dQ over all key tiles, applies
  RoPE's transpose and writes it into ``dqkv``: reads ``4E`` (q, dO) + ``4E*T_q`` (k, v), writes ``2E``.
  The whole backward moves about ``34E`` at Sudoku size and writes ``dqkv`` exactly once (no atomics,
  deterministic). The eager backward (SDPA backward ``16E``, the output-transpose gradient copy ``4E``, the
  reverse rotation chain ``~50E`` each for dq and dk, the ``stack`` of the three gradients into dqkv ``12E``)
  moves about ``130E``.

Numerics: everything is upcast to fp32 right after load (the Triton interpreter's bf16 arithmetic is broken).
``INTERPRET`` (set under the interpreter) feeds ``tl.dot`` fp32 copies of the (already rounded) 16-bit operands,
which gives the same products as a 16-bit tensor-core dot with fp32 accumulation, and rounds to bf16 on the bits
(the interpreter's own conversion truncates). fp32 inputs use ``DOT_PRECISION`` = 3xTF32 on the GPU so they are
not silently rounded to tf32.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import dot_operand, dot_precision, interpreting, round_rne

LOG2E = 1.4426950408889634
# Kernels may only read constexpr globals.
_LOG2E = tl.constexpr(LOG2E)
_LN2 = tl.constexpr(0.6931471805599453)

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)


# ----------------------------------------------------------------------------------------------- device helpers
@triton.jit
def _load_rows(base, rows, stride_s, S, HD: tl.constexpr):
    """``[R, HD]`` tile of one head (rows = positions), fp32; rows >= S read as 0."""
    cols = tl.arange(0, HD)
    mask = rows[:, None] < S
    return tl.load(base + rows[:, None] * stride_s + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_rope_rows(
    base,
    rows,
    stride_s,
    cos_ptr,
    sin_ptr,
    stride_cs,
    S,
    HD: tl.constexpr,
    HAS_ROPE: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """``[R, HD]`` tile of q or k, rotated in fp32 and rounded to the storage dtype (the reference's cast), as fp32.

    The rotate_half partner of column d is column (d + HD/2) % HD, read again from memory (an L1 hit) rather
    than shuffled in registers.
    """
    x = _load_rows(base, rows, stride_s, S, HD)
    if HAS_ROPE:
        cols = tl.arange(0, HD)
        mask = rows[:, None] < S
        partner = (cols + HD // 2) % HD
        xp = tl.load(base + rows[:, None] * stride_s + partner[None, :], mask=mask, other=0.0).to(tl.float32)
        c = tl.load(cos_ptr + rows[:, None] * stride_cs + cols[None, :], mask=mask, other=0.0)
        s = tl.load(sin_ptr + rows[:, None] * stride_cs + cols[None, :], mask=mask, other=0.0)
        # rotate_half(x)[d] = -x[d + HD/2] for the first half, x[d - HD/2] for the second.
        sign = tl.where(cols < HD // 2, -1.0, 1.0)
        x = x * c + (xp * sign[None, :]) * s
        x = round_rne(x, base.dtype.element_ty, INTERPRET).to(tl.float32)
    return x


@triton.jit
def _head(qkv_ptr, stride_qb, H: tl.constexpr, HD: tl.constexpr):
    """This program's (batch*head) id ``bh`` (grid axis 0, whose limit is 2**31 - 1; axis 1 allows only 65535),
    its batch ``b`` (int64) and head ``h``, and the base pointers of its q, k and v columns in qkv."""
    bh = tl.program_id(0)
    b = (bh // H).to(tl.int64)
    h = bh % H
    q_base = qkv_ptr + b * stride_qb + h * HD
    return bh, b, h, q_base, q_base + H * HD, q_base + 2 * H * HD


@triton.jit
def _load_key_tile(
    k_base,
    v_base,
    offs_n,
    stride_qs,
    cos_ptr,
    sin_ptr,
    stride_cs,
    S,
    HD: tl.constexpr,
    HAS_ROPE: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """Rows ``offs_n`` of one head's rotated k and of its v, as dot operands."""
    DTYPE: tl.constexpr = k_base.dtype.element_ty
    k = _load_rope_rows(k_base, offs_n, stride_qs, cos_ptr, sin_ptr, stride_cs, S, HD, HAS_ROPE, INTERPRET)
    k = dot_operand(k, DTYPE, INTERPRET)
    v = dot_operand(_load_rows(v_base, offs_n, stride_qs, S, HD), DTYPE, INTERPRET)
    return k, v


@triton.jit
def _load_query_tile(
    q_base,
    do_base,
    lse_base,
    delta_base,
    offs_m,
    stride_qs,
    stride_ds,
    cos_ptr,
    sin_ptr,
    stride_cs,
    S,
    HD: tl.constexpr,
    HAS_ROPE: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """What the backward needs of query rows ``offs_m``: rotated q and dO as dot operands, lse in log2 units and
    delta. Padded rows get lse = +inf, hence p = 0: they add nothing to dK, dV."""
    DTYPE: tl.constexpr = q_base.dtype.element_ty
    m_mask = offs_m < S
    q = _load_rope_rows(q_base, offs_m, stride_qs, cos_ptr, sin_ptr, stride_cs, S, HD, HAS_ROPE, INTERPRET)
    q = dot_operand(q, DTYPE, INTERPRET)
    do = dot_operand(_load_rows(do_base, offs_m, stride_ds, S, HD), DTYPE, INTERPRET)
    lse = tl.load(lse_base + offs_m, mask=m_mask, other=float("inf")) * _LOG2E
    delta = tl.load(delta_base + offs_m, mask=m_mask, other=0.0)
    return q, do, lse, delta


@triton.jit
def _store_grad_rope(
    base,
    g,
    rows,
    stride_s,
    cos_ptr,
    sin_ptr,
    stride_cs,
    S,
    HD: tl.constexpr,
    HAS_ROPE: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """Store the gradient of a q or k tile ``g`` [R, HD] (w.r.t. the rotated, rounded copy) as the gradient of
    the un-rotated input: round to the storage dtype (the reference's cast), apply the transpose of the rotation
    in fp32 (``dx1 = g1*c1 + g2*s2``, ``dx2 = g2*c2 - g1*s1``), round again."""
    DTYPE: tl.constexpr = base.dtype.element_ty
    if HAS_ROPE:
        R: tl.constexpr = g.shape[0]
        HALF: tl.constexpr = HD // 2
        g = round_rne(g, DTYPE, INTERPRET).to(tl.float32)
        # Split the tile into its two halves in registers (a layout shuffle once per program, no memory trip).
        g1, g2 = tl.split(tl.permute(tl.reshape(g, [R, 2, HALF]), [0, 2, 1]))
        hcols = tl.arange(0, HALF)
        mask = rows[:, None] < S
        cs_off = rows[:, None] * stride_cs + hcols[None, :]
        c1 = tl.load(cos_ptr + cs_off, mask=mask, other=0.0)
        c2 = tl.load(cos_ptr + cs_off + HALF, mask=mask, other=0.0)
        s1 = tl.load(sin_ptr + cs_off, mask=mask, other=0.0)
        s2 = tl.load(sin_ptr + cs_off + HALF, mask=mask, other=0.0)
        d1 = g1 * c1 + g2 * s2
        d2 = g2 * c2 - g1 * s1
        out_off = rows[:, None] * stride_s + hcols[None, :]
        tl.store(base + out_off, round_rne(d1, DTYPE, INTERPRET), mask=mask)
        tl.store(base + out_off + HALF, round_rne(d2, DTYPE, INTERPRET), mask=mask)
    else:
        cols = tl.arange(0, HD)
        tl.store(
            base + rows[:, None] * stride_s + cols[None, :], round_rne(g, DTYPE, INTERPRET), mask=rows[:, None] < S
        )


# ------------------------------------------------------------------------------------------------------ kernels
@triton.jit
def _attn_fwd_kernel(
    qkv_ptr,
    cos_ptr,
    sin_ptr,
    out_ptr,
    lse_ptr,
    S,
    stride_qb,
    stride_qs,
    stride_cs,
    stride_ob,
    stride_os,
    qk_scale,
    H: tl.constexpr,
    HD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_ROPE: tl.constexpr,
    INTERPRET: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Forward: out = softmax(rope(q) rope(k)^T * scale) v for one query tile of one (batch, head)."""
    bh, b, h, q_base, k_base, v_base = _head(qkv_ptr, stride_qb, H, HD)
    pid_m = tl.program_id(1)
    DTYPE: tl.constexpr = qkv_ptr.dtype.element_ty
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HD)

    q = _load_rope_rows(q_base, offs_m, stride_qs, cos_ptr, sin_ptr, stride_cs, S, HD, HAS_ROPE, INTERPRET)
    q = dot_operand(q, DTYPE, INTERPRET)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HD], tl.float32)
    for start_n in range(0, S, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v = _load_key_tile(
            k_base, v_base, offs_n, stride_qs, cos_ptr, sin_ptr, stride_cs, S, HD, HAS_ROPE, INTERPRET
        )
        # Scores in log2 units: exp2 is the native instruction.
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        qk = tl.where(offs_n[None, :] < S, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(dot_operand(p, DTYPE, INTERPRET), v, input_precision=DOT_PRECISION)
        m_i = m_new

    acc = acc / l_i[:, None]
    row_mask = offs_m < S
    out_base = out_ptr + b * stride_ob + h * HD
    tl.store(
        out_base + offs_m[:, None] * stride_os + offs_d[None, :],
        round_rne(acc, out_ptr.dtype.element_ty, INTERPRET),
        mask=row_mask[:, None],
    )
    # Natural-log logsumexp of the scaled scores (m_i, l_i are in log2 units).
    tl.store(lse_ptr + bh.to(tl.int64) * S + offs_m, (m_i + tl.math.log2(l_i)) * _LN2, mask=row_mask)


@triton.jit
def _attn_bwd_preprocess_kernel(
    out_ptr,
    do_ptr,
    delta_ptr,
    S,
    stride_ob,
    stride_os,
    stride_db,
    stride_ds,
    H: tl.constexpr,
    HD: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """delta[b, h, s] = sum_d dO * O (fp32), the softmax-backward row term."""
    bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o = _load_rows(out_ptr + b * stride_ob + h * HD, offs_m, stride_os, S, HD)
    do = _load_rows(do_ptr + b * stride_db + h * HD, offs_m, stride_ds, S, HD)
    tl.store(delta_ptr + bh.to(tl.int64) * S + offs_m, tl.sum(o * do, 1), mask=offs_m < S)


@triton.jit
def _attn_bwd_dkdv_kernel(
    qkv_ptr,
    cos_ptr,
    sin_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    dqkv_ptr,
    S,
    stride_qb,
    stride_qs,
    stride_cs,
    stride_db,
    stride_ds,
    stride_gb,
    stride_gs,
    qk_scale,
    sm_scale,
    H: tl.constexpr,
    HD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_ROPE: tl.constexpr,
    INTERPRET: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """dK, dV for one key tile of one (batch, head), looping over all query tiles (transposed scores)."""
    bh, b, h, q_base, k_base, v_base = _head(qkv_ptr, stride_qb, H, HD)
    pid_n = tl.program_id(1)
    DTYPE: tl.constexpr = qkv_ptr.dtype.element_ty
    do_base = do_ptr + b * stride_db + h * HD
    lse_base = lse_ptr + bh.to(tl.int64) * S
    delta_base = delta_ptr + bh.to(tl.int64) * S
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)

    k, v = _load_key_tile(k_base, v_base, offs_n, stride_qs, cos_ptr, sin_ptr, stride_cs, S, HD, HAS_ROPE, INTERPRET)
    dk = tl.zeros([BLOCK_N, HD], tl.float32)
    dv = tl.zeros([BLOCK_N, HD], tl.float32)
    for start_m in range(0, S, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q, do, lse, delta = _load_query_tile(
            q_base,
            do_base,
            lse_base,
            delta_base,
            offs_m,
            stride_qs,
            stride_ds,
            cos_ptr,
            sin_ptr,
            stride_cs,
            S,
            HD,
            HAS_ROPE,
            INTERPRET,
        )
        qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
        pT = tl.math.exp2(qkT - lse[None, :])
        dv += tl.dot(dot_operand(pT, DTYPE, INTERPRET), do, input_precision=DOT_PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dot_operand(dsT, DTYPE, INTERPRET), q, input_precision=DOT_PRECISION)

    g_base = dqkv_ptr + b * stride_gb + h * HD
    _store_grad_rope(
        g_base + H * HD, dk * sm_scale, offs_n, stride_gs, cos_ptr, sin_ptr, stride_cs, S, HD, HAS_ROPE, INTERPRET
    )
    _store_grad_rope(g_base + 2 * H * HD, dv, offs_n, stride_gs, cos_ptr, sin_ptr, stride_cs, S, HD, False, INTERPRET)


@triton.jit
def _attn_bwd_dq_kernel(
    qkv_ptr,
    cos_ptr,
    sin_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    dqkv_ptr,
    S,
    stride_qb,
    stride_qs,
    stride_cs,
    stride_db,
    stride_ds,
    stride_gb,
    stride_gs,
    qk_scale,
    sm_scale,
    H: tl.constexpr,
    HD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_ROPE: tl.constexpr,
    INTERPRET: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """dQ for one query tile of one (batch, head), looping over all key tiles."""
    bh, b, h, q_base, k_base, v_base = _head(qkv_ptr, stride_qb, H, HD)
    pid_m = tl.program_id(1)
    DTYPE: tl.constexpr = qkv_ptr.dtype.element_ty
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    q, do, lse, delta = _load_query_tile(
        q_base,
        do_ptr + b * stride_db + h * HD,
        lse_ptr + bh.to(tl.int64) * S,
        delta_ptr + bh.to(tl.int64) * S,
        offs_m,
        stride_qs,
        stride_ds,
        cos_ptr,
        sin_ptr,
        stride_cs,
        S,
        HD,
        HAS_ROPE,
        INTERPRET,
    )
    dq = tl.zeros([BLOCK_M, HD], tl.float32)
    for start_n in range(0, S, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v = _load_key_tile(
            k_base, v_base, offs_n, stride_qs, cos_ptr, sin_ptr, stride_cs, S, HD, HAS_ROPE, INTERPRET
        )
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        # Padded keys must get p = 0 (their zero k would otherwise score 0, not -inf).
        p = tl.where(offs_n[None, :] < S, tl.math.exp2(qk - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(dot_operand(ds, DTYPE, INTERPRET), k, input_precision=DOT_PRECISION)

    _store_grad_rope(
        dqkv_ptr + b * stride_gb + h * HD,
        dq * sm_scale,
        offs_m,
        stride_gs,
        cos_ptr,
        sin_ptr,
        stride_cs,
        S,
        HD,
        HAS_ROPE,
        INTERPRET,
    )


# ---------------------------------------------------------------------------------------------------- launchers
def _pow2_at_least_16(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def fwd_config(seq_len: int, head_dim: int, dtype: torch.dtype) -> dict:
    """Tile sizes and launch options for the forward kernel (not autotuned: one point per head_dim and dtype,
    chosen so that the sm_90 build has no spills; see ``compile_targets``)."""
    block_m = 64 if head_dim >= 128 or dtype == torch.float32 else 128
    return dict(
        BLOCK_M=min(block_m, _pow2_at_least_16(seq_len)),
        BLOCK_N=min(64, _pow2_at_least_16(seq_len)),
        num_warps=8 if head_dim >= 64 else 4,
        num_stages=2,
    )


def bwd_config(seq_len: int, head_dim: int, dtype: torch.dtype, capability: tuple[int, int] = (9, 0)) -> dict:
    """Tile sizes for the two backward kernels (BLOCK_N: dK/dV's key tile and dQ's loop tile; BLOCK_M: the
    reverse). dK/dV keep four [BLOCK_N, hd] tiles live: 8 warps for hd 128, 32-wide tiles on 8 warps for fp32
    (3xTF32 holds each operand twice), and 32-row key tiles before Hopper (mma.sync keeps the accumulators in
    registers), where the build for that architecture would otherwise spill."""
    fp32 = dtype == torch.float32
    block = min(32 if fp32 else 64, _pow2_at_least_16(seq_len))
    block_n = min(block, 32) if capability < (9, 0) else block
    return dict(BLOCK_M=block, BLOCK_N=block_n, num_warps=8 if head_dim >= 128 or fp32 else 4, num_stages=2)


@functools.lru_cache(maxsize=None)
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else (9, 0)


def _cos_sin_args(qkv: torch.Tensor, cos: Optional[torch.Tensor], sin: Optional[torch.Tensor]):
    """Pointers and row stride for cos/sin; without RoPE the qkv pointer stands in (never read)."""
    if cos is None:
        return qkv, qkv, 0, False
    return cos, sin, cos.stride(0), True


_PREPROCESS_OPTS = dict(num_warps=4, num_stages=1)  # no loop: nothing to pipeline


def _launch_opts(cfg: dict) -> dict:
    return {k: cfg[k] for k in ("num_warps", "num_stages")}


def rotary_attention_fwd(
    qkv: torch.Tensor,
    cos: Optional[torch.Tensor],
    sin: Optional[torch.Tensor],
    num_heads: int,
    config: Optional[dict] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel. Returns ``(out [B, S, H*hd] in qkv.dtype, lse [B, H, S] fp32)``.

    ``config`` overrides the tile sizes (tests use it to exercise several tiles on small inputs).
    Expects validated inputs (see ``fastrecur.ops.rotary_attention``).
    """
    B, S, C = qkv.shape
    H = num_heads
    hd = C // (3 * H)
    out = torch.empty((B, S, H * hd), device=qkv.device, dtype=qkv.dtype)
    lse = torch.empty((B, H, S), device=qkv.device, dtype=torch.float32)
    if B == 0 or S == 0:
        return out, lse
    cfg = dict(fwd_config(S, hd, qkv.dtype), **(config or {}))
    cos_a, sin_a, stride_cs, has_rope = _cos_sin_args(qkv, cos, sin)
    grid = (B * H, triton.cdiv(S, cfg["BLOCK_M"]))
    _attn_fwd_kernel[grid](
        qkv,
        cos_a,
        sin_a,
        out,
        lse,
        S,
        qkv.stride(0),
        qkv.stride(1),
        stride_cs,
        out.stride(0),
        out.stride(1),
        LOG2E / math.sqrt(hd),
        H=H,
        HD=hd,
        BLOCK_M=cfg["BLOCK_M"],
        BLOCK_N=cfg["BLOCK_N"],
        HAS_ROPE=has_rope,
        INTERPRET=interpreting(),
        DOT_PRECISION=dot_precision(qkv.dtype),
        **_launch_opts(cfg),
    )
    return out, lse


def rotary_attention_bwd(
    grad_out: torch.Tensor,
    qkv: torch.Tensor,
    cos: Optional[torch.Tensor],
    sin: Optional[torch.Tensor],
    out: torch.Tensor,
    lse: torch.Tensor,
    num_heads: int,
    config: Optional[dict] = None,
) -> torch.Tensor:
    """Launch the backward kernels. Returns ``dqkv`` shaped and typed like ``qkv`` (contiguous).

    ``grad_out`` must have a contiguous last dimension (the op makes sure of it).
    """
    B, S, C = qkv.shape
    H = num_heads
    hd = C // (3 * H)
    dqkv = torch.empty((B, S, C), device=qkv.device, dtype=qkv.dtype)
    if B == 0 or S == 0:
        return dqkv
    cfg = dict(bwd_config(S, hd, qkv.dtype, _capability(qkv.device)), **(config or {}))
    cos_a, sin_a, stride_cs, has_rope = _cos_sin_args(qkv, cos, sin)
    delta = torch.empty((B, H, S), device=qkv.device, dtype=torch.float32)
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    _attn_bwd_preprocess_kernel[(B * H, triton.cdiv(S, bm))](
        out,
        grad_out,
        delta,
        S,
        out.stride(0),
        out.stride(1),
        grad_out.stride(0),
        grad_out.stride(1),
        H=H,
        HD=hd,
        BLOCK_M=bm,
        **_PREPROCESS_OPTS,
    )
    common = (
        qkv,
        cos_a,
        sin_a,
        grad_out,
        lse,
        delta,
        dqkv,
        S,
        qkv.stride(0),
        qkv.stride(1),
        stride_cs,
        grad_out.stride(0),
        grad_out.stride(1),
        dqkv.stride(0),
        dqkv.stride(1),
        LOG2E / math.sqrt(hd),
        1.0 / math.sqrt(hd),
    )
    meta = dict(
        H=H,
        HD=hd,
        BLOCK_M=bm,
        BLOCK_N=bn,
        HAS_ROPE=has_rope,
        INTERPRET=interpreting(),
        DOT_PRECISION=dot_precision(qkv.dtype),
        **_launch_opts(cfg),
    )
    _attn_bwd_dkdv_kernel[(B * H, triton.cdiv(S, bn))](*common, **meta)
    _attn_bwd_dq_kernel[(B * H, triton.cdiv(S, bm))](*common, **meta)
    return dqkv


# ------------------------------------------------------------------------------------------- compile metadata
def compile_targets(
    seq_len: int = 916,
    head_dim: int = 64,
    num_heads: int = 8,
    dtype: str = "bf16",
    rope: bool = True,
    capability: tuple[int, int] = (9, 0),
) -> list[dict]:
    """Representative launches of this file's kernels (entry format: see ``_common``). Default: the Maze shape
    (916 positions), Hopper tile sizes (``capability`` picks another architecture's backward tiles)."""
    ptr, f32p = f"*{dtype}", "*fp32"
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    fwd = fwd_config(seq_len, head_dim, torch_dtype)
    bwd = bwd_config(seq_len, head_dim, torch_dtype, capability)
    rope_meta = dict(
        H=num_heads,
        HD=head_dim,
        HAS_ROPE=rope,
        INTERPRET=False,
        DOT_PRECISION=dot_precision(torch_dtype, interpret=False),
    )
    bwd_sig = dict(
        qkv_ptr=ptr,
        cos_ptr=f32p,
        sin_ptr=f32p,
        do_ptr=ptr,
        lse_ptr=f32p,
        delta_ptr=f32p,
        dqkv_ptr=ptr,
        S="i32",
        stride_qb="i32",
        stride_qs="i32",
        stride_cs="i32",
        stride_db="i32",
        stride_ds="i32",
        stride_gb="i32",
        stride_gs="i32",
        qk_scale="fp32",
        sm_scale="fp32",
    )
    bwd_cx = dict(rope_meta, BLOCK_M=bwd["BLOCK_M"], BLOCK_N=bwd["BLOCK_N"])
    bwd_opts = _launch_opts(bwd)
    targets = [
        dict(
            name="_attn_fwd_kernel",
            fn=_attn_fwd_kernel,
            signature=dict(
                qkv_ptr=ptr,
                cos_ptr=f32p,
                sin_ptr=f32p,
                out_ptr=ptr,
                lse_ptr=f32p,
                S="i32",
                stride_qb="i32",
                stride_qs="i32",
                stride_cs="i32",
                stride_ob="i32",
                stride_os="i32",
                qk_scale="fp32",
            ),
            constexprs=dict(rope_meta, BLOCK_M=fwd["BLOCK_M"], BLOCK_N=fwd["BLOCK_N"]),
            options=_launch_opts(fwd),
        ),
        dict(
            name="_attn_bwd_preprocess_kernel",
            fn=_attn_bwd_preprocess_kernel,
            signature=dict(
                out_ptr=ptr,
                do_ptr=ptr,
                delta_ptr=f32p,
                S="i32",
                stride_ob="i32",
                stride_os="i32",
                stride_db="i32",
                stride_ds="i32",
            ),
            constexprs=dict(H=num_heads, HD=head_dim, BLOCK_M=bwd["BLOCK_M"]),
            options=dict(_PREPROCESS_OPTS),
        ),
        dict(
            name="_attn_bwd_dkdv_kernel",
            fn=_attn_bwd_dkdv_kernel,
            signature=bwd_sig,
            constexprs=bwd_cx,
            options=bwd_opts,
        ),
        dict(
            name="_attn_bwd_dq_kernel", fn=_attn_bwd_dq_kernel, signature=bwd_sig, constexprs=bwd_cx, options=bwd_opts
        ),
    ]
    # All strides are multiples of 16 elements for hd >= 16 (so are batch strides, S * row stride); S (and with
    # it the lse/delta row offsets) usually is not.
    for t in targets:
        t["divisible_by_16"] = [a for a, ty in t["signature"].items() if ty.startswith("*") or a.startswith("stride_")]
    return targets
