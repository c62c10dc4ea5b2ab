"""Fused residual add + RMSNorm (forward), and the RMSNorm backward every fused op in fastrecur reuses.

Math (rows of length N, per row):
    s = round_dtype(x + residual)            # eager adds in the activation dtype first
    rstd = 1 / sqrt(mean(s^2) + eps)         # fp32
    y = round_dtype(s * rstd [* weight])

Backward, with n = s * rstd (the normalised row, fp32) and dn = dy [* weight]:
    ds = rstd * (dn - n * mean(dn * n))      # the same for x and residual
    dweight = sum_rows(dy * n)
Without a weight, n is the output itself (up to its rounding), so the backward needs only y and rstd:
nothing of size [M, N] is saved that the caller does not already hold.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import TL_PTR, norm_outputs, round_to, strides3

__all__ = ["add_rms_norm_fwd", "rms_norm_bwd", "compile_targets"]


# --------------------------------------------------------------------------------------------------------
# Forward: y = rms_norm(x + residual) [* weight], rstd saved (fp32, one per row)
# --------------------------------------------------------------------------------------------------------
@triton.jit
def add_rms_norm_fwd_kernel(
    X,
    R,
    W,
    Y,
    RSTD,
    n_rows,
    n_cols,
    stride_xm,
    stride_xn,
    stride_rm,
    stride_rn,
    stride_ym,
    eps,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One program normalises BLOCK_M full rows (BLOCK_N >= n_cols).

    Bytes: reads x and residual once, writes y once plus 4 bytes of rstd per row: 3 passes over [M, N].
    Eager (add, float, pow, mean, add, rsqrt, mul, to) makes about 8 passes, several of them in fp32.
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    col_mask = cols < n_cols
    mask = row_mask[:, None] & col_mask[None, :]
    rows64 = rows.to(tl.int64)  # M * N may exceed 2**31 for large batches
    x = tl.load(X + rows64[:, None] * stride_xm + cols[None, :] * stride_xn, mask=mask, other=0.0)
    r = tl.load(R + rows64[:, None] * stride_rm + cols[None, :] * stride_rn, mask=mask, other=0.0)
    s = round_to(x.to(tl.float32) + r.to(tl.float32), Y.dtype.element_ty)
    rstd = tl.math.rsqrt(tl.sum(s * s, axis=1) / n_cols + eps)
    y = s * rstd[:, None]
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
        y = y * w[None, :]
    tl.store(Y + rows64[:, None] * stride_ym + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows, rstd, mask=row_mask)


def _row_block(n_cols: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for the row-wise norm kernels: ~4K elements per program."""
    block_n = max(16, triton.next_power_of_2(n_cols))
    block_m = max(1, min(64, 4096 // block_n))
    num_warps = 4 if block_m * block_n <= 4096 else 8
    return block_m, block_n, num_warps


def add_rms_norm_fwd(x2: torch.Tensor, r2: torch.Tensor, weight, eps: float, y=None, rstd=None):
    """Launch the forward on 2-D ``[M, N]`` views (any strides). Writes into (or allocates) y [M, N] with unit
    column stride and rstd [M] fp32 (contiguous); returns them."""
    n_rows, n_cols = x2.shape
    y, rstd = norm_outputs(x2, y, rstd)
    if n_rows == 0:
        return y, rstd
    if weight is not None:
        weight = weight.contiguous()  # [N]: the kernel reads it with unit stride
    block_m, block_n, num_warps = _row_block(n_cols)
    add_rms_norm_fwd_kernel[(triton.cdiv(n_rows, block_m),)](
        x2,
        r2,
        weight if weight is not None else x2,
        y,
        rstd,
        n_rows,
        n_cols,
        x2.stride(0),
        x2.stride(1),
        r2.stride(0),
        r2.stride(1),
        y.stride(0),
        eps,
        HAS_WEIGHT=weight is not None,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        num_warps=num_warps,
    )
    return y, rstd


# --------------------------------------------------------------------------------------------------------
# Backward, shared by every op that ends in rms_norm: tensors are 3-D [batch, rows, cols] with any strides,
# the norm runs over cols. add_rms_norm / swiglu_mlp use [1, M, D]; token_mix uses [B, D, L] views of
# [B, L, D] memory (cols = tokens, stride D), so no transpose is ever materialised.
# --------------------------------------------------------------------------------------------------------
@triton.jit
def rms_norm_bwd_kernel(
    DY,
    Y,
    X,
    R,
    W,
    RSTD,
    DS,
    DW,
    n_batch,
    n_rows,
    n_cols,
    s_dy_b,
    s_dy_r,
    s_dy_c,
    s_y_b,
    s_y_r,
    s_y_c,
    s_x_b,
    s_x_r,
    s_x_c,
    s_r_b,
    s_r_r,
    s_r_c,
    s_ds_b,
    s_ds_r,
    s_ds_c,
    FROM_Y: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """ds = rstd * (dn - n * mean(dn * n)) per row; with a weight also per-program partial dweight sums.

    FROM_Y: n is read from the saved output y (weightless case); else n = round(x + r) * rstd is recomputed.
    Programs stride over row blocks so that the dweight partials are [num_programs, n_cols], not [M, n_cols].
    Bytes (weightless): reads dy and y, writes ds (3 passes over [M, N]) plus rstd; eager autograd of the
    norm makes about 10 passes, most of them in fp32.
    """
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    blocks_per_batch = tl.cdiv(n_rows, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < n_cols
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK_C], dtype=tl.float32)
    for blk in range(pid, n_batch * blocks_per_batch, n_progs):
        b = (blk // blocks_per_batch).to(tl.int64)
        rows = (blk % blocks_per_batch) * BLOCK_R + tl.arange(0, BLOCK_R)
        row_mask = rows < n_rows
        mask = row_mask[:, None] & col_mask[None, :]
        r_ = rows.to(tl.int64)[:, None]
        c_ = cols.to(tl.int64)[None, :]  # token-mix ds has column stride B*D
        rstd = tl.load(RSTD + b * n_rows + rows, mask=row_mask, other=0.0)
        dy = tl.load(DY + b * s_dy_b + r_ * s_dy_r + c_ * s_dy_c, mask=mask, other=0.0).to(tl.float32)
        if FROM_Y:
            n = tl.load(Y + b * s_y_b + r_ * s_y_r + c_ * s_y_c, mask=mask, other=0.0).to(tl.float32)
        else:
            x = tl.load(X + b * s_x_b + r_ * s_x_r + c_ * s_x_c, mask=mask, other=0.0).to(tl.float32)
            r = tl.load(R + b * s_r_b + r_ * s_r_r + c_ * s_r_c, mask=mask, other=0.0).to(tl.float32)
            n = round_to(x + r, DS.dtype.element_ty) * rstd[:, None]
        if HAS_WEIGHT:
            dn = dy * w[None, :]
            dw += tl.sum(dy * n, axis=0)
        else:
            dn = dy
        proj = tl.sum(dn * n, axis=1) / n_cols
        ds = rstd[:, None] * (dn - n * proj[:, None])
        tl.store(DS + b * s_ds_b + r_ * s_ds_r + c_ * s_ds_c, ds.to(DS.dtype.element_ty), mask=mask)
    if HAS_WEIGHT:
        tl.store(DW + pid * n_cols + cols, dw, mask=col_mask)


def rms_norm_bwd(dy3, rstd, *, y3=None, x3=None, r3=None, weight=None, ds3=None, max_programs: int = 1024):
    """Launch the norm backward on 3-D ``[batch, rows, cols]`` views (any strides; norm over cols).

    Give ``y3`` (weightless) or ``x3`` and ``r3`` (recompute). ``rstd`` is contiguous ``[batch, rows]`` fp32.
    ``ds3`` is the output view (allocated contiguous when None). With a weight at most ``max_programs``
    programs run (each loops over row blocks). Returns (ds3, dweight or None).
    """
    n_batch, n_rows, n_cols = dy3.shape
    if ds3 is None:
        ds3 = torch.empty((n_batch, n_rows, n_cols), dtype=dy3.dtype, device=dy3.device)
    from_y = y3 is not None
    if from_y and weight is not None:
        raise ValueError("rms_norm_bwd: with a weight the normalised rows must be recomputed from x and r")
    if weight is not None:
        weight = weight.contiguous()
    block_r, block_c, num_warps = _row_block(n_cols)
    n_blocks = n_batch * triton.cdiv(n_rows, block_r)
    # With a weight each program keeps one fp32 partial row of dweight: cap the programs so the partials
    # stay small (and the final torch sum cheap) while still filling a GPU.
    n_progs = max(1, min(n_blocks, max_programs) if weight is not None else n_blocks)
    dw_partial = torch.empty((n_progs, n_cols), dtype=torch.float32, device=dy3.device) if weight is not None else None
    if n_blocks > 0:
        dummy = dy3
        rms_norm_bwd_kernel[(n_progs,)](
            dy3,
            y3 if from_y else dummy,
            x3 if x3 is not None else dummy,
            r3 if r3 is not None else dummy,
            weight if weight is not None else dummy,
            rstd,
            ds3,
            dw_partial if dw_partial is not None else rstd,
            n_batch,
            n_rows,
            n_cols,
            *strides3(dy3),
            *strides3(y3),
            *strides3(x3),
            *strides3(r3),
            *strides3(ds3),
            FROM_Y=from_y,
            HAS_WEIGHT=weight is not None,
            BLOCK_R=block_r,
            BLOCK_C=block_c,
            num_warps=num_warps,
        )
    dweight = None
    if weight is not None:
        dweight = dw_partial.sum(0).to(weight.dtype) if n_blocks > 0 else torch.zeros_like(weight)
    return ds3, dweight


# --------------------------------------------------------------------------------------------------------
# Ahead-of-time compile metadata (for a kernel report on machines without a GPU)
# --------------------------------------------------------------------------------------------------------
def _ptr_args(names, dtype):
    return {n: TL_PTR[dtype] for n in names}


def compile_targets(dtype: torch.dtype = torch.bfloat16, n_rows: int = 97 * 768, n_cols: int = 512):
    """Representative launches of this file's kernels (HRM/TRM hidden 512, bf16); the entry format is described
    in ``_common``."""
    block_m, block_n, num_warps = _row_block(n_cols)
    fwd = {
        "name": "add_rms_norm_fwd_kernel",
        "fn": add_rms_norm_fwd_kernel,
        "signature": {
            **_ptr_args(["X", "R", "W", "Y"], dtype),
            "RSTD": "*fp32",
            "n_rows": "i32",
            "n_cols": "i32",
            "stride_xm": "i32",
            "stride_rm": "i32",
            "stride_ym": "i32",
            "eps": "fp32",
        },
        "constexprs": {"stride_xn": 1, "stride_rn": 1, "HAS_WEIGHT": False, "BLOCK_M": block_m, "BLOCK_N": block_n},
        "divisible_by_16": ["X", "R", "W", "Y", "RSTD", "n_cols", "stride_xm", "stride_rm", "stride_ym"],
        "num_warps": num_warps,
    }
    bwd_sig = {
        **_ptr_args(["DY", "Y", "X", "R", "W", "DS"], dtype),
        "RSTD": "*fp32",
        "DW": "*fp32",
        "n_batch": "i32",
        "n_rows": "i32",
        "n_cols": "i32",
    }
    strides = [f"s_{t}_{a}" for t in ("dy", "y", "x", "r", "ds") for a in ("b", "r", "c")]
    # [1, M, D] rows: column strides 1, row strides D (aligned), batch strides unused.
    bwd_rows = {
        "name": "rms_norm_bwd_kernel[rows]",
        "fn": rms_norm_bwd_kernel,
        "signature": {**bwd_sig, **{s: "i32" for s in strides if not s.endswith("_c")}},
        "constexprs": {
            **{s: 1 for s in strides if s.endswith("_c")},
            "FROM_Y": True,
            "HAS_WEIGHT": False,
            "BLOCK_R": block_m,
            "BLOCK_C": block_n,
        },
        "divisible_by_16": ["DY", "Y", "DS", "RSTD", "n_cols"] + [s for s in strides if not s.endswith("_c")],
        "num_warps": num_warps,
    }
    return [fwd, bwd_rows]
