"""Fused stablemax cross-entropy (HRM/TRM's default loss), forward and backward, computed in fp64.

Reference (``models/losses.py``): ``s(x) = 1/(1 - x + 1e-30)`` for ``x < 0`` else ``x + 1``, on
``logits.to(float64)``; ``logprobs = log(s / sum(s))``; per-token loss ``-logprobs[label]``, 0 where
``label == ignore_index``. Gradient w.r.t. logit ``j`` of a valid row with label ``y``:
``g * s'(x_j) * (1/sum(s) - [j == y]/s(x_y))`` with ``s'(x) = s(x)^2`` for ``x < 0`` else 1.

Each program handles a ``[BLOCK_R rows, BLOCK_V classes]`` tile (HRM/TRM vocabularies are 6..12 classes, so many
rows share a program), looping over the vocabulary in ``BLOCK_V`` chunks when it is larger.

* ``_stablemax_ce_fwd_kernel``: reads the logits once (input dtype), the labels once, writes the fp64 loss and
  the fp64 row sum ``sum(s)`` for the backward: ``N*V*e + N*(l + 16)`` bytes for N rows, element size e, label
  size l. The eager sequence (``.to(float64)``, ``where`` of two branches, sum, divide, log, gather, where)
  writes and re-reads about eight ``[N, V]`` float64 tensors: roughly ``N*V*(2 + 8*8*2) = 130*N*V`` bytes
  against ``2*N*V`` here for bf16 logits.
* ``_stablemax_ce_bwd_kernel``: reads the logits, labels, row sums and the upstream fp64 gradient once, writes
  the gradient in the logits' dtype: ``2*N*V*e + N*(l + 16)`` bytes; no ``[N, V]`` fp64 tensor exists. The eager
  autograd backward goes through the same chain of fp64 temporaries again.

Labels outside ``[0, V)`` (other than ``ignore_index``) give a NaN loss and NaN gradient row: the kernel cannot
raise, and a host-side check would need a device sync (the reference's gather would fail instead).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import interpreting, round_rne

_EPS = tl.constexpr(1e-30)


@triton.jit
def _row_offsets(pid, N, S, stride_b, stride_s, BLOCK_R: tl.constexpr):
    """Row ids of this tile, their validity and their element offsets into a [B, S, ...] tensor (int64)."""
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < N
    rows64 = rows.to(tl.int64)
    off = (rows64 // S) * stride_b + (rows64 % S) * stride_s
    return rows, rmask, off


@triton.jit
def _to_output(x, DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """fp64 -> DTYPE the way torch converts: through fp32 (its bf16/fp16 casts from double round twice)."""
    return round_rne(x.to(tl.float32), DTYPE, INTERPRET)


@triton.jit
def _stablemax_s(x):
    """s(x) in fp64, as the reference: 1/(1 - x + eps) below 0, x + 1 otherwise."""
    return tl.where(x < 0, 1.0 / (1.0 - x + _EPS), x + 1.0)


@triton.jit
def _stablemax_ce_fwd_kernel(
    logits_ptr,
    labels_ptr,
    loss_ptr,
    rowsum_ptr,
    N,
    S,
    V,
    stride_xb,
    stride_xs,
    stride_xv,
    stride_yb,
    stride_ys,
    ignore_index,
    BLOCK_R: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """loss[row] = -log(s(x[label]) / sum_v s(x[v])) in fp64; rowsum[row] = sum_v s(x[v])."""
    pid = tl.program_id(0)
    rows, rmask, x_off = _row_offsets(pid, N, S, stride_xb, stride_xs, BLOCK_R)
    total = tl.zeros([BLOCK_R], tl.float64)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        m = rmask[:, None] & (cols[None, :] < V)
        x = tl.load(logits_ptr + x_off[:, None] + cols[None, :] * stride_xv, mask=m, other=0.0).to(tl.float64)
        total += tl.sum(tl.where(m, _stablemax_s(x), 0.0), 1)

    _, _, y_off = _row_offsets(pid, N, S, stride_yb, stride_ys, BLOCK_R)
    y = tl.load(labels_ptr + y_off, mask=rmask, other=ignore_index).to(tl.int64)
    valid = rmask & (y != ignore_index)
    in_range = (y >= 0) & (y < V)
    x_y = tl.load(logits_ptr + x_off + y * stride_xv, mask=valid & in_range, other=0.0).to(tl.float64)
    # Padded rows have total 0; give them 1 so that no division by zero is even evaluated.
    loss = -tl.log(_stablemax_s(x_y) / tl.where(rmask, total, 1.0))
    loss = tl.where(in_range, loss, float("nan"))
    loss = tl.where(valid, loss, 0.0)
    tl.store(loss_ptr + rows, loss, mask=rmask)
    tl.store(rowsum_ptr + rows, total, mask=rmask)


@triton.jit
def _stablemax_ce_bwd_kernel(
    grad_ptr,
    logits_ptr,
    labels_ptr,
    rowsum_ptr,
    dlogits_ptr,
    N,
    S,
    V,
    stride_gb,
    stride_gs,
    stride_xb,
    stride_xs,
    stride_xv,
    stride_yb,
    stride_ys,
    ignore_index,
    BLOCK_R: tl.constexpr,
    BLOCK_V: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """dlogits[row, v] = g * s'(x_v) * (1/sum(s) - [v == label]/s(x_label)), 0 on ignored rows; fp64 math.

    ``dlogits`` is contiguous [N, V].
    """
    pid = tl.program_id(0)
    rows, rmask, x_off = _row_offsets(pid, N, S, stride_xb, stride_xs, BLOCK_R)
    _, _, y_off = _row_offsets(pid, N, S, stride_yb, stride_ys, BLOCK_R)
    _, _, g_off = _row_offsets(pid, N, S, stride_gb, stride_gs, BLOCK_R)
    y = tl.load(labels_ptr + y_off, mask=rmask, other=ignore_index).to(tl.int64)
    valid = rmask & (y != ignore_index)
    g = tl.load(grad_ptr + g_off, mask=valid, other=0.0).to(tl.float64)
    total = tl.load(rowsum_ptr + rows, mask=rmask, other=1.0)
    in_range = (y >= 0) & (y < V)
    g = tl.where(in_range | (g == 0), g, float("nan"))
    g_over_total = g / total
    out_off = rows.to(tl.int64) * V
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        m = rmask[:, None] & (cols[None, :] < V)
        x = tl.load(logits_ptr + x_off[:, None] + cols[None, :] * stride_xv, mask=m, other=0.0).to(tl.float64)
        s = _stablemax_s(x)
        ds = tl.where(x < 0, s * s, 1.0)
        is_label = cols[None, :] == y[:, None]
        # d(-log s_y)/dx_y = -s'(x_y)/s(x_y); every class also gets s'(x_v)/sum(s) from the normaliser.
        d = ds * tl.where(is_label, g_over_total[:, None] - g[:, None] / s, g_over_total[:, None])
        d = _to_output(d, dlogits_ptr.dtype.element_ty, INTERPRET)
        tl.store(dlogits_ptr + out_off[:, None] + cols[None, :], d, mask=m)


# ---------------------------------------------------------------------------------------------------- launchers
_TILE_ELEMS = 1024  # elements per program tile: 8 fp64 values per thread at 4 warps (2048 spills in the backward)
_MAX_BLOCK_V = 1024
_LAUNCH_OPTS = dict(num_warps=4, num_stages=1)


def _tile(V: int) -> tuple[int, int]:
    block_v = min(_MAX_BLOCK_V, triton.next_power_of_2(max(V, 1)))
    return max(1, _TILE_ELEMS // block_v), block_v


def stablemax_ce_fwd(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel on validated ``logits [B, S, V]`` (any strides) and ``labels [B, S]``.

    Returns ``(loss [B, S] float64, rowsum [B, S] float64)``.
    """
    B, S, V = logits.shape
    loss = torch.empty((B, S), device=logits.device, dtype=torch.float64)
    rowsum = torch.empty((B, S), device=logits.device, dtype=torch.float64)
    N = B * S
    if N == 0:
        return loss, rowsum
    block_r, block_v = _tile(V)
    _stablemax_ce_fwd_kernel[(triton.cdiv(N, block_r),)](
        logits,
        labels,
        loss,
        rowsum,
        N,
        S,
        V,
        logits.stride(0),
        logits.stride(1),
        logits.stride(2),
        labels.stride(0),
        labels.stride(1),
        ignore_index,
        BLOCK_R=block_r,
        BLOCK_V=block_v,
        **_LAUNCH_OPTS,
    )
    return loss, rowsum


def stablemax_ce_bwd(
    grad: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, rowsum: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    """Launch the backward kernel; ``grad [B, S]`` float64 (any strides). Returns contiguous ``dlogits`` in the
    logits' dtype."""
    B, S, V = logits.shape
    dlogits = torch.empty((B, S, V), device=logits.device, dtype=logits.dtype)
    N = B * S
    if N == 0:
        return dlogits
    block_r, block_v = _tile(V)
    _stablemax_ce_bwd_kernel[(triton.cdiv(N, block_r),)](
        grad,
        logits,
        labels,
        rowsum,
        dlogits,
        N,
        S,
        V,
        grad.stride(0),
        grad.stride(1),
        logits.stride(0),
        logits.stride(1),
        logits.stride(2),
        labels.stride(0),
        labels.stride(1),
        ignore_index,
        BLOCK_R=block_r,
        BLOCK_V=block_v,
        INTERPRET=interpreting(),
        **_LAUNCH_OPTS,
    )
    return dlogits


# ------------------------------------------------------------------------------------------- compile metadata
def compile_targets(vocab_size: int = 12, dtype: str = "bf16", label_dtype: str = "i32") -> list[dict]:
    """Representative launches of this file's kernels (entry format: see ``_common``). Default: ARC's 12-class
    vocabulary, bf16 logits, int32 labels."""
    block_r, block_v = _tile(vocab_size)
    ptr, yptr = f"*{dtype}", f"*{label_dtype}"
    # The JIT specialises integer arguments equal to 1 as constants: the class stride of contiguous logits.
    cx = dict(BLOCK_R=block_r, BLOCK_V=block_v, stride_xv=1)
    opts = dict(_LAUNCH_OPTS)
    fwd_sig = dict(
        logits_ptr=ptr,
        labels_ptr=yptr,
        loss_ptr="*fp64",
        rowsum_ptr="*fp64",
        N="i32",
        S="i32",
        V="i32",
        stride_xb="i32",
        stride_xs="i32",
        stride_yb="i32",
        stride_ys="i32",
        ignore_index="i32",
    )
    bwd_sig = dict(
        grad_ptr="*fp64",
        logits_ptr=ptr,
        labels_ptr=yptr,
        rowsum_ptr="*fp64",
        dlogits_ptr=ptr,
        N="i32",
        S="i32",
        V="i32",
        stride_gb="i32",
        stride_gs="i32",
        stride_xb="i32",
        stride_xs="i32",
        stride_yb="i32",
        stride_ys="i32",
        ignore_index="i32",
    )
    targets = [
        dict(
            name="_stablemax_ce_fwd_kernel", fn=_stablemax_ce_fwd_kernel, signature=fwd_sig, constexprs=cx, options=opts
        ),
        dict(
            name="_stablemax_ce_bwd_kernel",
            fn=_stablemax_ce_bwd_kernel,
            signature=bwd_sig,
            constexprs=dict(cx, INTERPRET=False),
            options=opts,
        ),
    ]
    # Small vocabularies make every stride but the class stride (1) unaligned; only pointers are 16-aligned.
    for t in targets:
        t["divisible_by_16"] = [a for a, ty in t["signature"].items() if ty.startswith("*")]
    return targets
